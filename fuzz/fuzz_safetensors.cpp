// fuzz/fuzz_safetensors.cpp — libFuzzer target for the safetensors reader and the Memory
// Indexer checkpoint loader on top of it (every shape checked against the metadata).
//
// Build as fuzz_gguf.cpp says (target fuzz_safetensors), then for a short run:
//   build-fuzz/fuzz/fuzz_safetensors -max_total_time=60 /tmp/st-corpus fuzz/corpus-safetensors
//
// The GoogleTest binary compiles this file with FLASHMEM_FUZZ_NO_MAIN defined: the entry point
// is then fuzz_safetensors_one_input (several targets live in one binary), and a violated
// invariant throws std::logic_error (a test failure) instead of aborting.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "fuzz_common.h"
#include "io/safetensors.h"
#include "indexer/indexer_model.h"

#if defined(FLASHMEM_FUZZ_NO_MAIN)
#define FLASHMEM_FUZZ_ENTRY fuzz_safetensors_one_input
#else
#define FLASHMEM_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace {

uint64_t g_sink = 0;

}  // namespace

extern "C" int FLASHMEM_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  flashmem::SafeTensorsFile f;
  try {
    f = flashmem::parse_safetensors(data, size, "fuzz input");
  } catch (const flashmem::Error& e) {
    flashmem::fuzz::check_internal(e);
    return 0;
  }
  for (const auto& [name, t] : f.tensors) {
    uint64_t n = flashmem::safetensors_dtype_size(t.dtype);
    if (n == 0) flashmem::fuzz::fail("accepted an unknown dtype");
    for (int64_t d : t.shape) {
      if (d < 0) flashmem::fuzz::fail("accepted a negative dimension");
      n *= static_cast<uint64_t>(d);  // no overflow: the reader checked the product
    }
    if (n != t.data.size()) flashmem::fuzz::fail("tensor bytes differ from dtype × shape");
    for (uint8_t b : t.data) g_sink += b;
  }
  try {
    const auto m = flashmem::indexer_from_safetensors(f, "fuzz input");
    if (m->layers.empty() || m->layers.size() != m->keys.layers.size()) flashmem::fuzz::fail("indexer without scorers");
    // The one forward pass of inference reads every weight with the shape's strides.
    const flashmem::IndexerShape& s = m->shape;
    std::vector<float> h(static_cast<size_t>(s.d_model), 0.5f), q(static_cast<size_t>(s.n_heads) * s.head_dim),
        w(static_cast<size_t>(s.n_heads));
    m->encode_query(0, h.data(), 7, q.data(), w.data());
    for (float x : q) g_sink += std::isnan(x) ? 1u : 2u;
  } catch (const flashmem::Error& e) {
    flashmem::fuzz::check_internal(e);
  }
  return 0;
}

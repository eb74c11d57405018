// fuzz/fuzz_gguf.cpp — libFuzzer target for the GGUF reader and the dequantisers.
//
// Build and run (clang with libFuzzer, ASan and UBSan):
//   cmake -S . -B build-fuzz -DFLASHMEM_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++-14
//         -DCMAKE_C_COMPILER=clang-14 -DFLASHMEM_BUILD_TESTS=OFF -DFLASHMEM_BUILD_BENCH=OFF
//         (one command line)
//   cmake --build build-fuzz --target fuzz_gguf -j2
//   mkdir -p /tmp/gguf-corpus
//   build-fuzz/fuzz/fuzz_gguf -max_total_time=120 -dict=fuzz/gguf.dict /tmp/gguf-corpus fuzz/corpus
// New interesting inputs land in /tmp/gguf-corpus; crashes in ./crash-*. Reproduce one with
// `build-fuzz/fuzz/fuzz_gguf crash-<hash>`, fix it, and add the (small) input to fuzz/corpus.
//
// The GoogleTest binary also compiles this file (with FLASHMEM_FUZZ_NO_MAIN defined) and
// replays fuzz/corpus plus mutations of it through LLVMFuzzerTestOneInput. In that build a
// violated invariant throws std::logic_error (a test failure) instead of aborting.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <variant>
#include <vector>

#include "core/error.h"
#include "fuzz_common.h"
#include "core/quant.h"
#include "io/gguf.h"

namespace {

// Folds every reachable value into a checksum so nothing is optimised away and every byte
// the parser claims to own is actually read (ASan flags any that are not in the image).
uint64_t g_sink = 0;

void touch_value(const flashmem::GgufValue& v, int depth) {
  if (depth > 64) flashmem::fuzz::fail("array nesting deeper than the parser allows");
  if (const auto* u = std::get_if<uint64_t>(&v.v)) {
    g_sink += *u;
  } else if (const auto* i = std::get_if<int64_t>(&v.v)) {
    g_sink += static_cast<uint64_t>(*i);
  } else if (const auto* d = std::get_if<double>(&v.v)) {
    g_sink += std::isnan(*d) ? 1u : 2u;
  } else if (const auto* b = std::get_if<bool>(&v.v)) {
    g_sink += *b ? 1u : 0u;
  } else if (const auto* s = std::get_if<std::string>(&v.v)) {
    for (char c : *s) g_sink += static_cast<uint8_t>(c);
  } else if (const auto* a = std::get_if<std::shared_ptr<flashmem::GgufArray>>(&v.v)) {
    if (!*a) flashmem::fuzz::fail("null array value");
    for (const flashmem::GgufValue& item : (*a)->items) {
      if (item.type != (*a)->elem_type) flashmem::fuzz::fail("array item type differs from element type");
      touch_value(item, depth + 1);
    }
  }
}

// Exercises the typed accessors; type mismatches must surface as flashmem::Error.
void try_accessors(const flashmem::GgufFile& f, const std::string& key) {
  const auto attempt = [](auto&& fn) {
    try {
      fn();
    } catch (const flashmem::Error& e) {
      flashmem::fuzz::check_internal(e);
    }
  };
  attempt([&] { g_sink += f.get_u32(key); });
  attempt([&] { g_sink += static_cast<uint64_t>(f.get_i64(key)); });
  attempt([&] { g_sink += std::isnan(f.get_f32(key)) ? 1u : 0u; });
  attempt([&] { g_sink += f.get_bool(key) ? 1u : 0u; });
  attempt([&] { g_sink += f.get_string(key).size(); });
  attempt([&] {
    const flashmem::GgufArray& a = f.get_array(key);
    attempt([&] { g_sink += a.strings(key).size(); });
    attempt([&] { g_sink += a.ints(key).size(); });
    attempt([&] { g_sink += a.floats(key).size(); });
  });
}

bool same_float(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  // NaN payloads may legitimately differ when two NaN operands meet in either order.
  return x == y || (std::isnan(a) && std::isnan(b));
}

void touch_tensor(const flashmem::GgufFile& f, const flashmem::GgufTensor& t) {
  const uint8_t* begin = t.data;
  if (begin == nullptr || t.n_bytes == 0) flashmem::fuzz::fail("tensor without data");
  if (t.ne.empty() || t.ne.size() > 4) flashmem::fuzz::fail("tensor with bad n_dims");
  if (t.rows() * t.row_bytes() != t.n_bytes) flashmem::fuzz::fail("n_bytes != rows * row_bytes");
  if (f.find_tensor(t.name) != &t) flashmem::fuzz::fail("tensor lookup mismatch");
  g_sink += begin[0] + begin[t.n_bytes - 1];  // first and last byte must be in the image

  const flashmem::GgmlTypeTraits& traits = flashmem::ggml_traits(t.type);
  if (!traits.dequant_supported) return;
  // Dequantise the first row both ways (bounded: rows are at most the file size in bytes).
  const uint64_t n = t.ne[0];
  if (n > (uint64_t{1} << 22)) return;
  std::vector<float> ref(static_cast<size_t>(n)), fast(static_cast<size_t>(n));
  flashmem::dequantize_row_ref(t.type, t.data, ref.data(), n);
  flashmem::dequantize_row(t.type, t.data, fast.data(), n);
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!same_float(ref[i], fast[i])) flashmem::fuzz::fail("dequantize_row differs from dequantize_row_ref");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const flashmem::GgufFile f = flashmem::GgufFile::from_bytes(data, size);
    if (f.version() != 2 && f.version() != 3) flashmem::fuzz::fail("accepted an unsupported version");
    if (f.alignment() == 0 || (f.alignment() & (f.alignment() - 1)) != 0) {
      flashmem::fuzz::fail("accepted a bad alignment");
    }
    for (const std::string& key : f.keys()) {
      const flashmem::GgufValue* v = f.find(key);
      if (v == nullptr) flashmem::fuzz::fail("listed key not found");
      touch_value(*v, 0);
      try_accessors(f, key);
    }
    for (const flashmem::GgufTensor& t : f.tensors()) touch_tensor(f, t);
  } catch (const flashmem::Error& e) {
    flashmem::fuzz::check_internal(e);
  }
  return 0;
}

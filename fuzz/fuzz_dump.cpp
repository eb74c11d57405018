// fuzz/fuzz_dump.cpp — libFuzzer target for `flashmem dump` files (.fmd) and the training
// labels built from them.
//
// A dump ends with an FNV-1a 64 checksum of everything before it, which random mutations
// would almost never satisfy; the target rewrites it over the input first, so the fuzzer
// reaches the header and array checks (a hostile file can do the same).
//
// Build as fuzz_gguf.cpp says (target fuzz_dump), then for a short run:
//   build-fuzz/fuzz/fuzz_dump -max_total_time=60 /tmp/dump-corpus fuzz/corpus-dump
//
// The GoogleTest binary compiles this file with FLASHMEM_FUZZ_NO_MAIN defined: the entry point
// is then fuzz_dump_one_input, and a violated invariant throws std::logic_error.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "fuzz_common.h"
#include "train/dump.h"

#if defined(FLASHMEM_FUZZ_NO_MAIN)
#define FLASHMEM_FUZZ_ENTRY fuzz_dump_one_input
#else
#define FLASHMEM_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace {

uint64_t g_sink = 0;

}  // namespace

extern "C" int FLASHMEM_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  std::vector<uint8_t> b(data, data + size);
  if (b.size() >= 8) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i + 8 < b.size(); ++i) {
      h ^= b[i];
      h *= 0x100000001b3ull;
    }
    std::memcpy(b.data() + b.size() - 8, &h, 8);
  }
  flashmem::train::DumpDoc d;
  try {
    d = flashmem::train::parse_dump(b, "fuzz input");
  } catch (const flashmem::Error& e) {
    flashmem::fuzz::check_internal(e);
    return 0;
  }
  // What read_dump accepted is consistent, and labels can be built from it either way.
  try {
    d.check();
  } catch (const flashmem::Error&) {
    flashmem::fuzz::fail("parse_dump returned a document that check() refuses");
  }
  for (const auto labels : {flashmem::train::LabelKind::kHits, flashmem::train::LabelKind::kMass}) {
    for (const std::string& pooling : d.poolings) {
      flashmem::train::LoadOptions o;
      o.labels = labels;
      o.pooling = pooling;
      flashmem::train::IndexerDataset ds;
      try {
        flashmem::train::add_to_dataset(ds, d, o, "fuzz input");
        for (const auto& doc : ds.docs) {
          for (int32_t c : doc.label_idx)
            if (c < 0 || c >= doc.n_chunks) flashmem::fuzz::fail("a label outside the document's chunks");
          g_sink += doc.label_idx.size();
        }
      } catch (const flashmem::Error& e) {
        flashmem::fuzz::check_internal(e);
      }
    }
  }
  return 0;
}

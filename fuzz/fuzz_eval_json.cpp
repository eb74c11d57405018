// fuzz/fuzz_eval_json.cpp — libFuzzer target for the evaluation data a user supplies
// (`flashmem eval --suite longbench-v2|longmemeval --data FILE`): any bytes through both
// loaders (JSON array or JSON Lines); every record they accept must be usable as a prompt.
//
// Build as fuzz_gguf.cpp says (target fuzz_eval_json), then for a short run:
//   build-fuzz/fuzz/fuzz_eval_json -max_total_time=60 -dict=fuzz/json.dict /tmp/eval-corpus fuzz/corpus-eval-json
#include <cstddef>
#include <cstdint>
#include <string>

#include "eval/longbench_v2.h"
#include "eval/longmemeval.h"
#include "fuzz_common.h"

#if defined(FLASHMEM_FUZZ_NO_MAIN)
#define FLASHMEM_FUZZ_ENTRY fuzz_eval_json_one_input
#else
#define FLASHMEM_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

extern "C" int FLASHMEM_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    for (const auto& r : flashmem::eval::parse_longbench_v2(text, "fuzz input")) {
      const std::string p = flashmem::eval::longbench_v2_user_prompt(r, r.context);
      if (p.empty()) flashmem::fuzz::fail("an empty LongBench-v2 prompt");
      (void)flashmem::eval::score_longbench_v2(p, r);
    }
  } catch (const flashmem::Error& e) {
    flashmem::fuzz::check_internal(e);
  }
  try {
    for (const auto& r : flashmem::eval::parse_longmemeval(text, "fuzz input")) {
      const std::string p = flashmem::eval::longmemeval_user_prompt(r, flashmem::eval::longmemeval_history(r));
      if (p.empty()) flashmem::fuzz::fail("an empty LongMemEval prompt");
    }
  } catch (const flashmem::Error& e) {
    flashmem::fuzz::check_internal(e);
  }
  return 0;
}

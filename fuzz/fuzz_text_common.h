// fuzz/fuzz_text_common.h — what the text-input fuzz targets share: the entry point's name
// (LLVMFuzzerTestOneInput, or <name>_one_input when the GoogleTest binary replays the corpus
// with FLASHMEM_FUZZ_NO_MAIN) and how a violated invariant is reported (a trap for libFuzzer,
// std::logic_error for the replay).
#pragma once

#include <stdexcept>

#include "core/error.h"

namespace flashmem::fuzz {

[[noreturn]] inline void fail(const char* what) {
#if defined(FLASHMEM_FUZZ_NO_MAIN)
  throw std::logic_error(what);
#else
  (void)what;
  __builtin_trap();
#endif
}

// A flashmem::Error is the expected answer to bad input, unless it reports a broken invariant.
inline void check_internal(const Error& e) {
  if (e.code() == ErrorCode::kInternal) fail(e.what());
}

}  // namespace flashmem::fuzz

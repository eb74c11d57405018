// fuzz/fuzz_common.h — what every fuzz target shares: how a violated invariant is reported (a
// trap for libFuzzer; std::logic_error when the GoogleTest binary replays the corpus with
// FLASHMEM_FUZZ_NO_MAIN, so the replay fails a test instead of aborting).
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

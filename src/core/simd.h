// flashmem/core/simd.h — the one place x86 intrinsics are included from.
//
// GCC 12 reports -W(maybe-)uninitialized inside its own AVX-512 headers (the reductions and
// conversions start from _mm512_undefined_*); those are false positives in system code, so they
// are silenced for the header only and stay on for ours.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

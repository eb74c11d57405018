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

#if defined(__AVX__)
namespace flashmem::simd {
// The sum of the 8 lanes of v.
inline float hsum256(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}
}  // namespace flashmem::simd
#endif

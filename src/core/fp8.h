// flashmem/core/fp8.h — fp8 e4m3 (OCP "E4M3FN": 1 sign, 4 exponent bits with bias 7, 3 mantissa
// bits; no infinities, 0x7F/0xFF are NaN, largest finite value 448), the format of Memory
// Indexer keys (DESIGN.md §4).
#pragma once

#include <cmath>
#include <cstdint>

namespace flashmem {

inline constexpr float kFp8E4m3Max = 448.0f;

// Exact for every code.
inline float fp8_e4m3_to_fp32(uint8_t b) {
  const float sign = (b & 0x80u) ? -1.0f : 1.0f;
  const int e = (b >> 3) & 0xF, m = b & 0x7;
  if (e == 0xF && m == 0x7) return NAN;
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);  // subnormal: m/8 · 2^−6
  return sign * std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
}

// Round to nearest even; magnitudes above 448 saturate to ±448 (no infinities in e4m3); NaN
// becomes 0x7F.
inline uint8_t fp32_to_fp8_e4m3(float x) {
  if (std::isnan(x)) return 0x7F;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (a >= kFp8E4m3Max) return sign | 0x7E;
  if (a < 0.015625f) {  // below the smallest normal 2^−6: units of 2^−9
    const int q = static_cast<int>(std::nearbyint(a * 512.0f));  // 0..8; 8 is the smallest normal
    return sign | static_cast<uint8_t>(q);
  }
  int e2 = 0;
  const float f = std::frexp(a, &e2);  // a = f · 2^e2, f ∈ [0.5, 1)
  int e = e2 - 1 + 7;                  // biased exponent of 2f · 2^(e2−1)
  int q = static_cast<int>(std::nearbyint((2.0f * f - 1.0f) * 8.0f));
  if (q == 8) {
    q = 0;
    ++e;
  }
  if (e > 15 || (e == 15 && q == 7)) return sign | 0x7E;
  return sign | static_cast<uint8_t>((e << 3) | q);
}

}  // namespace flashmem

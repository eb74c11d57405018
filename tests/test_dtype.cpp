// Tests for core/dtype.h: exhaustive f16 round trips, and rounding checked against the F16C
// hardware conversions (_cvtsh_ss / vcvtps2ph) where the machine has them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace flashmem {
namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
bool half_is_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

TEST(Dtype, Fp16RoundTripsAllHalfValues) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const auto half = static_cast<uint16_t>(h);
    const float f = fp16_to_fp32(half);
    const uint16_t back = fp32_to_fp16(f);
    if (half_is_nan(half)) {
      ASSERT_TRUE(std::isnan(f)) << "half 0x" << std::hex << h;
      ASSERT_TRUE(half_is_nan(back)) << "half 0x" << std::hex << h;
      // Sign and payload survive; the NaN comes back quiet.
      ASSERT_EQ(back, half | 0x200u) << "half 0x" << std::hex << h;
    } else {
      ASSERT_EQ(back, half) << "half 0x" << std::hex << h << " -> " << f;
    }
  }
}

TEST(Dtype, Fp16KnownValues) {
  EXPECT_EQ(fp16_to_fp32(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_fp32(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(fp16_to_fp32(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(fp16_to_fp32(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(bits_of(fp16_to_fp32(0x8000)), 0x80000000u);      // -0
  EXPECT_EQ(fp16_to_fp32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(fp16_to_fp32(0xfc00), -std::numeric_limits<float>::infinity());

  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65519.99f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);   // ties to even → overflows to inf
  EXPECT_EQ(fp32_to_fp16(1e10f), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(-1e10f), 0xfc00);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24 → 0
  EXPECT_EQ(fp32_to_fp16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(3.0f, -25)), 0x0002);         // 1.5 units, tie → even (2)
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie → even
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie → even (up)
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_TRUE(half_is_nan(fp32_to_fp16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(half_is_nan(fp32_to_fp16(float_of(0x7f800001u))));  // sNaN with a low payload
}

TEST(Dtype, Bf16) {
  EXPECT_EQ(bf16_to_fp32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_fp32(0xc0a0), -5.0f);
  EXPECT_EQ(bits_of(bf16_to_fp32(0x7fc1)), 0x7fc10000u);
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    ASSERT_EQ(bits_of(bf16_to_fp32(static_cast<uint16_t>(h))), h << 16);
  }
}

#if defined(__F16C__)

uint16_t hw_to_half(float f) {
  // _mm_cvtps_ph rather than _cvtss_sh: clang's _cvtss_sh macro trips -Wpedantic.
  const __m128i h = _mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return static_cast<uint16_t>(_mm_cvtsi128_si32(h) & 0xffff);
}

TEST(Dtype, Fp16ToFp32MatchesF16cForAllHalves) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float hw = _cvtsh_ss(static_cast<unsigned short>(h));
    ASSERT_EQ(bits_of(fp16_to_fp32(static_cast<uint16_t>(h))), bits_of(hw))
        << "half 0x" << std::hex << h;
  }
}

// Floats next to every half value and every rounding boundary between two halves: the
// places where a conversion can go wrong.
TEST(Dtype, Fp32ToFp16MatchesF16cNearBoundaries) {
  std::vector<uint32_t> inputs;
  for (uint32_t h = 0; h <= 0x7fff; ++h) {
    const uint32_t b = bits_of(fp16_to_fp32(static_cast<uint16_t>(h)));
    const uint32_t next = bits_of(fp16_to_fp32(static_cast<uint16_t>(h + 1)));
    const uint32_t mid = b + (next - b) / 2;  // halfway in bit space = halfway in value here
    for (uint32_t x : {b, mid}) {
      for (int64_t dlt = -2; dlt <= 2; ++dlt) inputs.push_back(static_cast<uint32_t>(x + dlt));
    }
  }
  // Around the overflow and underflow thresholds, and float specials.
  for (uint32_t x :
       {0x477fe000u, 0x477ff000u, 0x47800000u, 0x33000000u, 0x33800000u, 0x387fc000u, 0x38800000u,
        0x7f800000u, 0x7f800001u, 0x7fc00000u, 0x7fffffffu, 0x00000001u, 0x00800000u}) {
    for (int64_t dlt = -3; dlt <= 3; ++dlt) inputs.push_back(static_cast<uint32_t>(x + dlt));
  }
  for (uint32_t x : inputs) {
    for (uint32_t sign : {0u, 0x80000000u}) {
      const float f = float_of((x & 0x7fffffffu) | sign);
      ASSERT_EQ(fp32_to_fp16(f), hw_to_half(f)) << "float bits 0x" << std::hex << bits_of(f);
    }
  }
}

TEST(Dtype, Fp32ToFp16MatchesF16cOnASweepOfAllFloats) {
  // Every 257th bit pattern covers all exponents and many mantissas (~16.7M inputs); random
  // patterns add the rest.
  for (uint64_t x = 0; x <= 0xffffffffull; x += 257) {
    const float f = float_of(static_cast<uint32_t>(x));
    ASSERT_EQ(fp32_to_fp16(f), hw_to_half(f)) << "float bits 0x" << std::hex << x;
  }
  std::mt19937 rng(1234);
  for (int i = 0; i < 1000000; ++i) {
    const float f = float_of(static_cast<uint32_t>(rng()));
    ASSERT_EQ(fp32_to_fp16(f), hw_to_half(f)) << "float bits 0x" << std::hex << bits_of(f);
  }
}

#else
TEST(Dtype, F16cUnavailable) { GTEST_SKIP() << "built without F16C; hardware comparison skipped"; }
#endif

}  // namespace
}  // namespace flashmem

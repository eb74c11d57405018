// flashmem/core/quant.cpp — GGML type traits and the two row dequantisers.
//
// Bit-identity between the reference and the fast path (and with gguf-py's numpy
// dequantisers) requires every multiply and add to be rounded separately. Compilers would
// otherwise fuse `a * b + c` into an FMA under -march=native (GCC even in ISO mode, clang
// within one expression), so contraction is switched off for this whole file. The pragmas
// must come before the includes so the inlined intrinsics are covered too.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "core/quant.h"

#include <cstring>
#include <limits>

#include "core/dtype.h"
#include "core/error.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace flashmem {

namespace {

struct TypeEntry {
  GgmlType type;
  GgmlTypeTraits traits;
};

// Every type id flashmem knows. Sizes follow ggml's type_traits table.
constexpr TypeEntry kTypes[] = {
    {GgmlType::F32, {"F32", 1, 4, true}},       {GgmlType::F16, {"F16", 1, 2, true}},
    {GgmlType::Q4_0, {"Q4_0", 32, 18, true}},   {GgmlType::Q4_1, {"Q4_1", 32, 20, true}},
    {GgmlType::Q5_0, {"Q5_0", 32, 22, true}},  {GgmlType::Q5_1, {"Q5_1", 32, 24, false}},
    {GgmlType::Q8_0, {"Q8_0", 32, 34, true}},   {GgmlType::Q8_1, {"Q8_1", 32, 36, false}},
    {GgmlType::Q2_K, {"Q2_K", 256, 84, false}}, {GgmlType::Q3_K, {"Q3_K", 256, 110, false}},
    {GgmlType::Q4_K, {"Q4_K", 256, 144, true}}, {GgmlType::Q5_K, {"Q5_K", 256, 176, false}},
    {GgmlType::Q6_K, {"Q6_K", 256, 210, true}}, {GgmlType::Q8_K, {"Q8_K", 256, 292, false}},
    {GgmlType::I8, {"I8", 1, 1, false}},        {GgmlType::I16, {"I16", 1, 2, false}},
    {GgmlType::I32, {"I32", 1, 4, false}},      {GgmlType::I64, {"I64", 1, 8, false}},
    {GgmlType::F64, {"F64", 1, 8, false}},      {GgmlType::BF16, {"BF16", 1, 2, true}},
};

const TypeEntry* find_entry(uint32_t id) {
  for (const TypeEntry& e : kTypes) {
    if (static_cast<uint32_t>(e.type) == id) return &e;
  }
  return nullptr;
}

// Checks shared by both dequantisers; returns the number of blocks.
uint64_t check_dequant_args(GgmlType type, const void* src, float* dst, uint64_t n) {
  const TypeEntry* e = find_entry(static_cast<uint32_t>(type));
  FM_CHECK(e != nullptr, ErrorCode::kUnsupported, "cannot dequantize unknown GGML type id ",
           static_cast<uint32_t>(type));
  FM_CHECK(e->traits.dequant_supported, ErrorCode::kUnsupported, "dequantization of GGML type ",
           e->traits.name, " is not supported by flashmem");
  FM_CHECK(n % e->traits.block_elems == 0, ErrorCode::kInvalidArgument, "row of ", n,
           " elements is not a multiple of the ", e->traits.name, " block size ",
           e->traits.block_elems);
  FM_CHECK(n == 0 || (src != nullptr && dst != nullptr), ErrorCode::kInvalidArgument,
           "dequantize_row: null pointer");
  return n / e->traits.block_elems;
}

// ---- reference ------------------------------------------------------------------------------
// Written to mirror the format definitions in ggml-quants.c as literally as possible: one
// element at a time, products rounded to float before any addition. Blocks are copied out
// with memcpy because `src` has no alignment or type guarantees.

template <typename Block>
Block load_block(const uint8_t* src, uint64_t i) {
  Block b;
  std::memcpy(&b, src + i * sizeof(Block), sizeof(Block));
  return b;
}

void ref_q4_0(const uint8_t* src, float* y, uint64_t nb) {
  for (uint64_t i = 0; i < nb; ++i) {
    const BlockQ4_0 b = load_block<BlockQ4_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const int x0 = (b.qs[j] & 0x0f) - 8;
      const int x1 = (b.qs[j] >> 4) - 8;
      y[i * kQK4_0 + j] = static_cast<float>(x0) * d;
      y[i * kQK4_0 + j + kQK4_0 / 2] = static_cast<float>(x1) * d;
    }
  }
}

void ref_q4_1(const uint8_t* src, float* y, uint64_t nb) {
  for (uint64_t i = 0; i < nb; ++i) {
    const BlockQ4_1 b = load_block<BlockQ4_1>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float m = fp16_to_fp32(b.m);
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      const int x0 = b.qs[j] & 0x0f;
      const int x1 = b.qs[j] >> 4;
      y[i * kQK4_1 + j] = static_cast<float>(x0) * d + m;
      y[i * kQK4_1 + j + kQK4_1 / 2] = static_cast<float>(x1) * d + m;
    }
  }
}

// Q5_0: the low 4 bits of value j come from nibble j of qs (low nibbles: j < 16), the fifth
// bit from bit j of the little-endian 32-bit qh; values are (q − 16) · d.
void ref_q5_0(const uint8_t* src, float* y, uint64_t nb) {
  for (uint64_t i = 0; i < nb; ++i) {
    const BlockQ5_0 b = load_block<BlockQ5_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    uint32_t qh;
    std::memcpy(&qh, b.qh, sizeof qh);
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int h0 = static_cast<int>((qh >> j) & 1u) << 4;
      const int h1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      const int x0 = ((b.qs[j] & 0x0f) | h0) - 16;
      const int x1 = ((b.qs[j] >> 4) | h1) - 16;
      y[i * kQK5_0 + j] = static_cast<float>(x0) * d;
      y[i * kQK5_0 + j + kQK5_0 / 2] = static_cast<float>(x1) * d;
    }
  }
}

void ref_q8_0(const uint8_t* src, float* y, uint64_t nb) {
  for (uint64_t i = 0; i < nb; ++i) {
    const BlockQ8_0 b = load_block<BlockQ8_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < kQK8_0; ++j) y[i * kQK8_0 + j] = static_cast<float>(b.qs[j]) * d;
  }
}

// The 12 scale bytes of a Q4_K block pack eight 6-bit scales and eight 6-bit mins:
// sub-blocks 0..3 use the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7
// take their low 4 bits from the nibbles of bytes 8..11 and their top 2 bits from the spare
// top bits of bytes 0..3 (scales) and 4..7 (mins).
void q4_k_scale_min(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void ref_q4_k(const uint8_t* src, float* y, uint64_t nb) {
  for (uint64_t i = 0; i < nb; ++i) {
    const BlockQ4_K b = load_block<BlockQ4_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float dmin = fp16_to_fp32(b.dmin);
    float* out = y + i * kQK_K;
    // Four chunks of 32 bytes; each yields 32 low-nibble values (sub-block 2c) followed by
    // 32 high-nibble values (sub-block 2c+1).
    for (int c = 0; c < 4; ++c) {
      uint8_t sc = 0, m = 0;
      q4_k_scale_min(2 * c, b.scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = dmin * static_cast<float>(m);
      q4_k_scale_min(2 * c + 1, b.scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc);
      const float m2 = dmin * static_cast<float>(m);
      const uint8_t* q = b.qs + 32 * c;
      for (int l = 0; l < 32; ++l) out[64 * c + l] = d1 * static_cast<float>(q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) out[64 * c + 32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void ref_q6_k(const uint8_t* src, float* y, uint64_t nb) {
  for (uint64_t i = 0; i < nb; ++i) {
    const BlockQ6_K b = load_block<BlockQ6_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    // Two halves of 128 values; in half h, value l + 32*k (k = 0..3) takes its low 4 bits from
    // ql (low or high nibble) and its top 2 bits from bits 2k..2k+1 of qh[l].
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = b.ql + 64 * h;
      const uint8_t* qh = b.qh + 32 * h;
      const int8_t* sc = b.scales + 8 * h;
      float* out = y + i * kQK_K + 128 * h;
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        out[l] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
        out[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        out[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        out[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// ---- fast path ------------------------------------------------------------------------------
// Same arithmetic as the reference, eight lanes at a time. Integer → float conversions are
// exact, and each lane performs the very same float multiply/add sequence as the reference,
// so the results are bit-identical.

#if defined(__AVX2__)

// Convert the low 8 bytes of v (unsigned / signed) to 8 floats.
inline __m256 u8x8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
inline __m256 i8x8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

void fast_q4_0(const uint8_t* src, float* y, uint64_t nb) {
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m128i eight = _mm_set1_epi8(8);
  for (uint64_t i = 0; i < nb; ++i, src += sizeof(BlockQ4_0), y += kQK4_0) {
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(load_u16(src)));
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2));
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight);
    _mm256_storeu_ps(y + 0, _mm256_mul_ps(i8x8_to_ps(lo), d));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(lo, 8)), d));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(i8x8_to_ps(hi), d));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(hi, 8)), d));
  }
}

void fast_q4_1(const uint8_t* src, float* y, uint64_t nb) {
  const __m128i m4 = _mm_set1_epi8(0x0f);
  for (uint64_t i = 0; i < nb; ++i, src += sizeof(BlockQ4_1), y += kQK4_1) {
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(load_u16(src)));
    const __m256 m = _mm256_set1_ps(fp16_to_fp32(load_u16(src + 2)));
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 4));
    const __m128i lo = _mm_and_si128(q, m4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
    _mm256_storeu_ps(y + 0, _mm256_add_ps(_mm256_mul_ps(u8x8_to_ps(lo), d), m));
    _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_mul_ps(u8x8_to_ps(_mm_srli_si128(lo, 8)), d), m));
    _mm256_storeu_ps(y + 16, _mm256_add_ps(_mm256_mul_ps(u8x8_to_ps(hi), d), m));
    _mm256_storeu_ps(y + 24, _mm256_add_ps(_mm256_mul_ps(u8x8_to_ps(_mm_srli_si128(hi, 8)), d), m));
  }
}

// Q5_0: the 32 fifth bits of qh become 0x10 in byte j (a byte shuffle spreads qh's byte j/8
// over bytes j, then one bit per byte is tested), OR-ed onto the nibbles, minus 16.
void fast_q5_0(const uint8_t* src, float* y, uint64_t nb) {
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m128i sixteen = _mm_set1_epi8(16);
  const __m128i bit = _mm_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  for (uint64_t i = 0; i < nb; ++i, src += sizeof(BlockQ5_0), y += kQK5_0) {
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(load_u16(src)));
    uint32_t qh;
    std::memcpy(&qh, src + 2, sizeof qh);
    // Byte j of spread_lo / spread_hi holds byte (j / 8) / (2 + j / 8) of qh.
    const __m128i qhv = _mm_cvtsi32_si128(static_cast<int>(qh));
    const __m128i spread_lo = _mm_shuffle_epi8(qhv, _mm_set_epi64x(0x0101010101010101ll, 0));
    const __m128i spread_hi = _mm_shuffle_epi8(qhv, _mm_set_epi64x(0x0303030303030303ll, 0x0202020202020202ll));
    const __m128i h_lo = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(spread_lo, bit), bit), sixteen);
    const __m128i h_hi = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(spread_hi, bit), bit), sixteen);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 6));
    const __m128i lo = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(q, m4), h_lo), sixteen);
    const __m128i hi = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(q, 4), m4), h_hi), sixteen);
    _mm256_storeu_ps(y + 0, _mm256_mul_ps(i8x8_to_ps(lo), d));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(lo, 8)), d));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(i8x8_to_ps(hi), d));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(hi, 8)), d));
  }
}

void fast_q8_0(const uint8_t* src, float* y, uint64_t nb) {
  for (uint64_t i = 0; i < nb; ++i, src += sizeof(BlockQ8_0), y += kQK8_0) {
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(load_u16(src)));
    for (int k = 0; k < 4; ++k) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 2 + 8 * k));
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(i8x8_to_ps(q), d));
    }
  }
}

// Stores d * q - m for the 32 unsigned bytes of q (values 0..15).
inline void store_q4_k_sub(float* y, __m256i q, float d, float m) {
  const __m256 vd = _mm256_set1_ps(d);
  const __m256 vm = _mm256_set1_ps(m);
  const __m128i q0 = _mm256_castsi256_si128(q);
  const __m128i q1 = _mm256_extracti128_si256(q, 1);
  _mm256_storeu_ps(y + 0, _mm256_sub_ps(_mm256_mul_ps(vd, u8x8_to_ps(q0)), vm));
  _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(vd, u8x8_to_ps(_mm_srli_si128(q0, 8))), vm));
  _mm256_storeu_ps(y + 16, _mm256_sub_ps(_mm256_mul_ps(vd, u8x8_to_ps(q1)), vm));
  _mm256_storeu_ps(y + 24, _mm256_sub_ps(_mm256_mul_ps(vd, u8x8_to_ps(_mm_srli_si128(q1, 8))), vm));
}

void fast_q4_k(const uint8_t* src, float* y, uint64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (uint64_t i = 0; i < nb; ++i, src += sizeof(BlockQ4_K), y += kQK_K) {
    const float d = fp16_to_fp32(load_u16(src));
    const float dmin = fp16_to_fp32(load_u16(src + 2));
    const uint8_t* scales = src + 4;
    const uint8_t* qs = src + 4 + kKScaleSize;
    for (int c = 0; c < 4; ++c) {
      uint8_t sc = 0, m = 0;
      q4_k_scale_min(2 * c, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = dmin * static_cast<float>(m);
      q4_k_scale_min(2 * c + 1, scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc);
      const float m2 = dmin * static_cast<float>(m);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
      store_q4_k_sub(y + 64 * c, _mm256_and_si256(q, m4), d1, m1);
      store_q4_k_sub(y + 64 * c + 32, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), d2, m2);
    }
  }
}

// Stores s0 * q for the first 16 signed bytes of q and s1 * q for the last 16.
inline void store_q6_k_sub(float* y, __m256i q, float s0, float s1) {
  const __m256 v0 = _mm256_set1_ps(s0);
  const __m256 v1 = _mm256_set1_ps(s1);
  const __m128i q0 = _mm256_castsi256_si128(q);
  const __m128i q1 = _mm256_extracti128_si256(q, 1);
  _mm256_storeu_ps(y + 0, _mm256_mul_ps(v0, i8x8_to_ps(q0)));
  _mm256_storeu_ps(y + 8, _mm256_mul_ps(v0, i8x8_to_ps(_mm_srli_si128(q0, 8))));
  _mm256_storeu_ps(y + 16, _mm256_mul_ps(v1, i8x8_to_ps(q1)));
  _mm256_storeu_ps(y + 24, _mm256_mul_ps(v1, i8x8_to_ps(_mm_srli_si128(q1, 8))));
}

void fast_q6_k(const uint8_t* src, float* y, uint64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i m30 = _mm256_set1_epi8(0x30);
  const __m256i bias = _mm256_set1_epi8(32);
  for (uint64_t i = 0; i < nb; ++i, src += sizeof(BlockQ6_K), y += kQK_K) {
    const uint8_t* ql = src;
    const uint8_t* qh = src + kQK_K / 2;
    const int8_t* sc = reinterpret_cast<const int8_t*>(src + kQK_K / 2 + kQK_K / 4);
    const float d = fp16_to_fp32(load_u16(src + kQK_K / 2 + kQK_K / 4 + kQK_K / 16));
    float ds[16];
    for (int k = 0; k < 16; ++k) ds[k] = d * static_cast<float>(sc[k]);
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 64 * h));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 64 * h + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + 32 * h));
      // Move bit pair 2k..2k+1 of qh to bits 4..5; 16-bit shifts are safe because the 0x30
      // mask drops whatever crossed over from the neighbouring byte.
      const __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30);
      const __m256i h2 = _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30);
      const __m256i h3 = _mm256_and_si256(hb, m30);
      const __m256i h4 = _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30);
      const __m256i q1 = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, m4), h1), bias);
      const __m256i q2 = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, m4), h2), bias);
      const __m256i q3 = _mm256_sub_epi8(
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h3), bias);
      const __m256i q4 = _mm256_sub_epi8(
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h4), bias);
      const float* s = ds + 8 * h;
      float* out = y + 128 * h;
      store_q6_k_sub(out + 0, q1, s[0], s[1]);
      store_q6_k_sub(out + 32, q2, s[2], s[3]);
      store_q6_k_sub(out + 64, q3, s[4], s[5]);
      store_q6_k_sub(out + 96, q4, s[6], s[7]);
    }
  }
}

void fast_bf16(const uint8_t* src, float* y, uint64_t n) {
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(w));
  }
  for (; i < n; ++i) y[i] = bf16_to_fp32(load_u16(src + 2 * i));
}

#endif  // __AVX2__

void fast_f16(const uint8_t* src, float* y, uint64_t n) {
  uint64_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
  // vcvtph2ps is exact and quiets NaNs just like fp16_to_fp32.
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) y[i] = fp16_to_fp32(load_u16(src + 2 * i));
}

}  // namespace

std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type_id) {
  const TypeEntry* e = find_entry(type_id);
  if (e == nullptr) return std::nullopt;
  return e->traits;
}

const GgmlTypeTraits& ggml_traits(GgmlType type) {
  const TypeEntry* e = find_entry(static_cast<uint32_t>(type));
  FM_CHECK(e != nullptr, ErrorCode::kInvalidArgument, "unknown GGML type id ",
           static_cast<uint32_t>(type));
  return e->traits;
}

std::string_view ggml_type_name(GgmlType type) {
  const TypeEntry* e = find_entry(static_cast<uint32_t>(type));
  return e != nullptr ? std::string_view(e->traits.name) : std::string_view("UNKNOWN");
}

size_t ggml_row_bytes(GgmlType type, uint64_t n) {
  const GgmlTypeTraits& t = ggml_traits(type);
  FM_CHECK(n % t.block_elems == 0, ErrorCode::kInvalidArgument, "row of ", n,
           " elements is not a multiple of the ", t.name, " block size ", t.block_elems);
  uint64_t bytes = 0;
  FM_CHECK(!__builtin_mul_overflow(n / t.block_elems, uint64_t{t.block_bytes}, &bytes) &&
               bytes <= std::numeric_limits<size_t>::max(),
           ErrorCode::kInvalidArgument, "row of ", n, " ", t.name, " elements overflows 64 bits");
  return static_cast<size_t>(bytes);
}

void dequantize_row_ref(GgmlType type, const void* src, float* dst, uint64_t n) {
  const uint64_t nb = check_dequant_args(type, src, dst, n);
  if (n == 0) return;
  const auto* s = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::F32:
      for (uint64_t i = 0; i < n; ++i) std::memcpy(dst + i, s + 4 * i, 4);
      return;
    case GgmlType::F16:
      for (uint64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_u16(s + 2 * i));
      return;
    case GgmlType::BF16:
      for (uint64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(s + 2 * i));
      return;
    case GgmlType::Q4_0:
      ref_q4_0(s, dst, nb);
      return;
    case GgmlType::Q4_1:
      ref_q4_1(s, dst, nb);
      return;
    case GgmlType::Q5_0:
      ref_q5_0(s, dst, nb);
      return;
    case GgmlType::Q8_0:
      ref_q8_0(s, dst, nb);
      return;
    case GgmlType::Q4_K:
      ref_q4_k(s, dst, nb);
      return;
    case GgmlType::Q6_K:
      ref_q6_k(s, dst, nb);
      return;
    default:
      break;
  }
  FM_ICHECK(false, "dequant_supported type ", ggml_type_name(type), " has no reference kernel");
}

void dequantize_row(GgmlType type, const void* src, float* dst, uint64_t n) {
  const uint64_t nb = check_dequant_args(type, src, dst, n);
  (void)nb;  // unused without AVX2
  if (n == 0) return;
  const auto* s = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, s, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      fast_f16(s, dst, n);
      return;
#if defined(__AVX2__)
    case GgmlType::BF16:
      fast_bf16(s, dst, n);
      return;
    case GgmlType::Q4_0:
      fast_q4_0(s, dst, nb);
      return;
    case GgmlType::Q4_1:
      fast_q4_1(s, dst, nb);
      return;
    case GgmlType::Q5_0:
      fast_q5_0(s, dst, nb);
      return;
    case GgmlType::Q8_0:
      fast_q8_0(s, dst, nb);
      return;
    case GgmlType::Q4_K:
      fast_q4_k(s, dst, nb);
      return;
    case GgmlType::Q6_K:
      fast_q6_k(s, dst, nb);
      return;
#endif
    default:
      break;
  }
  // Without AVX2 the reference loops are the fast path (the compiler vectorises them).
  dequantize_row_ref(type, src, dst, n);
}

}  // namespace flashmem

#include "ops/cpu/matvec_q8.h"

#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/quant.h"
#include "core/simd.h"

namespace flashmem::cpu {

bool q8_dot_supported(GgmlType type) {
  return type == GgmlType::Q4_0 || type == GgmlType::Q4_1 || type == GgmlType::Q8_0;
}

namespace {

// One block, scalar: the scale and the rounding the fast path must reproduce exactly.
void quantize_block_ref(const float* x, ActQ8Block* out) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d > 0.0f ? 1.0f / d : 0.0f;
  int sum = 0;
  for (int j = 0; j < 32; ++j) {
    const int q = static_cast<int>(std::nearbyint(x[j] * id));  // round half to even
    out->q[j] = static_cast<int8_t>(q);
    sum += q;
  }
  out->d = d;
  out->s = d * static_cast<float>(sum);
}

}  // namespace

void quantize_act_q8_ref(const float* x, int64_t n, ActQ8Block* out) {
  for (int64_t b = 0; b < n / 32; ++b) quantize_block_ref(x + b * 32, out + b);
}

void quantize_act_q8(const float* x, int64_t n, ActQ8Block* out) {
  const int64_t nb = n / 32;
#if defined(__AVX2__)
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * 32;
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int u = 0; u < 4; ++u) {
      v[u] = _mm256_loadu_ps(xb + 8 * u);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[u]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float d = _mm_cvtss_f32(m4) / 127.0f;
    const __m256 id = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
    __m256i q[4];
    for (int u = 0; u < 4; ++u) q[u] = _mm256_cvtps_epi32(_mm256_mul_ps(v[u], id));  // half to even
    const __m256i sum32 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum32), _mm256_extracti128_si256(sum32, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    // int32 → int8 with the lane order restored (the packs work within 128-bit halves).
    const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    const __m256i ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].q), ordered);
    out[b].d = d;
    out[b].s = d * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
#else
  quantize_act_q8_ref(x, nb * 32, out);
#endif
}

float dot_q8_ref(GgmlType type, const uint8_t* row, const ActQ8Block* x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int isum = 0;
    switch (type) {
      case GgmlType::Q4_1: {
        const auto* w = reinterpret_cast<const BlockQ4_1*>(row) + b;
        for (int j = 0; j < 16; ++j)
          isum += (w->qs[j] & 0xF) * x[b].q[j] + (w->qs[j] >> 4) * x[b].q[j + 16];
        acc += fp16_to_fp32(w->d) * x[b].d * static_cast<float>(isum) + fp16_to_fp32(w->m) * x[b].s;
        break;
      }
      case GgmlType::Q4_0: {  // x_j = d·(q_j − 8)
        const auto* w = reinterpret_cast<const BlockQ4_0*>(row) + b;
        for (int j = 0; j < 16; ++j)
          isum += (w->qs[j] & 0xF) * x[b].q[j] + (w->qs[j] >> 4) * x[b].q[j + 16];
        acc += fp16_to_fp32(w->d) * (x[b].d * static_cast<float>(isum) - 8.0f * x[b].s);
        break;
      }
      case GgmlType::Q8_0: {
        const auto* w = reinterpret_cast<const BlockQ8_0*>(row) + b;
        for (int j = 0; j < 32; ++j) isum += w->qs[j] * x[b].q[j];
        acc += fp16_to_fp32(w->d) * x[b].d * static_cast<float>(isum);
        break;
      }
      default: return NAN;  // callers check q8_dot_supported first
    }
  }
  return acc;
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
namespace {

// The 32 weights of a 4-bit block as unsigned bytes in element order: low nibbles are elements
// 0–15, high nibbles 16–31.
inline __m256i nibbles(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m), _mm_and_si128(raw, m));
}

// Σ u_j·s_j over 32 byte pairs (u unsigned ≤ 128, s signed ≥ −127: the int16 pair sums cannot
// saturate), as 8 int32 lanes converted to float. With AVX-512 VNNI one vpdpbusd does both
// steps; each lane is the same sum of four products, so the result is the same.
inline __m256 dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s));
#else
  const __m256i p16 = _mm256_maddubs_epi16(u, s);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
#endif
}

// [x.d, x.s, 0, 0]
inline __m128 act_scales(const ActQ8Block& x) {
  return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(&x.d)));
}

// R rows against one activation vector: the activation bytes are loaded once per block for all
// rows; each row keeps its own accumulator (lanes of block dot products × d_w·d_x) and a second
// one whose lane 1 collects the offset term (m·s for Q4_1, d_w·s for Q4_0).
template <GgmlType T, int R, int PF = 0>
void dot_rows_avx2(const uint8_t* row0, size_t row_bytes, const ActQ8Block* x, int64_t nb, float* out) {
  __m256 acc[R];
  __m128 off[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    off[r] = _mm_setzero_ps();
  }
  // The rows PF groups of R ahead, a line or two per block, so they are in cache when reached:
  // decode streams every weight from memory once per token, and without this the loads stall.
  const char* ahead = reinterpret_cast<const char*>(row0) + PF * R * row_bytes;
  const int64_t lines = static_cast<int64_t>(R * row_bytes + 63) / 64;
  const int64_t per_block = (lines + nb - 1) / nb;
  for (int64_t b = 0; b < nb; ++b) {
    if constexpr (PF > 0)
      for (int64_t l = b * per_block; l < (b + 1) * per_block && l < lines; ++l)
        _mm_prefetch(ahead + l * 64, _MM_HINT_T0);
    const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
    const __m128 xs = act_scales(x[b]);
    for (int r = 0; r < R; ++r) {
      const uint8_t* rb = row0 + r * row_bytes;
      if constexpr (T == GgmlType::Q4_1) {
        const auto* w = reinterpret_cast<const BlockQ4_1*>(rb) + b;
        const __m128 sc = _mm_mul_ps(_mm_cvtph_ps(_mm_loadu_si32(w)), xs);  // [d·dx, m·sx]
        acc[r] = _mm256_fmadd_ps(dot_u8s8(nibbles(w->qs), xq), _mm256_broadcastss_ps(sc), acc[r]);
        off[r] = _mm_add_ps(off[r], sc);
      } else if constexpr (T == GgmlType::Q4_0) {
        const auto* w = reinterpret_cast<const BlockQ4_0*>(rb) + b;
        const __m128 sc = _mm_mul_ps(_mm_broadcastss_ps(_mm_cvtph_ps(_mm_loadu_si16(w))), xs);
        acc[r] = _mm256_fmadd_ps(dot_u8s8(nibbles(w->qs), xq), _mm256_broadcastss_ps(sc), acc[r]);
        off[r] = _mm_add_ps(off[r], sc);  // lane 1: d·sx, taken 8 times below
      } else {
        const auto* w = reinterpret_cast<const BlockQ8_0*>(rb) + b;
        const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w->qs));
        // |w|·(x·sign w) = w·x, with the unsigned operand first as vpmaddubsw wants.
        const __m256 p = dot_u8s8(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
        const __m128 sc = _mm_mul_ss(_mm_cvtph_ps(_mm_loadu_si16(w)), xs);
        acc[r] = _mm256_fmadd_ps(p, _mm256_broadcastss_ps(sc), acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    const float o = _mm_cvtss_f32(_mm_movehdup_ps(off[r]));
    const float s = simd::hsum256(acc[r]);
    out[r] = T == GgmlType::Q4_1 ? s + o : T == GgmlType::Q4_0 ? s - 8.0f * o : s;
  }
}

template <GgmlType T>
void dot_rows_t(const uint8_t* row0, size_t row_bytes, int rows, const ActQ8Block* x, int64_t nb, float* out) {
  int r = 0;
  // Prefetching two groups of four rows ahead measured 1.4× the decode tok/s of none on a
  // 2-core Zen 1 (one group 1.3×, four 1.35×; docs/benchmarks.md); the last groups of the range
  // prefetch nothing (the rows after it may not exist).
  constexpr int kAhead = 2;
  for (; r + 4 * (kAhead + 1) <= rows; r += 4)
    dot_rows_avx2<T, 4, kAhead>(row0 + r * row_bytes, row_bytes, x, nb, out + r);
  for (; r + 4 <= rows; r += 4) dot_rows_avx2<T, 4>(row0 + r * row_bytes, row_bytes, x, nb, out + r);
  for (; r < rows; ++r) dot_rows_avx2<T, 1>(row0 + r * row_bytes, row_bytes, x, nb, out + r);
}

}  // namespace
#endif

void dot_q8_rows(GgmlType type, const uint8_t* row0, size_t row_bytes, int rows,
                 const ActQ8Block* x, int64_t nb, float* out) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  switch (type) {
    case GgmlType::Q4_1: return dot_rows_t<GgmlType::Q4_1>(row0, row_bytes, rows, x, nb, out);
    case GgmlType::Q4_0: return dot_rows_t<GgmlType::Q4_0>(row0, row_bytes, rows, x, nb, out);
    case GgmlType::Q8_0: return dot_rows_t<GgmlType::Q8_0>(row0, row_bytes, rows, x, nb, out);
    default: break;
  }
#endif
  for (int r = 0; r < rows; ++r) out[r] = dot_q8_ref(type, row0 + r * row_bytes, x, nb);
}

}  // namespace flashmem::cpu

#include "ops/cpu/matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cpu/matvec_q8.h"

#include "core/simd.h"
#ifdef FLASHMEM_HAVE_BLAS
#include <cblas.h>
#endif

namespace flashmem::cpu {

namespace {

float dot_f32(const float* a, const float* b, int64_t n) {
#if defined(__AVX512F__)
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16)
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
#elif defined(__AVX2__) && defined(__FMA__)
  // Four independent chains hide the FMA latency (the scalar loop cannot be vectorised
  // without reassociation).
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int u = 0; u < 4; ++u)
      acc[u] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * u), _mm256_loadu_ps(b + i + 8 * u), acc[u]);
  for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc[0]);
  float s = simd::hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
#else
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
#endif
}

#if defined(__AVX512F__) && defined(__F16C__)
// The two f16 scale fields at the start of a block, converted by hardware: lane 0 = first.
inline __m128 load_f16x2(const void* p) {
  uint32_t bits;
  std::memcpy(&bits, p, 4);
  return _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(bits)));
}

// R consecutive rows (row_bytes apart) against one activation vector: the activation loads
// (and x0 + x1) are shared, and each row keeps independent accumulator chains so the FMA
// latency stays hidden; the horizontal sums happen once, after the loop.
// Q4_1: x_j = d·q_j + m, nibble j of qs → element j, high nibble → element j + 16.
template <int R>
void dot_q4_1_avx512(const uint8_t* row0, size_t row_bytes, const float* x, int64_t nb, float* out) {
  __m512 a0[R], a1[R], ma[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = ma[r] = _mm512_setzero_ps();
  const __m512i mask = _mm512_set1_epi32(0xF);
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 x0 = _mm512_loadu_ps(x + b * 32);
    const __m512 x1 = _mm512_loadu_ps(x + b * 32 + 16);
    const __m512 xs = _mm512_add_ps(x0, x1);
    for (int r = 0; r < R; ++r) {
      const BlockQ4_1* w = reinterpret_cast<const BlockQ4_1*>(row0 + r * row_bytes) + b;
      const __m512i raw = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w->qs)));
      const __m128 dm = load_f16x2(w);
      const __m512 d = _mm512_broadcastss_ps(dm);
      a0[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_si512(raw, mask)), d), x0, a0[r]);
      a1[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(raw, 4)), d), x1, a1[r]);
      ma[r] = _mm512_fmadd_ps(_mm512_broadcastss_ps(_mm_movehdup_ps(dm)), xs, ma[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0[r], a1[r]), ma[r]));
}

template <int R>
void dot_q8_0_avx512(const uint8_t* row0, size_t row_bytes, const float* x, int64_t nb, float* out) {
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 x0 = _mm512_loadu_ps(x + b * 32);
    const __m512 x1 = _mm512_loadu_ps(x + b * 32 + 16);
    for (int r = 0; r < R; ++r) {
      const BlockQ8_0* w = reinterpret_cast<const BlockQ8_0*>(row0 + r * row_bytes) + b;
      const __m512 d = _mm512_broadcastss_ps(load_f16x2(w));
      const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w->qs))));
      const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w->qs + 16))));
      a0[r] = _mm512_fmadd_ps(_mm512_mul_ps(q0, d), x0, a0[r]);
      a1[r] = _mm512_fmadd_ps(_mm512_mul_ps(q1, d), x1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
}

float dot_q4_0_avx512(const BlockQ4_0* w, const float* x, int64_t nb) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  const __m512i mask = _mm512_set1_epi32(0xF);
  const __m512i eight = _mm512_set1_epi32(8);
  for (int64_t b = 0; b < nb; ++b) {
    const __m512i raw = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qs)));
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(raw, mask), eight));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(raw, 4), eight));
    const __m512 d = _mm512_broadcastss_ps(load_f16x2(&w[b]));
    acc0 = _mm512_fmadd_ps(_mm512_mul_ps(lo, d), _mm512_loadu_ps(x + b * 32), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_mul_ps(hi, d), _mm512_loadu_ps(x + b * 32 + 16), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}
#endif

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// The same fused kernels with 8 lanes, for machines without AVX-512. A 32-weight block is four
// vectors; each row sums its block's q·x first (one chain of four FMAs), then scales it by d
// into its accumulator, so R rows keep R independent chains in 16 registers.
inline __m128 load_f16x2(const void* p) {  // straight into a vector register
  return _mm_cvtph_ps(_mm_loadu_si32(p));
}

// Q4_1: x_j = d·q_j + m; nibble j of qs → element j, high nibble → element j + 16.
template <int R>
void dot_q4_1_avx2(const uint8_t* row0, size_t row_bytes, const float* x, int64_t nb, float* out) {
  __m256 acc[R], ma[R];
  for (int r = 0; r < R; ++r) acc[r] = ma[r] = _mm256_setzero_ps();
  const __m256i mask = _mm256_set1_epi32(0xF);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * 32;
    const __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
    const __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
    const __m256 xs = _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3));
    for (int r = 0; r < R; ++r) {
      const BlockQ4_1* w = reinterpret_cast<const BlockQ4_1*>(row0 + r * row_bytes) + b;
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w->qs));
      const __m256i lo = _mm256_cvtepu8_epi32(q);                    // bytes 0–7
      const __m256i hi = _mm256_cvtepu8_epi32(_mm_srli_si128(q, 8));  // bytes 8–15
      __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(lo, mask)), x0);
      t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(hi, mask)), x1, t);
      t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(lo, 4)), x2, t);
      t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hi, 4)), x3, t);
      const __m128 dm = load_f16x2(w);
      acc[r] = _mm256_fmadd_ps(t, _mm256_broadcastss_ps(dm), acc[r]);
      ma[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), xs, ma[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = simd::hsum256(_mm256_add_ps(acc[r], ma[r]));
}

// Q8_0, one row: on this EPYC (no AVX-512) four interleaved rows ran 1.6–1.8× slower than one
// row at a time over the 30 MB output matrix (bench_kernels q8_0_output), unlike Q4_1.
float dot_q8_0_avx2(const uint8_t* row, const float* x, int64_t nb) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ8_0* w = reinterpret_cast<const BlockQ8_0*>(row) + b;
    const float* xb = x + b * 32;
    // Eight int8 at a time straight from memory (vpmovsxbd with a memory operand).
    auto q8 = [&](int at) {
      return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w->qs + at))));
    };
    __m256 t0 = _mm256_mul_ps(q8(0), _mm256_loadu_ps(xb));
    __m256 t1 = _mm256_mul_ps(q8(8), _mm256_loadu_ps(xb + 8));
    t0 = _mm256_fmadd_ps(q8(16), _mm256_loadu_ps(xb + 16), t0);
    t1 = _mm256_fmadd_ps(q8(24), _mm256_loadu_ps(xb + 24), t1);
    const __m256 d = _mm256_broadcastss_ps(load_f16x2(w));
    acc0 = _mm256_fmadd_ps(t0, d, acc0);
    acc1 = _mm256_fmadd_ps(t1, d, acc1);
  }
  return simd::hsum256(_mm256_add_ps(acc0, acc1));
}
#define FLASHMEM_DOT_AVX2 1
#endif

// Per-thread scratch for a dequantised row or tile; grows, never shrinks.
thread_local std::vector<float> t_scratch;
float* scratch(size_t n) {
  if (t_scratch.size() < n) t_scratch.resize(n);
  return t_scratch.data();
}

}  // namespace

float dot_row_ref(GgmlType type, const uint8_t* row, const float* x, int64_t cols) {
  std::vector<float> tmp(static_cast<size_t>(cols));
  dequantize_row_ref(type, row, tmp.data(), static_cast<uint64_t>(cols));
  double s = 0.0;
  for (int64_t i = 0; i < cols; ++i) s += static_cast<double>(tmp[i]) * x[i];
  return static_cast<float>(s);
}

float dot_row(GgmlType type, const uint8_t* row, const float* x, int64_t cols) {
#if defined(__AVX512F__) && defined(__F16C__)
  switch (type) {
    case GgmlType::Q4_1: { float r; dot_q4_1_avx512<1>(row, 0, x, cols / 32, &r); return r; }
    case GgmlType::Q8_0: { float r; dot_q8_0_avx512<1>(row, 0, x, cols / 32, &r); return r; }
    case GgmlType::Q4_0: return dot_q4_0_avx512(reinterpret_cast<const BlockQ4_0*>(row), x, cols / 32);
    case GgmlType::F32: return dot_f32(reinterpret_cast<const float*>(row), x, cols);
    default: break;
  }
#elif defined(FLASHMEM_DOT_AVX2)
  switch (type) {
    case GgmlType::Q4_1: { float r; dot_q4_1_avx2<1>(row, 0, x, cols / 32, &r); return r; }
    case GgmlType::Q8_0: return dot_q8_0_avx2(row, x, cols / 32);
    default: break;
  }
#endif
  if (type == GgmlType::F32) return dot_f32(reinterpret_cast<const float*>(row), x, cols);
  float* tmp = scratch(static_cast<size_t>(cols));
  dequantize_row(type, row, tmp, static_cast<uint64_t>(cols));
  return dot_f32(tmp, x, cols);
}

void dot4_rows(GgmlType type, const uint8_t* row0, size_t row_bytes, const float* x, int64_t cols,
               float* out) {
#if defined(__AVX512F__) && defined(__F16C__)
  if (type == GgmlType::Q4_1) return dot_q4_1_avx512<4>(row0, row_bytes, x, cols / 32, out);
  if (type == GgmlType::Q8_0) return dot_q8_0_avx512<4>(row0, row_bytes, x, cols / 32, out);
#elif defined(FLASHMEM_DOT_AVX2)
  if (type == GgmlType::Q4_1) return dot_q4_1_avx2<4>(row0, row_bytes, x, cols / 32, out);
  if (type == GgmlType::Q8_0) {  // row by row: faster here than four interleaved rows
    for (int r = 0; r < 4; ++r) out[r] = dot_q8_0_avx2(row0 + r * row_bytes, x, cols / 32);
    return;
  }
#endif
  for (int r = 0; r < 4; ++r) out[r] = dot_row(type, row0 + r * row_bytes, x, cols);
}

bool have_blas() {
#ifdef FLASHMEM_HAVE_BLAS
  return true;
#else
  return false;
#endif
}

void sgemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
              const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
#ifdef FLASHMEM_HAVE_BLAS
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
#else
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float d = alpha * dot_f32(a + i * lda, b + j * ldb, k);
      c[i * ldc + j] = beta == 0.0f ? d : d + beta * c[i * ldc + j];
    }
#endif
}

void sgemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
              int64_t ldb, float beta, float* c, int64_t ldc) {
#ifdef FLASHMEM_HAVE_BLAS
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
#else
  for (int64_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    if (beta == 0.0f) std::fill(ci, ci + n, 0.0f);
    else for (int64_t j = 0; j < n; ++j) ci[j] *= beta;
    for (int64_t l = 0; l < k; ++l) {
      const float av = a[i * lda + l];
      const float* bl = b + l * ldb;
      for (int64_t j = 0; j < n; ++j) ci[j] += av * bl[j];
    }
  }
#endif
}

void matmul_ref(const WeightMatrix& w, const float* x, int64_t m, float* y) {
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row_ref(w.type, w.data + r * w.row_bytes, row.data(), static_cast<uint64_t>(w.cols));
    for (int64_t i = 0; i < m; ++i) {
      float s = 0.0f;
      for (int64_t c = 0; c < w.cols; ++c) s += row[c] * x[i * w.cols + c];
      y[i * w.rows + r] = s;
    }
  }
}

namespace {
// Decode rows [r0, r1) of w: fused dequant-dot, four rows at a time.
void matvec_rows(const WeightMatrix& w, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  const int64_t cols = w.cols;
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4)
    for (int64_t i = 0; i < m; ++i) {
      float out[4];
      dot4_rows(w.type, w.data + r * w.row_bytes, w.row_bytes, x + i * cols, cols, out);
      for (int k = 0; k < 4; ++k) y[i * w.rows + r + k] = out[k];
    }
  for (; r < r1; ++r)
    for (int64_t i = 0; i < m; ++i)
      y[i * w.rows + r] = dot_row(w.type, w.data + r * w.row_bytes, x + i * cols, cols);
}
// The same against activations quantised to 8 bits (m vectors of nb blocks each). Several
// vectors take the rows in blocks of kCacheRows, each block read from memory once for all.
void matvec_rows_q8(const WeightMatrix& w, const ActQ8Block* xq, int64_t m, float* y, int64_t r0,
                    int64_t r1) {
  constexpr int64_t kCacheRows = 128;
  const int64_t nb = w.cols / 32;
  const int64_t step = m == 1 ? r1 - r0 : kCacheRows;
  for (int64_t b0 = r0; b0 < r1; b0 += step) {
    const int64_t b1 = std::min(r1, b0 + step);
    for (int64_t i = 0; i < m; ++i)
      dot_q8_rows(w.type, w.data + b0 * w.row_bytes, w.row_bytes, static_cast<int>(b1 - b0), xq + i * nb, nb,
                  y + i * w.rows + b0);
  }
}
// Rows per decode task: one contiguous range per thread and matrix (in groups of four rows, the
// kernel's), at least kMinTaskRows. Each thread then streams one region with its prefetches
// running ahead; 128-row tasks handed out dynamically ran 10% slower on a 2-core Xeon
// (docs/benchmarks.md), the restart of every task's prefetch costing more than balance gains.
constexpr int64_t kMinTaskRows = 64;
int64_t decode_task_rows(int64_t rows, int threads) {
  const int64_t per = (rows + threads - 1) / threads;
  return std::max(kMinTaskRows, (per + 3) / 4 * 4);
}
thread_local std::vector<ActQ8Block> t_act_q8;  // the caller's quantised activations
// x's m rows quantised to 8 bits once for every matrix of ws (they share x, hence cols), when
// each has a q8 kernel; nullptr when the products take f32 activations.
const ActQ8Block* quantised_activations(std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
                                        CpuDot dot) {
  const int64_t cols = ws[0]->cols;
  bool q8 = dot == CpuDot::kQ8 && cols % 32 == 0;
  for (const WeightMatrix* w : ws) q8 = q8 && q8_dot_supported(w->type) && w->cols == cols;
  if (!q8) return nullptr;
  const int64_t nb = cols / 32;
  t_act_q8.resize(static_cast<size_t>(m * nb));
  for (int64_t i = 0; i < m; ++i) quantize_act_q8(x + i * cols, cols, t_act_q8.data() + i * nb);
  return t_act_q8.data();
}
// Rows [r0, r1) of w's product, by the q8 kernels when xq is given.
void decode_rows(const WeightMatrix& w, const float* x, const ActQ8Block* xq, int64_t m, float* y, int64_t r0,
                 int64_t r1) {
  if (xq) matvec_rows_q8(w, xq, m, y, r0, r1);
  else matvec_rows(w, x, m, y, r0, r1);
}
}  // namespace

void matmul_n(ThreadPool& pool, std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
              std::span<float* const> ys, CpuDot dot) {
  FM_ICHECK(ws.size() == ys.size(), "matmul_n needs one output per weight");
  if (m > kDecodeMaxRows) {
    for (size_t k = 0; k < ws.size(); ++k) matmul(pool, *ws[k], x, m, ys[k]);
    return;
  }
  if (ws.empty()) return;
  const ActQ8Block* xq = quantised_activations(ws, x, m, dot);
  // One task list over the row chunks of all matrices.
  std::vector<int64_t> first_task(ws.size() + 1, 0);
  std::vector<int64_t> task_rows(ws.size());
  for (size_t k = 0; k < ws.size(); ++k) {
    task_rows[k] = decode_task_rows(ws[k]->rows, pool.size());
    first_task[k + 1] = first_task[k] + (ws[k]->rows + task_rows[k] - 1) / task_rows[k];
  }
  pool.run(first_task.back(), [&](int64_t t, int) {
    const size_t k = static_cast<size_t>(
        std::upper_bound(first_task.begin(), first_task.end(), t) - first_task.begin() - 1);
    const int64_t r0 = (t - first_task[k]) * task_rows[k];
    decode_rows(*ws[k], x, xq, m, ys[k], r0, std::min(ws[k]->rows, r0 + task_rows[k]));
  });
}

void matmul_ranges(ThreadPool& pool, std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
                   std::span<float* const> ys, CpuDot dot, const std::function<void(int64_t, int64_t)>& then) {
  FM_ICHECK(!ws.empty() && ws.size() == ys.size() && m <= kDecodeMaxRows, "matmul_ranges: decode rows, one output each");
  const int64_t rows = ws[0]->rows;
  for (const WeightMatrix* w : ws)
    FM_ICHECK(w->rows == rows && w->cols == ws[0]->cols, "matmul_ranges: matrices of one shape");
  const ActQ8Block* xq = quantised_activations(ws, x, m, dot);
  const int64_t per = decode_task_rows(rows, pool.size());
  pool.run((rows + per - 1) / per, [&](int64_t t, int) {
    const int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
    for (size_t k = 0; k < ws.size(); ++k) decode_rows(*ws[k], x, xq, m, ys[k], r0, r1);
    then(r0, r1);
  });
}

void matmul(ThreadPool& pool, const WeightMatrix& w, const float* x, int64_t m, float* y, CpuDot dot) {
  FM_ICHECK(w.data != nullptr && w.cols > 0, "matmul on an empty weight ", w.name);
  const int64_t cols = w.cols;
  if (m <= kDecodeMaxRows) {
    const WeightMatrix* ws[1] = {&w};
    float* ys[1] = {y};
    matmul_n(pool, ws, x, m, ys, dot);
    return;
  }
  // Prefill: dequantise a tile of rows once, multiply it with all m activations.
  constexpr int64_t kTileRows = 64;
  const int64_t n_tiles = (w.rows + kTileRows - 1) / kTileRows;
  pool.run(n_tiles, [&](int64_t t, int) {
    const int64_t r0 = t * kTileRows;
    const int64_t nr = std::min(kTileRows, w.rows - r0);
    float* tile = scratch(static_cast<size_t>(nr * cols));
    for (int64_t r = 0; r < nr; ++r)
      dequantize_row(w.type, w.data + (r0 + r) * w.row_bytes, tile + r * cols,
                     static_cast<uint64_t>(cols));
    sgemm_nt(m, nr, cols, 1.0f, x, cols, tile, cols, 0.0f, y + r0, w.rows);
  });
}

}  // namespace flashmem::cpu

#include "ops/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/simd.h"
#include "core/thread_pool.h"
#include "ops/cpu/elementwise.h"
#include "ops/cpu/matmul.h"

namespace flashmem::cpu {

namespace {

// Above this many queries the gathered-sgemm schedule wins over split-and-merge.
constexpr int64_t kDecodeMaxQueries = 4;
// Query heads scored together against one K page (they share its loads).
constexpr int kMaxRows = 4;

// Without AVX-512, AVX2 + FMA + F16C kernels (8 lanes) take the decode path.
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define FLASHMEM_ATTN_AVX2 1
#else
#define FLASHMEM_ATTN_AVX2 0
#endif

// Converts n KV values starting at element `at` to f32.
void kv_to_f32(const void* src, KvType type, int64_t at, int64_t n, float* dst) {
  if (type == KvType::kF32) {
    std::memcpy(dst, static_cast<const float*>(src) + at, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const uint16_t* h = static_cast<const uint16_t*>(src) + at;
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
#elif FLASHMEM_ATTN_AVX2
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
#endif
  for (; i < n; ++i) dst[i] = fp16_to_fp32(h[i]);
}

// Dim c of kv head g's first n keys in a K half-page, as f32.
void k_row_to_f32(const void* k, const AttentionParams& p, int g, int c, int64_t n, float* dst) {
  const int64_t at = g * p.head_stride + int64_t{c} * p.page_tokens;
  if (p.kv_type != KvType::kQ8) return kv_to_f32(k, p.kv_type, at, n, dst);
  const int8_t* q = static_cast<const int8_t*>(k) + at;
  const float* sc = kv_head_scales(k, p, g);
  for (int64_t j = 0; j < n; ++j) dst[j] = q[j] * sc[j];
}

// kv head g's first n values in a V half-page ([n × head_dim]), as f32.
void v_rows_to_f32(const void* v, const AttentionParams& p, int g, int64_t n, float* dst) {
  const int64_t at = g * p.head_stride;
  const int d = p.head_dim;
  if (p.kv_type != KvType::kQ8) return kv_to_f32(v, p.kv_type, at, n * d, dst);
  const int8_t* q = static_cast<const int8_t*>(v) + at;
  const float* sc = kv_head_scales(v, p, g);
  for (int64_t j = 0; j < n; ++j)
    for (int c = 0; c < d; ++c) dst[j * d + c] = q[j * d + c] * sc[j];
}

// Element `at` as stored: q8 values before their scale.
inline float raw_load(const void* base, KvType t, int64_t at) {
  return t == KvType::kQ8 ? static_cast<float>(static_cast<const int8_t*>(base)[at]) : kv_load(base, t, at);
}

void check_params(const AttentionParams& p) {
  FM_ICHECK(p.n_heads > 0 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0,
            "bad head counts ", p.n_heads, "/", p.n_kv_heads);
  FM_ICHECK(p.head_dim > 0 && p.page_tokens > 0 &&
                p.head_stride == int64_t{p.page_tokens} * p.head_dim,
            "bad page layout");
}

// Online-softmax state of R query rows over the keys seen so far (see AttnState).
struct Rows {
  int n;                   // rows in use (≤ kMaxRows)
  const float* q[kMaxRows];  // head_dim values each
  float* m[kMaxRows];
  float* l[kMaxRows];
  float* o[kMaxRows];        // head_dim values each, unnormalised
};

#if defined(__AVX512F__)
// exp(x) for x ≤ 0 as in softmax: 2^(x·log2 e) split into 2^n · 2^f, f ∈ [−½, ½], with a
// degree-7 Taylor polynomial for 2^f (relative error < 1e-8 before rounding).
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.525273380e-5f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.540353040e-4f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.333355815e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618129108e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265070e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471806e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

template <KvType T>
inline __m512 load16(const void* base, int64_t at, __mmask16 mask) {
  if constexpr (T == KvType::kF32) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + at);
  } else if constexpr (T == KvType::kQ8) {
    const int8_t* q = static_cast<const int8_t*>(base) + at;
    __m128i b;
    if (mask == 0xFFFF) {
      b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    } else {  // a prefix mask: copy what is there
      alignas(16) int8_t t[16] = {};
      std::memcpy(t, q, static_cast<size_t>(__builtin_popcount(mask)));
      b = _mm_load_si128(reinterpret_cast<const __m128i*>(t));
    }
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
  } else {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + at));
  }
}

// Attends R rows (query heads of one KV head, all seeing the first n_vis tokens of the page)
// to one page. Scores of 16 keys at a time come from dim-major K with one FMA per dim.
// q8: ksc/vsc are the page's per-token scales of this kv head (unused otherwise).
template <int R, KvType T>
void attend_page(const Rows& rows, const void* kbase, const void* vbase, const float* ksc,
                 const float* vsc, int pt, int d, int n_vis, float scale,
                 float* s /* R × pt, scratch */) {
  for (int jb = 0; jb < n_vis; jb += 16) {
    const int nv = std::min(16, n_vis - jb);
    const __mmask16 mask = static_cast<__mmask16>((1u << nv) - 1);
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int c = 0; c < d; ++c) {
      const __m512 kc = load16<T>(kbase, int64_t{c} * pt + jb, mask);
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(rows.q[r][c]), kc, acc[r]);
    }
    __m512 sc = _mm512_set1_ps(scale);
    if constexpr (T == KvType::kQ8) sc = _mm512_mul_ps(sc, _mm512_maskz_loadu_ps(mask, ksc + jb));
    for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(s + r * pt + jb, mask, _mm512_mul_ps(acc[r], sc));
  }
  float corr[R];
  for (int r = 0; r < R; ++r) {
    float* sr = s + r * pt;
    float mx = *rows.m[r];
    for (int j = 0; j < n_vis; ++j) mx = std::max(mx, sr[j]);
    corr[r] = std::exp(*rows.m[r] - mx);  // 0 on the first page (m = −inf)
    *rows.m[r] = mx;
    __m512 lsum = _mm512_setzero_ps();
    for (int jb = 0; jb < n_vis; jb += 16) {
      const int nv = std::min(16, n_vis - jb);
      const __mmask16 mask = static_cast<__mmask16>((1u << nv) - 1);
      const __m512 e = _mm512_maskz_mov_ps(
          mask, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, sr + jb), _mm512_set1_ps(mx))));
      _mm512_mask_storeu_ps(sr + jb, mask, e);
      lsum = _mm512_add_ps(lsum, e);
    }
    *rows.l[r] = *rows.l[r] * corr[r] + _mm512_reduce_add_ps(lsum);
  }
  for (int cb = 0; cb < d; cb += 16) {
    const __mmask16 mask = static_cast<__mmask16>(d - cb >= 16 ? 0xFFFF : (1u << (d - cb)) - 1);
    __m512 acc[R];
    for (int r = 0; r < R; ++r)
      acc[r] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, rows.o[r] + cb), _mm512_set1_ps(corr[r]));
    for (int j = 0; j < n_vis; ++j) {
      const __m512 vj = load16<T>(vbase, int64_t{j} * d + cb, mask);
      const float vs = T == KvType::kQ8 ? vsc[j] : 1.0f;
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(T == KvType::kQ8 ? s[r * pt + j] * vs : s[r * pt + j]), vj, acc[r]);
    }
    for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(rows.o[r] + cb, mask, acc[r]);
  }
}
#endif

#if FLASHMEM_ATTN_AVX2
// exp(x) for x ≤ 0, as exp512: 2^n · 2^f with the same degree-7 polynomial; 2^n is built in
// the exponent bits (n ≥ −126 after the clamp). x > 0 (only lanes past the data, whose
// results are discarded) is clamped to 0 so that no lane overflows the exponent.
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_setzero_ps());
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  __m256 p = _mm256_set1_ps(1.525273380e-5f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.540353040e-4f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.333355815e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618129108e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550410866e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402265070e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931471806e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// nv (≤ 8) values at element `at`; lanes past nv read as 0.
template <KvType T>
inline __m256 load8(const void* base, int64_t at, int nv) {
  if (nv >= 8) {
    if constexpr (T == KvType::kF32) return _mm256_loadu_ps(static_cast<const float*>(base) + at);
    else if constexpr (T == KvType::kQ8)
      return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(base) + at))));
    else return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + at)));
  }
  alignas(32) float t[8] = {};
  for (int i = 0; i < nv; ++i) t[i] = raw_load(base, T, at + i);
  return _mm256_load_ps(t);
}

inline __m256 loadf8(const float* p, int nv) { return load8<KvType::kF32>(p, 0, nv); }

inline void storef8(float* p, __m256 v, int nv) {
  if (nv >= 8) return _mm256_storeu_ps(p, v);
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  std::memcpy(p, t, static_cast<size_t>(nv) * sizeof(float));
}

// attend_page with 8 lanes: the same schedule and arithmetic as the AVX-512 kernel.
template <int R, KvType T>
void attend_page8(const Rows& rows, const void* kbase, const void* vbase, const float* ksc,
                  const float* vsc, int pt, int d, int n_vis, float scale,
                  float* s /* R × pt, scratch */) {
  for (int jb = 0; jb < n_vis; jb += 8) {
    const int nv = std::min(8, n_vis - jb);
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int c = 0; c < d; ++c) {
      const __m256 kc = load8<T>(kbase, int64_t{c} * pt + jb, nv);
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(rows.q[r][c]), kc, acc[r]);
    }
    __m256 sc = _mm256_set1_ps(scale);
    if constexpr (T == KvType::kQ8) sc = _mm256_mul_ps(sc, loadf8(ksc + jb, nv));
    for (int r = 0; r < R; ++r) storef8(s + r * pt + jb, _mm256_mul_ps(acc[r], sc), nv);
  }
  float corr[R];
  for (int r = 0; r < R; ++r) {
    float* sr = s + r * pt;
    float mx = *rows.m[r];
    for (int j = 0; j < n_vis; ++j) mx = std::max(mx, sr[j]);
    corr[r] = std::exp(*rows.m[r] - mx);  // 0 on the first page (m = −inf)
    *rows.m[r] = mx;
    __m256 lsum = _mm256_setzero_ps();
    for (int jb = 0; jb < n_vis; jb += 8) {
      const int nv = std::min(8, n_vis - jb);
      __m256 e = exp256(_mm256_sub_ps(loadf8(sr + jb, nv), _mm256_set1_ps(mx)));
      if (nv < 8) {  // lanes past nv must add nothing
        alignas(32) float keep[8] = {};
        for (int i = 0; i < nv; ++i) keep[i] = 1.0f;
        e = _mm256_mul_ps(e, _mm256_load_ps(keep));
      }
      storef8(sr + jb, e, nv);
      lsum = _mm256_add_ps(lsum, e);
    }
    *rows.l[r] = *rows.l[r] * corr[r] + simd::hsum256(lsum);
  }
  for (int cb = 0; cb < d; cb += 8) {
    const int nd = std::min(8, d - cb);
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_mul_ps(loadf8(rows.o[r] + cb, nd), _mm256_set1_ps(corr[r]));
    for (int j = 0; j < n_vis; ++j) {
      const __m256 vj = load8<T>(vbase, int64_t{j} * d + cb, nd);
      const float vs = T == KvType::kQ8 ? vsc[j] : 1.0f;
      for (int r = 0; r < R; ++r)
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(T == KvType::kQ8 ? s[r * pt + j] * vs : s[r * pt + j]), vj, acc[r]);
    }
    for (int r = 0; r < R; ++r) storef8(rows.o[r] + cb, acc[r], nd);
  }
}
#endif

#if !defined(__AVX512F__) && !FLASHMEM_ATTN_AVX2
// Plain version of attend_page for builds without AVX-512 or AVX2.
void attend_page_scalar(const Rows& rows, const void* kbase, const void* vbase, const float* ksc,
                        const float* vsc, KvType type, int pt, int d, int n_vis, float scale, float* s) {
  for (int r = 0; r < rows.n; ++r) {
    float* sr = s + r * pt;
    float mx = *rows.m[r];
    for (int j = 0; j < n_vis; ++j) {
      float acc = 0.0f;
      for (int c = 0; c < d; ++c) acc += rows.q[r][c] * raw_load(kbase, type, int64_t{c} * pt + j);
      sr[j] = acc * (ksc ? scale * ksc[j] : scale);
      mx = std::max(mx, sr[j]);
    }
    const float corr = std::exp(*rows.m[r] - mx);
    *rows.m[r] = mx;
    float l = 0.0f;
    for (int j = 0; j < n_vis; ++j) l += sr[j] = std::exp(sr[j] - mx);
    *rows.l[r] = *rows.l[r] * corr + l;
    float* o = rows.o[r];
    for (int c = 0; c < d; ++c) o[c] *= corr;
    for (int j = 0; j < n_vis; ++j) {
      const float w = vsc ? sr[j] * vsc[j] : sr[j];
      for (int c = 0; c < d; ++c) o[c] += w * raw_load(vbase, type, int64_t{j} * d + c);
    }
  }
}
#endif

void attend(const Rows& rows, const void* kbase, const void* vbase, const float* ksc,
            const float* vsc, KvType type, int pt, int d, int n_vis, float scale, float* s) {
#if defined(__AVX512F__)
  auto go = [&]<KvType T>() {
    switch (rows.n) {
      case 1: return attend_page<1, T>(rows, kbase, vbase, ksc, vsc, pt, d, n_vis, scale, s);
      case 2: return attend_page<2, T>(rows, kbase, vbase, ksc, vsc, pt, d, n_vis, scale, s);
      case 3: return attend_page<3, T>(rows, kbase, vbase, ksc, vsc, pt, d, n_vis, scale, s);
      default: return attend_page<4, T>(rows, kbase, vbase, ksc, vsc, pt, d, n_vis, scale, s);
    }
  };
  if (type == KvType::kF32) go.template operator()<KvType::kF32>();
  else if (type == KvType::kQ8) go.template operator()<KvType::kQ8>();
  else go.template operator()<KvType::kF16>();
#elif FLASHMEM_ATTN_AVX2
  auto go = [&]<KvType T>() {
    switch (rows.n) {
      case 1: return attend_page8<1, T>(rows, kbase, vbase, ksc, vsc, pt, d, n_vis, scale, s);
      case 2: return attend_page8<2, T>(rows, kbase, vbase, ksc, vsc, pt, d, n_vis, scale, s);
      case 3: return attend_page8<3, T>(rows, kbase, vbase, ksc, vsc, pt, d, n_vis, scale, s);
      default: return attend_page8<4, T>(rows, kbase, vbase, ksc, vsc, pt, d, n_vis, scale, s);
    }
  };
  if (type == KvType::kF32) go.template operator()<KvType::kF32>();
  else if (type == KvType::kQ8) go.template operator()<KvType::kQ8>();
  else go.template operator()<KvType::kF16>();
#else
  attend_page_scalar(rows, kbase, vbase, ksc, vsc, type, pt, d, n_vis, scale, s);
#endif
}

// ---- decode: split pages into ranges, online softmax per range, merge --------------------

void attention_decode(ThreadPool& pool, const AttentionParams& p, const float* q,
                      const int32_t* pos, int64_t m, std::span<const KvPageRef> pages, float* out,
                      float* lse) {
  const int d = p.head_dim;
  const int rep = p.n_heads / p.n_kv_heads;
  const int64_t n_pages = static_cast<int64_t>(pages.size());
  // Enough ranges to keep every thread busy, never fewer than one page each.
  const int64_t want = std::max<int64_t>(1, (4 * pool.size() + p.n_kv_heads - 1) / p.n_kv_heads);
  const int64_t n_splits = std::max<int64_t>(1, std::min(n_pages, want));
  const int64_t per = (n_pages + n_splits - 1) / n_splits;
  const int64_t states_per_task = m * rep;
  // Partial states: [kv_head][split][query][rep] → (m, l, o[d]).
  const int64_t n_states = p.n_kv_heads * n_splits * states_per_task;
  // Reused across decode steps; bound to local references so the workers use these instances.
  thread_local std::vector<float> tl_m, tl_l, tl_o;
  std::vector<float>& st_m = tl_m;
  std::vector<float>& st_l = tl_l;
  std::vector<float>& st_o = tl_o;
  st_m.assign(n_states, -INFINITY);
  st_l.assign(n_states, 0.0f);
  st_o.assign(static_cast<size_t>(n_states) * d, 0.0f);

  pool.run(p.n_kv_heads * n_splits, [&](int64_t task, int) {
    const int g = static_cast<int>(task / n_splits);
    const int64_t split = task % n_splits;
    const int64_t pg0 = split * per, pg1 = std::min(n_pages, pg0 + per);
    thread_local std::vector<float> sbuf;
    sbuf.resize(static_cast<size_t>(kMaxRows) * p.page_tokens);
    const int64_t base = task * states_per_task;
    const int64_t off = static_cast<int64_t>(g) * p.head_stride;
    const size_t esz = kv_type_bytes(p.kv_type);
    for (int64_t pi = pg0; pi < pg1; ++pi) {
      const KvPageRef& pg = pages[pi];
      const void* kb = static_cast<const uint8_t*>(pg.k) + off * esz;
      const void* vb = static_cast<const uint8_t*>(pg.v) + off * esz;
      const float* ksc = kv_head_scales(pg.k, p, g);
      const float* vsc = kv_head_scales(pg.v, p, g);
      for (int64_t i = 0; i < m; ++i) {
        const int n_vis = static_cast<int>(std::clamp<int64_t>(pos[i] - pg.pos0 + 1, 0, pg.n_tokens));
        if (n_vis == 0) continue;
        for (int r0 = 0; r0 < rep; r0 += kMaxRows) {
          Rows rows{};
          rows.n = std::min(kMaxRows, rep - r0);
          for (int r = 0; r < rows.n; ++r) {
            const int64_t s = base + i * rep + r0 + r;
            rows.q[r] = q + (i * p.n_heads + g * rep + r0 + r) * d;
            rows.m[r] = &st_m[s];
            rows.l[r] = &st_l[s];
            rows.o[r] = st_o.data() + s * d;
          }
          attend(rows, kb, vb, ksc, vsc, p.kv_type, p.page_tokens, d, n_vis, p.scale, sbuf.data());
        }
      }
    }
  });

  // Merge the ranges of each (query, head) and normalise.
  for (int64_t i = 0; i < m; ++i)
    for (int h = 0; h < p.n_heads; ++h) {
      const int g = h / rep, r = h % rep;
      float* dst = out + (i * p.n_heads + h) * d;
      AttnState acc{-INFINITY, 0.0f, dst};
      std::fill(dst, dst + d, 0.0f);
      for (int64_t split = 0; split < n_splits; ++split) {
        const int64_t s = (g * n_splits + split) * states_per_task + i * rep + r;
        acc.merge(AttnState{st_m[s], st_l[s], st_o.data() + s * d}, d);
      }
      if (acc.l > 0.0f)
        for (int c = 0; c < d; ++c) dst[c] /= acc.l;
      if (lse) lse[i * p.n_heads + h] = acc.l > 0.0f ? acc.m + std::log(acc.l) : -INFINITY;
    }
}

// ---- prefill: gather each kv head into contiguous f32, then sgemm per query block ---------

void attention_prefill(ThreadPool& pool, const AttentionParams& p, const float* q,
                       const int32_t* pos, int64_t m, std::span<const KvPageRef> pages,
                       float* out, float* lse) {
  const int d = p.head_dim;
  const int rep = p.n_heads / p.n_kv_heads;
  int64_t total = 0;
  for (const auto& pg : pages) total += pg.n_tokens;
  // kt: per kv head, K transposed [d × total]; vall: per kv head, V [total × d]. Kept across
  // calls (prefill calls this once per layer and micro-batch); only grown, never shrunk.
  // (Worker threads see these through the local references: a lambda never captures a
  // thread_local itself, it would name the worker's own, empty, instance.)
  thread_local std::vector<int32_t> tl_key_pos;
  thread_local std::vector<float> tl_kt, tl_vall;
  std::vector<int32_t>& key_pos = tl_key_pos;
  std::vector<float>& kt = tl_kt;
  std::vector<float>& vall = tl_vall;
  key_pos.resize(total);
  kt.resize(static_cast<size_t>(p.n_kv_heads) * total * d);
  vall.resize(kt.size());
  {
    int64_t t = 0;
    for (const auto& pg : pages)
      for (int j = 0; j < pg.n_tokens; ++j) key_pos[t++] = pg.pos0 + j;
  }
  pool.run(p.n_kv_heads, [&](int64_t g, int) {
    int64_t t = 0;
    float* ktg = kt.data() + g * total * d;
    for (const auto& pg : pages) {
      for (int c = 0; c < d; ++c) k_row_to_f32(pg.k, p, static_cast<int>(g), c, pg.n_tokens, ktg + c * total + t);
      v_rows_to_f32(pg.v, p, static_cast<int>(g), pg.n_tokens, vall.data() + (g * total + t) * d);
      t += pg.n_tokens;
    }
  });

  constexpr int64_t kBlock = 32;
  const int64_t n_blocks = (m + kBlock - 1) / kBlock;
  pool.run(int64_t{p.n_heads} * n_blocks, [&](int64_t task, int) {
    const int h = static_cast<int>(task / n_blocks);
    const int g = h / rep;
    const int64_t i0 = (task % n_blocks) * kBlock;
    const int64_t mb = std::min(kBlock, m - i0);
    int32_t max_pos = pos[i0];
    for (int64_t i = i0; i < i0 + mb; ++i) max_pos = std::max(max_pos, pos[i]);
    // Keys are in increasing position order: only a prefix can be visible to this block.
    const int64_t n_keys = std::upper_bound(key_pos.begin(), key_pos.end(), max_pos) - key_pos.begin();
    if (n_keys == 0) {
      for (int64_t i = 0; i < mb; ++i) {
        std::fill_n(out + ((i0 + i) * p.n_heads + h) * d, d, 0.0f);
        if (lse) lse[(i0 + i) * p.n_heads + h] = -INFINITY;
      }
      return;
    }
    thread_local std::vector<float> sbuf, obuf;
    sbuf.resize(mb * n_keys);
    obuf.resize(mb * d);
    // S = scale · Q Kᵀ  with Kᵀ stored [d × total]: an NN product over its first n_keys columns.
    sgemm_nn(mb, n_keys, d, q + (i0 * p.n_heads + h) * d, int64_t{p.n_heads} * d,
             kt.data() + g * total * d, total, 0.0f, sbuf.data(), n_keys);
    for (int64_t i = 0; i < mb; ++i) {
      float* row = sbuf.data() + i * n_keys;
      const int64_t vis = std::upper_bound(key_pos.begin(), key_pos.begin() + n_keys, pos[i0 + i]) -
                          key_pos.begin();
      for (int64_t j = 0; j < vis; ++j) row[j] *= p.scale;
      if (lse) {
        float mx = -INFINITY;
        for (int64_t j = 0; j < vis; ++j) mx = std::max(mx, row[j]);
        double sum = 0.0;
        for (int64_t j = 0; j < vis; ++j) sum += std::exp(static_cast<double>(row[j] - mx));
        lse[(i0 + i) * p.n_heads + h] = vis > 0 ? mx + static_cast<float>(std::log(sum)) : -INFINITY;
      }
      if (vis > 0) softmax(row, vis);
      std::fill(row + vis, row + n_keys, 0.0f);
    }
    sgemm_nn(mb, d, n_keys, sbuf.data(), n_keys, vall.data() + g * total * d, d, 0.0f, obuf.data(), d);
    for (int64_t i = 0; i < mb; ++i)
      std::memcpy(out + ((i0 + i) * p.n_heads + h) * d, obuf.data() + i * d, sizeof(float) * d);
  });
}

}  // namespace

void AttnState::merge(const AttnState& other, int head_dim) {
  if (other.l == 0.0f) return;
  const float nm = std::max(m, other.m);
  const float a = (l == 0.0f) ? 0.0f : std::exp(m - nm);
  const float b = std::exp(other.m - nm);
  for (int i = 0; i < head_dim; ++i) o[i] = o[i] * a + other.o[i] * b;
  l = l * a + other.l * b;
  m = nm;
}

void attention(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* pos,
               int64_t m, std::span<const KvPageRef> pages, float* out, float* lse) {
  check_params(p);
  if (m <= kDecodeMaxQueries) attention_decode(pool, p, q, pos, m, pages, out, lse);
  else attention_prefill(pool, p, q, pos, m, pages, out, lse);
}

void merge_attention(int64_t rows, int head_dim, float* out, float* lse, const float* out2,
                     const float* lse2) {
  for (int64_t r = 0; r < rows; ++r) {
    const float a = lse[r], b = lse2[r];
    if (b == -INFINITY) continue;
    float* o = out + r * head_dim;
    const float* o2 = out2 + r * head_dim;
    if (a == -INFINITY) {
      std::copy_n(o2, head_dim, o);
      lse[r] = b;
      continue;
    }
    const float mx = std::max(a, b);
    const float wa = std::exp(a - mx), wb = std::exp(b - mx);
    const float inv = 1.0f / (wa + wb);
    for (int c = 0; c < head_dim; ++c) o[c] = (o[c] * wa + o2[c] * wb) * inv;
    lse[r] = mx + std::log(wa + wb);
  }
}

float quantize_q8(const float* x, int n, int8_t* q, int64_t stride) {
  float amax = 0.0f;
  bool finite = true;
  for (int i = 0; i < n; ++i) {
    finite = finite && std::isfinite(x[i]);
    amax = std::max(amax, std::fabs(x[i]));
  }
  if (!finite || amax == 0.0f) {  // a NaN/inf vector stays visible as a NaN scale
    for (int i = 0; i < n; ++i) q[i * stride] = 0;
    return finite ? 0.0f : NAN;
  }
  const float inv = 127.0f / amax;
  for (int i = 0; i < n; ++i)
    q[i * stride] = static_cast<int8_t>(std::clamp(std::nearbyint(x[i] * inv), -127.0f, 127.0f));
  return amax / 127.0f;
}

void write_kv(const AttentionParams& p, void* k_page, void* v_page, int slot0, int64_t n,
              const float* k, const float* v) {
  const int hd = p.head_dim, nh = p.n_kv_heads, pt = p.page_tokens;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t slot = slot0 + t;
    for (int h = 0; h < nh; ++h) {
      const float* ks = k + (t * nh + h) * hd;
      const float* vs = v + (t * nh + h) * hd;
      const size_t k_at = static_cast<size_t>(h) * p.head_stride + slot;       // dim-major
      const size_t v_at = static_cast<size_t>(h) * p.head_stride + slot * hd;  // token-major
      if (p.kv_type == KvType::kQ8) {
        auto* ksc = const_cast<float*>(kv_head_scales(k_page, p, h));  // k_page is ours to write
        auto* vsc = const_cast<float*>(kv_head_scales(v_page, p, h));
        ksc[slot] = quantize_q8(ks, hd, static_cast<int8_t*>(k_page) + k_at, pt);
        vsc[slot] = quantize_q8(vs, hd, static_cast<int8_t*>(v_page) + v_at, 1);
      } else if (p.kv_type == KvType::kF32) {
        float* kd = static_cast<float*>(k_page) + k_at;
        for (int d = 0; d < hd; ++d) kd[static_cast<size_t>(d) * pt] = ks[d];
        std::memcpy(static_cast<float*>(v_page) + v_at, vs, hd * sizeof(float));
      } else {
        uint16_t* kd = static_cast<uint16_t*>(k_page) + k_at;
        uint16_t* vd = static_cast<uint16_t*>(v_page) + v_at;
        int d = 0;
#if defined(__F16C__)
        // vcvtps2ph rounds to nearest even as fp32_to_fp16 does (NaNs quieted the same way).
        alignas(16) uint16_t kh[8];
        for (; d + 8 <= hd; d += 8) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(vd + d),
                           _mm256_cvtps_ph(_mm256_loadu_ps(vs + d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
          _mm_store_si128(reinterpret_cast<__m128i*>(kh),
                          _mm256_cvtps_ph(_mm256_loadu_ps(ks + d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
          for (int e = 0; e < 8; ++e) kd[static_cast<size_t>(d + e) * pt] = kh[e];
        }
#endif
        for (; d < hd; ++d) {
          kd[static_cast<size_t>(d) * pt] = fp32_to_fp16(ks[d]);
          vd[d] = fp32_to_fp16(vs[d]);
        }
      }
    }
  }
}

void chunk_mass(ThreadPool& pool, const AttentionParams& p, const float* q, int32_t pos,
                std::span<const KvPageRef> pages, int chunk_tokens, int64_t n_chunks, float* mass) {
  check_params(p);
  check_chunk_mass(p, pos, chunk_tokens, n_chunks);
  const int d = p.head_dim, rep = p.n_heads / p.n_kv_heads, pt = p.page_tokens;
  std::fill_n(mass, static_cast<size_t>(p.n_heads) * n_chunks, 0.0f);
  // One task per kv head: each page's keys are decoded once for the head group.
  pool.run(p.n_kv_heads, [&](int64_t g, int) {
    std::vector<float> keys(static_cast<size_t>(d) * pt);
    std::vector<float> dots(static_cast<size_t>(rep) * pages.size() * pt, -INFINITY);
    for (size_t i = 0; i < pages.size(); ++i) {
      const KvPageRef& pg = pages[i];
      const int vis = static_cast<int>(std::clamp<int64_t>(int64_t{pos} - pg.pos0 + 1, 0, pg.n_tokens));
      if (vis == 0) continue;
      for (int c = 0; c < d; ++c) k_row_to_f32(pg.k, p, static_cast<int>(g), c, vis, keys.data() + static_cast<size_t>(c) * pt);
      for (int r = 0; r < rep; ++r) {
        const float* qh = q + static_cast<size_t>(g * rep + r) * d;
        float* dot = dots.data() + (static_cast<size_t>(r) * pages.size() + i) * pt;
        std::fill_n(dot, vis, 0.0f);
        for (int c = 0; c < d; ++c) {
          const float qc = qh[c];
          const float* kr = keys.data() + static_cast<size_t>(c) * pt;
          for (int j = 0; j < vis; ++j) dot[j] += qc * kr[j];
        }
        for (int j = 0; j < vis; ++j) dot[j] *= p.scale;
      }
    }
    std::vector<double> chunk(static_cast<size_t>(pt / chunk_tokens));
    for (int r = 0; r < rep; ++r) {
      const float* dot = dots.data() + static_cast<size_t>(r) * pages.size() * pt;
      double mx = -INFINITY;
      for (size_t k = 0; k < pages.size() * pt; ++k) mx = std::max(mx, static_cast<double>(dot[k]));
      if (!(mx > -INFINITY)) continue;  // no visible key
      double sum = 0.0;
      for (size_t k = 0; k < pages.size() * pt; ++k)
        if (dot[k] > -INFINITY) sum += std::exp(dot[k] - mx);
      float* out = mass + static_cast<size_t>(g * rep + r) * n_chunks;
      for (size_t i = 0; i < pages.size(); ++i) {
        std::fill(chunk.begin(), chunk.end(), 0.0);
        for (int j = 0; j < pt; ++j)
          if (dot[i * pt + j] > -INFINITY) chunk[j / chunk_tokens] += std::exp(dot[i * pt + j] - mx);
        for (size_t c = 0; c < chunk.size(); ++c)
          if (chunk[c] > 0.0) out[pages[i].pos0 / chunk_tokens + static_cast<int64_t>(c)] += static_cast<float>(chunk[c] / sum);
      }
    }
  });
}

void attention_ref(const AttentionParams& p, const float* q, const int32_t* pos, int64_t m,
                   std::span<const KvPageRef> pages, float* out) {
  check_params(p);
  const int d = p.head_dim;
  const int rep = p.n_heads / p.n_kv_heads;
  for (int64_t i = 0; i < m; ++i)
    for (int h = 0; h < p.n_heads; ++h) {
      const float* qh = q + (i * p.n_heads + h) * d;
      const int g = h / rep;
      std::vector<double> scores;
      std::vector<std::pair<const KvPageRef*, int>> keys;
      for (const auto& pg : pages)
        for (int j = 0; j < pg.n_tokens && pg.pos0 + j <= pos[i]; ++j) {
          double s = 0.0;
          for (int c = 0; c < d; ++c)
            s += static_cast<double>(qh[c]) * kv_load_k(pg.k, p, g, c, j);
          scores.push_back(s * p.scale);
          keys.emplace_back(&pg, j);
        }
      double mx = -INFINITY;
      for (double s : scores) mx = std::max(mx, s);
      std::vector<double> acc(d, 0.0);
      double sum = 0.0;
      for (size_t k = 0; k < scores.size(); ++k) {
        const double e = std::exp(scores[k] - mx);
        sum += e;
        for (int c = 0; c < d; ++c)
          acc[c] += e * kv_load_v(keys[k].first->v, p, g, keys[k].second, c);
      }
      float* o = out + (i * p.n_heads + h) * d;
      for (int c = 0; c < d; ++c) o[c] = sum > 0.0 ? static_cast<float>(acc[c] / sum) : 0.0f;
    }
}

}  // namespace flashmem::cpu

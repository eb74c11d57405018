#include "ops/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cpu/elementwise.h"
#include "ops/cpu/matmul.h"

#include "core/simd.h"

namespace flashmem::cpu {

namespace {

// Above this many queries the gathered-sgemm schedule wins over split-and-merge.
constexpr int64_t kDecodeMaxQueries = 4;

// Converts n KV values starting at `src` (element index `at`) to f32.
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
#endif
  for (; i < n; ++i) dst[i] = fp16_to_fp32(h[i]);
}

float dot(const float* a, const float* b, int n) {
#if defined(__AVX512F__)
  if (n % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16)
      acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy(float a, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

void scale(float* y, float a, int n) {
  for (int i = 0; i < n; ++i) y[i] *= a;
}

void check_params(const AttentionParams& p) {
  FM_ICHECK(p.n_heads > 0 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0,
            "bad head counts ", p.n_heads, "/", p.n_kv_heads);
  FM_ICHECK(p.head_dim > 0 && p.head_stride >= p.head_dim, "bad head layout");
}

// ---- decode: split pages into ranges, online softmax per range, merge --------------------

void attention_decode(ThreadPool& pool, const AttentionParams& p, const float* q,
                      const int32_t* pos, int64_t m, std::span<const KvPageRef> pages, float* out) {
  const int d = p.head_dim;
  const int rep = p.n_heads / p.n_kv_heads;
  const int64_t n_pages = static_cast<int64_t>(pages.size());
  // Enough ranges to keep every thread busy, never fewer than one page each.
  const int64_t want = std::max<int64_t>(1, (4 * pool.size() + p.n_kv_heads - 1) / p.n_kv_heads);
  const int64_t n_splits = std::max<int64_t>(1, std::min(n_pages, want));
  const int64_t per = (n_pages + n_splits - 1) / std::max<int64_t>(1, n_splits);
  const int64_t states_per_task = m * rep;
  // Partial states: [kv_head][split][query][rep] → (m, l, o[d]).
  const int64_t n_states = p.n_kv_heads * n_splits * states_per_task;
  std::vector<float> st_m(n_states, -INFINITY), st_l(n_states, 0.0f);
  std::vector<float> st_o(static_cast<size_t>(n_states) * d, 0.0f);

  int64_t max_tokens = 0;
  for (const auto& pg : pages) max_tokens = std::max<int64_t>(max_tokens, pg.n_tokens);

  pool.run(p.n_kv_heads * n_splits, [&](int64_t task, int) {
    const int g = static_cast<int>(task / n_splits);
    const int64_t split = task % n_splits;
    const int64_t pg0 = split * per, pg1 = std::min(n_pages, pg0 + per);
    thread_local std::vector<float> kbuf, vbuf, sbuf;
    kbuf.resize(max_tokens * d);
    vbuf.resize(max_tokens * d);
    sbuf.resize(max_tokens);
    const int64_t base = task * states_per_task;
    for (int64_t pi = pg0; pi < pg1; ++pi) {
      const KvPageRef& pg = pages[pi];
      const int64_t off = static_cast<int64_t>(g) * p.head_stride;
      kv_to_f32(pg.k, p.kv_type, off, static_cast<int64_t>(pg.n_tokens) * d, kbuf.data());
      kv_to_f32(pg.v, p.kv_type, off, static_cast<int64_t>(pg.n_tokens) * d, vbuf.data());
      for (int64_t i = 0; i < m; ++i) {
        const int64_t n_vis = std::clamp<int64_t>(pos[i] - pg.pos0 + 1, 0, pg.n_tokens);
        if (n_vis == 0) continue;
        for (int r = 0; r < rep; ++r) {
          const int h = g * rep + r;
          const float* qh = q + (i * p.n_heads + h) * d;
          float smax = -INFINITY;
          for (int64_t j = 0; j < n_vis; ++j) {
            sbuf[j] = p.scale * dot(qh, kbuf.data() + j * d, d);
            smax = std::max(smax, sbuf[j]);
          }
          const int64_t s = base + i * rep + r;
          float* o = st_o.data() + s * d;
          const float new_m = std::max(st_m[s], smax);
          const float corr = std::exp(st_m[s] - new_m);  // exp(−inf) = 0 on the first page
          if (corr != 1.0f) {
            scale(o, corr, d);
            st_l[s] *= corr;
          }
          float l = 0.0f;
          for (int64_t j = 0; j < n_vis; ++j) {
            const float e = std::exp(sbuf[j] - new_m);
            l += e;
            axpy(e, vbuf.data() + j * d, o, d);
          }
          st_l[s] += l;
          st_m[s] = new_m;
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
      if (acc.l > 0.0f) scale(dst, 1.0f / acc.l, d);
    }
}

// ---- prefill: gather each kv head into contiguous f32, then sgemm per query block ---------

void attention_prefill(ThreadPool& pool, const AttentionParams& p, const float* q,
                       const int32_t* pos, int64_t m, std::span<const KvPageRef> pages,
                       float* out) {
  const int d = p.head_dim;
  const int rep = p.n_heads / p.n_kv_heads;
  int64_t total = 0;
  for (const auto& pg : pages) total += pg.n_tokens;
  std::vector<int32_t> key_pos(total);
  std::vector<float> kall(static_cast<size_t>(p.n_kv_heads) * total * d);
  std::vector<float> vall(kall.size());
  {
    int64_t t = 0;
    for (const auto& pg : pages)
      for (int j = 0; j < pg.n_tokens; ++j) key_pos[t++] = pg.pos0 + j;
  }
  pool.run(p.n_kv_heads, [&](int64_t g, int) {
    int64_t t = 0;
    for (const auto& pg : pages) {
      const int64_t off = g * p.head_stride;
      kv_to_f32(pg.k, p.kv_type, off, int64_t{pg.n_tokens} * d, kall.data() + (g * total + t) * d);
      kv_to_f32(pg.v, p.kv_type, off, int64_t{pg.n_tokens} * d, vall.data() + (g * total + t) * d);
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
    thread_local std::vector<float> sbuf, obuf;
    sbuf.resize(mb * std::max<int64_t>(1, n_keys));
    obuf.resize(mb * d);
    if (n_keys == 0) {
      for (int64_t i = 0; i < mb; ++i) std::fill_n(out + ((i0 + i) * p.n_heads + h) * d, d, 0.0f);
      return;
    }
    const float* kg = kall.data() + g * total * d;
    const float* vg = vall.data() + g * total * d;
    sgemm_nt(mb, n_keys, d, p.scale, q + (i0 * p.n_heads + h) * d, int64_t{p.n_heads} * d, kg, d,
             0.0f, sbuf.data(), n_keys);
    for (int64_t i = 0; i < mb; ++i) {
      float* row = sbuf.data() + i * n_keys;
      const int64_t vis = std::upper_bound(key_pos.begin(), key_pos.begin() + n_keys, pos[i0 + i]) -
                          key_pos.begin();
      if (vis == 0) {
        std::fill(row, row + n_keys, 0.0f);
        continue;
      }
      softmax(row, vis);
      std::fill(row + vis, row + n_keys, 0.0f);
    }
    sgemm_nn(mb, d, n_keys, sbuf.data(), n_keys, vg, d, 0.0f, obuf.data(), d);
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
               int64_t m, std::span<const KvPageRef> pages, float* out) {
  check_params(p);
  if (m <= kDecodeMaxQueries) attention_decode(pool, p, q, pos, m, pages, out);
  else attention_prefill(pool, p, q, pos, m, pages, out);
}

void attention_ref(const AttentionParams& p, const float* q, const int32_t* pos, int64_t m,
                   std::span<const KvPageRef> pages, float* out) {
  check_params(p);
  const int d = p.head_dim;
  const int rep = p.n_heads / p.n_kv_heads;
  std::vector<float> k(d), v(d);
  for (int64_t i = 0; i < m; ++i)
    for (int h = 0; h < p.n_heads; ++h) {
      const float* qh = q + (i * p.n_heads + h) * d;
      const int64_t off = static_cast<int64_t>(h / rep) * p.head_stride;
      std::vector<double> scores;
      std::vector<std::vector<float>> vals;
      for (const auto& pg : pages)
        for (int j = 0; j < pg.n_tokens && pg.pos0 + j <= pos[i]; ++j) {
          kv_to_f32(pg.k, p.kv_type, off + int64_t{j} * d, d, k.data());
          kv_to_f32(pg.v, p.kv_type, off + int64_t{j} * d, d, v.data());
          double s = 0.0;
          for (int c = 0; c < d; ++c) s += static_cast<double>(qh[c]) * k[c];
          scores.push_back(s * p.scale);
          vals.push_back(v);
        }
      double mx = -INFINITY;
      for (double s : scores) mx = std::max(mx, s);
      std::vector<double> acc(d, 0.0);
      double sum = 0.0;
      for (size_t j = 0; j < scores.size(); ++j) {
        const double e = std::exp(scores[j] - mx);
        sum += e;
        for (int c = 0; c < d; ++c) acc[c] += e * vals[j][c];
      }
      float* o = out + (i * p.n_heads + h) * d;
      for (int c = 0; c < d; ++c) o[c] = sum > 0.0 ? static_cast<float>(acc[c] / sum) : 0.0f;
    }
}

}  // namespace flashmem::cpu

// Prefill attention on tensor cores: the flash-attention tiling with f16 MMA (mma.sync
// m16n8k16, f32 accumulation) over f16 KV pages. A block takes 64 query rows of one head (16 a
// warp); key tiles of up to 64 tokens of one page go through shared memory — K as [key][dim],
// V as [dim][key], so each MMA operand pair is one 32-bit load — and every warp computes its
// 16 × 64 scores, folds them into its rows' running max and sum in registers, and multiplies
// the probabilities (f16) by V. Queries are rounded to f16 after the softmax scale; products
// and sums stay f32. Rows at any positions (pos), causal by position.
#include <cuda_fp16.h>

#include <cstdint>

#include "ops/cuda/attention.cuh"
#include "ops/cuda/mma.cuh"

namespace flashmem::cuda {

namespace {

constexpr int kRows = 64;   // query rows per block
constexpr int kKeys = 64;   // keys per tile
constexpr int kWarpsMma = kRows / 16;

template <int HD>
__global__ void __launch_bounds__(32 * kWarpsMma)
attention_mma_kernel(DevAttention p, const float* q, const int32_t* pos, int64_t m, const DevPage* pages,
                     int n_pages, float* out, float* lse) {
  constexpr int KS = HD + 8;     // padded row of Ks (halves)
  constexpr int VS = kKeys + 8;  // padded row of Vt
  constexpr int KC = HD / 16;    // k-chunks of QKᵀ
  constexpr int NT = HD / 8;     // n-tiles of PV
  __shared__ __align__(16) __half ks[kKeys * KS];
  __shared__ __align__(16) __half vt[HD * VS];
  __shared__ int32_t block_max_pos;
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int h = blockIdx.y;
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int64_t head_off = static_cast<int64_t>(kvh) * p.head_stride;
  const int pt = p.page_tokens;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows + wid * 16;  // this warp's first row
  // The warp's rows g and g + 8: positions (INT32_MIN past m: nothing visible).
  const int64_t ra = r0 + g, rb = r0 + g + 8;
  const int32_t pa = ra < m ? pos[ra] : INT32_MIN, pb = rb < m ? pos[rb] : INT32_MIN;
  if (threadIdx.x == 0) block_max_pos = INT32_MIN;
  __syncthreads();
  {
    int32_t mx = max(pa, pb);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) atomicMax(&block_max_pos, mx);
  }
  // Q fragments (scaled, f16): for k-chunk kc, rows g / g + 8, dims kc·16 + 2t (+1) and + 8.
  uint32_t qa[KC][4];
  {
    const float* qa_row = ra < m ? q + (ra * p.n_heads + h) * HD : nullptr;
    const float* qb_row = rb < m ? q + (rb * p.n_heads + h) * HD : nullptr;
    auto ld = [&](const float* row, int c) { return row ? row[c] * p.scale : 0.0f; };
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
      const int c = kc * 16 + 2 * t;
      qa[kc][0] = pack_half2(ld(qa_row, c), ld(qa_row, c + 1));
      qa[kc][1] = pack_half2(ld(qb_row, c), ld(qb_row, c + 1));
      qa[kc][2] = pack_half2(ld(qa_row, c + 8), ld(qa_row, c + 9));
      qa[kc][3] = pack_half2(ld(qb_row, c + 8), ld(qb_row, c + 9));
    }
  }
  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float mx_a = -INFINITY, mx_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
  __syncthreads();
  const int32_t max_pos = block_max_pos;
  for (int pi = 0; pi < n_pages; ++pi) {
    const DevPage pg = pages[pi];
    const int64_t reach = static_cast<int64_t>(max_pos) - pg.pos0 + 1;
    const int vis = static_cast<int>(reach < pg.n_tokens ? reach : pg.n_tokens);  // block-uniform
    for (int j0 = 0; j0 < vis; j0 += kKeys) {
      const int nk = min(kKeys, vis - j0);
      __syncthreads();  // the previous tile is no longer read
      const __half* kg = static_cast<const __half*>(pg.k) + head_off;
      const __half* vg = static_cast<const __half*>(pg.v) + head_off;
      if (pt % 8 == 0 && ((reinterpret_cast<uintptr_t>(kg) | reinterpret_cast<uintptr_t>(vg)) & 15) == 0) {
        // 16-byte loads, all in flight before the transposing stores: 8 keys of one dim of K,
        // 8 dims of one key of V. Vectors start inside the page (pt and j0 are multiples of 8);
        // keys past nk are stored as zeros.
        const int kv_vecs = (min(kKeys, pt - j0) + 7) / 8;  // K vectors per dim
        constexpr int VV = HD / 8;                            // V vectors per key
#pragma unroll 4
        for (int idx = threadIdx.x; idx < HD * kv_vecs; idx += blockDim.x) {
          const int c = idx / kv_vecs, v = idx % kv_vecs;
          const int4 raw = *reinterpret_cast<const int4*>(kg + static_cast<int64_t>(c) * pt + j0 + 8 * v);
          const __half* e = reinterpret_cast<const __half*>(&raw);
#pragma unroll
          for (int u = 0; u < 8; ++u) ks[(8 * v + u) * KS + c] = 8 * v + u < nk ? e[u] : __float2half(0.0f);
        }
        for (int idx = threadIdx.x; idx < HD * (kKeys - 8 * kv_vecs); idx += blockDim.x) {
          const int c = idx / (kKeys - 8 * kv_vecs), k = 8 * kv_vecs + idx % (kKeys - 8 * kv_vecs);
          ks[k * KS + c] = __float2half(0.0f);  // past the page
        }
#pragma unroll 4
        for (int idx = threadIdx.x; idx < kKeys * VV; idx += blockDim.x) {
          const int k = idx / VV, v = idx % VV;
          int4 raw = make_int4(0, 0, 0, 0);
          if (k < nk) raw = *reinterpret_cast<const int4*>(vg + static_cast<int64_t>(j0 + k) * HD + 8 * v);
          const __half* e = reinterpret_cast<const __half*>(&raw);
#pragma unroll
          for (int u = 0; u < 8; ++u) vt[(8 * v + u) * VS + k] = e[u];
        }
      } else {
        for (int idx = threadIdx.x; idx < HD * kKeys; idx += blockDim.x) {
          const int c = idx / kKeys, k = idx % kKeys;  // K is dim-major: k runs along memory
          ks[k * KS + c] = k < nk ? kg[static_cast<int64_t>(c) * pt + j0 + k] : __float2half(0.0f);
        }
        for (int idx = threadIdx.x; idx < HD * kKeys; idx += blockDim.x) {
          const int k = idx / HD, c = idx % HD;  // V is token-major: c runs along memory
          vt[c * VS + k] = k < nk ? vg[static_cast<int64_t>(j0 + k) * HD + c] : __float2half(0.0f);
        }
      }
      __syncthreads();
      // Scores: 8 n-tiles of 8 keys.
      float s[kKeys / 8][4];
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        const __half* krow = ks + (n * 8 + g) * KS + 2 * t;
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + kc * 16);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + kc * 16 + 8);
          mma_f16(s[n], qa[kc][0], qa[kc][1], qa[kc][2], qa[kc][3], b0, b1);
        }
      }
      // Mask (past the page's tokens, after the row's position) and the tile's row maxima.
      const int32_t kpos0 = pg.pos0 + j0;
      float tm_a = -INFINITY, tm_b = -INFINITY;
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int k = n * 8 + 2 * t + e;
          const bool in = k < nk;
          if (!in || kpos0 + k > pa) s[n][e] = -INFINITY;
          if (!in || kpos0 + k > pb) s[n][2 + e] = -INFINITY;
          tm_a = fmaxf(tm_a, s[n][e]);
          tm_b = fmaxf(tm_b, s[n][2 + e]);
        }
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {  // the quad shares a row
        tm_a = fmaxf(tm_a, __shfl_xor_sync(0xffffffffu, tm_a, off));
        tm_b = fmaxf(tm_b, __shfl_xor_sync(0xffffffffu, tm_b, off));
      }
      const float nm_a = fmaxf(mx_a, tm_a), nm_b = fmaxf(mx_b, tm_b);
      const float cr_a = mx_a == -INFINITY ? 0.0f : expf(mx_a - nm_a);
      const float cr_b = mx_b == -INFINITY ? 0.0f : expf(mx_b - nm_b);
      mx_a = nm_a;
      mx_b = nm_b;
      float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          s[n][e] = s[n][e] == -INFINITY ? 0.0f : expf(s[n][e] - nm_a);
          s[n][2 + e] = s[n][2 + e] == -INFINITY ? 0.0f : expf(s[n][2 + e] - nm_b);
          sum_a += s[n][e];
          sum_b += s[n][2 + e];
        }
      l_a = l_a * cr_a + sum_a;  // this thread's share; the quad is summed at the end
      l_b = l_b * cr_b + sum_b;
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        o[n][0] *= cr_a;
        o[n][1] *= cr_a;
        o[n][2] *= cr_b;
        o[n][3] *= cr_b;
      }
      // O += P · V: k-chunks of 16 keys (n-tiles 2kc and 2kc + 1 of the scores).
#pragma unroll
      for (int kc = 0; kc < kKeys / 16; ++kc) {
        const uint32_t a0 = pack_half2(s[2 * kc][0], s[2 * kc][1]);
        const uint32_t a1 = pack_half2(s[2 * kc][2], s[2 * kc][3]);
        const uint32_t a2 = pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]);
        const uint32_t a3 = pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3]);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          const __half* vrow = vt + (n * 8 + g) * VS + kc * 16 + 2 * t;
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(vrow);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(vrow + 8);
          mma_f16(o[n], a0, a1, a2, a3, b0, b1);
        }
      }
    }
  }
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
  }
  // Row r's output: the accumulator entries e, e + 1 of every n-tile (0 for row g, 2 for g + 8).
  auto write_row = [&](int64_t r, int e, float l, float mx) {
    if (r >= m) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float* orow = out + (r * p.n_heads + h) * HD;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      orow[n * 8 + 2 * t] = o[n][e] * inv;
      orow[n * 8 + 2 * t + 1] = o[n][e + 1] * inv;
    }
    if (lse && t == 0) lse[r * p.n_heads + h] = l > 0.0f ? mx + logf(l) : -INFINITY;
  };
  write_row(ra, 0, l_a, mx_a);
  write_row(rb, 2, l_b, mx_b);
}

}  // namespace

bool attention_mma_supported(const DevAttention& p, int64_t m) {
  return m >= kRows && p.kv == kDevF16 && (p.head_dim == 64 || p.head_dim == 128) && p.n_kv_heads > 0 &&
         p.n_heads % p.n_kv_heads == 0 && p.head_stride == int64_t{p.page_tokens} * p.head_dim;
}

cudaError_t attention_mma(const DevAttention& p, const float* q, const int32_t* pos, int64_t m,
                          const DevPage* pages, int n_pages, float* out, float* lse, cudaStream_t s) {
  if (!attention_mma_supported(p, m)) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>((m + kRows - 1) / kRows), static_cast<unsigned>(p.n_heads));
  if (p.head_dim == 64) attention_mma_kernel<64><<<grid, 32 * kWarpsMma, 0, s>>>(p, q, pos, m, pages, n_pages, out, lse);
  else attention_mma_kernel<128><<<grid, 32 * kWarpsMma, 0, s>>>(p, q, pos, m, pages, n_pages, out, lse);
  return cudaGetLastError();
}

}  // namespace flashmem::cuda

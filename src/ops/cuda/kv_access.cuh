// flashmem/ops/cuda/kv_access.cuh — device helpers of the attention kernels (device code:
// included by the .cu files only): reading and writing one KV page's elements (KvPageRef's
// layout, ops/backend.h), and folding the partial results of attention split over key ranges.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "ops/cuda/attention.cuh"

namespace flashmem::cuda {

// Element `at` as stored (q8: before its scale).
template <int KV>
__device__ inline float kv_at(const void* base, int64_t at) {
  if constexpr (KV == kDevF16) return __half2float(static_cast<const __half*>(base)[at]);
  else if constexpr (KV == kDevQ8) return static_cast<float>(static_cast<const int8_t*>(base)[at]);
  else return static_cast<const float*>(base)[at];
}

// The scale of token j of kv head g in a K or V half-page (1 unless q8).
template <int KV>
__device__ inline float kv_scale(const DevAttention& p, const void* half, int g, int j) {
  if constexpr (KV == kDevQ8)
    return reinterpret_cast<const float*>(static_cast<const uint8_t*>(half) + p.scale_offset)
        [static_cast<int64_t>(g) * p.page_tokens + j];
  else return 1.0f;
}

// Element `at` of f16 or f32 KV storage (q8 needs its vector's scale: store_kv).
template <int KV>
__device__ inline void store_kv_elem(void* base, int64_t at, float x) {
  static_assert(KV != kDevQ8, "q8 elements are stored with their scale");
  if constexpr (KV == kDevF16) static_cast<__half*>(base)[at] = __float2half_rn(x);
  else static_cast<float*>(base)[at] = x;
}

// Stores dim c of kv head h of one token into token slot `slot` of a page: kvec and vvec are that
// head's whole f32 K and V vectors (head_dim values). q8: each caller finds the vector's max|x|
// (it is in cache after the first), with the CPU's quantize_q8 arithmetic, so both backends
// store the same bytes; the thread of dim 0 writes the scale.
template <int KV>
__device__ inline void store_kv(const DevAttention& p, void* k_page, void* v_page, int64_t slot, int h, int c,
                                const float* kvec, const float* vvec) {
  const int hd = p.head_dim;
  const int64_t k_at = h * p.head_stride + int64_t{c} * p.page_tokens + slot;
  const int64_t v_at = h * p.head_stride + slot * hd + c;
  if constexpr (KV != kDevQ8) {
    store_kv_elem<KV>(k_page, k_at, kvec[c]);
    store_kv_elem<KV>(v_page, v_at, vvec[c]);
  } else {
    int8_t* qs[2] = {static_cast<int8_t*>(k_page) + k_at, static_cast<int8_t*>(v_page) + v_at};
    void* halves[2] = {k_page, v_page};
    const float* srcs[2] = {kvec, vvec};
    for (int w = 0; w < 2; ++w) {
      const float* x = srcs[w];
      float amax = 0.0f;
      bool finite = true;
      for (int d = 0; d < hd; ++d) {
        finite = finite && isfinite(x[d]);
        amax = fmaxf(amax, fabsf(x[d]));
      }
      float q = 0.0f, scale = finite ? 0.0f : NAN;
      if (finite && amax > 0.0f) {
        const float inv = __fdiv_rn(127.0f, amax);
        q = fminf(fmaxf(rintf(__fmul_rn(x[c], inv)), -127.0f), 127.0f);
        scale = __fdiv_rn(amax, 127.0f);
      }
      *qs[w] = static_cast<int8_t>(q);
      if (c == 0)
        reinterpret_cast<float*>(static_cast<uint8_t*>(halves[w]) + p.scale_offset)[int64_t{h} * p.page_tokens + slot] = scale;
    }
  }
}

// The maximum and the sum of v over the 32 lanes of a warp (every lane gets it; xor butterfly).
__device__ inline float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// kFoldThreads threads (one block) fold the n ≤ kFoldMaxParts partial results of one (row, head):
// outputs po[c·head_dim …] (normalised) with log-sum-exps pl[c], into oh[head_dim]; returns the
// fold's log-sum-exp (−inf, and oh = 0, when no part saw a key) to every thread. The parts'
// weights are found in parallel; then each thread sums one dim over a strided subset of the parts
// (four independent loads in flight), and the subsets are added in a fixed order. The arithmetic
// depends on n and head_dim only (a row folds the same alone or in a batch).
constexpr int kFoldThreads = 128;
constexpr int kFoldMaxParts = 1024;
__device__ inline float fold_partials(const float* pl, const float* po, int n, int head_dim, float* oh) {
  __shared__ float wgt[kFoldMaxParts];
  __shared__ float red[kFoldThreads / 32];
  __shared__ float acc[kFoldThreads];
  const int t = threadIdx.x, lane = t & 31, w = t >> 5;
  constexpr int kW = kFoldThreads / 32;
  float mx = -INFINITY;
  for (int c = t; c < n; c += kFoldThreads) mx = fmaxf(mx, pl[c]);
  mx = warp_max(mx);
  if (lane == 0) red[w] = mx;
  __syncthreads();
  mx = red[0];
#pragma unroll
  for (int v = 1; v < kW; ++v) mx = fmaxf(mx, red[v]);
  __syncthreads();  // red is reused below
  if (mx == -INFINITY) {
    for (int d = t; d < head_dim; d += kFoldThreads) oh[d] = 0.0f;
    return -INFINITY;
  }
  float sum = 0.0f;
  for (int c = t; c < n; c += kFoldThreads) {
    const float e = pl[c] == -INFINITY ? 0.0f : expf(pl[c] - mx);
    wgt[c] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  if (lane == 0) red[w] = sum;
  __syncthreads();
  sum = 0.0f;
#pragma unroll
  for (int v = 0; v < kW; ++v) sum += red[v];
  const float inv = 1.0f / sum;
  // groups of threads, each a strided subset of the parts: G = kFoldThreads / head_dim (≥ 1)
  const int groups = head_dim < kFoldThreads ? kFoldThreads / head_dim : 1;
  for (int d0 = 0; d0 < head_dim; d0 += kFoldThreads / groups) {
    const int d = d0 + t % (kFoldThreads / groups), gi = t / (kFoldThreads / groups);
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (d < head_dim) {
      int c = gi;
      for (; c + 3 * groups < n; c += 4 * groups)
#pragma unroll
        for (int u = 0; u < 4; ++u)
          a[u] = fmaf(wgt[c + u * groups], po[static_cast<int64_t>(c + u * groups) * head_dim + d], a[u]);
      for (int u = 0; c < n; c += groups, ++u) a[u] = fmaf(wgt[c], po[static_cast<int64_t>(c) * head_dim + d], a[u]);
    }
    acc[t] = (a[0] + a[1]) + (a[2] + a[3]);
    __syncthreads();
    if (gi == 0 && d < head_dim) {
      float o = acc[t];
      for (int v = 1; v < groups; ++v) o += acc[t + v * (kFoldThreads / groups)];
      oh[d] = o * inv;
    }
    __syncthreads();
  }
  return mx + logf(sum);
}

}  // namespace flashmem::cuda

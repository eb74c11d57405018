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
  if constexpr (KV == kDevF16) {
    static_cast<__half*>(k_page)[k_at] = __float2half_rn(kvec[c]);
    static_cast<__half*>(v_page)[v_at] = __float2half_rn(vvec[c]);
  } else if constexpr (KV == kDevQ8) {
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
  } else {
    static_cast<float*>(k_page)[k_at] = kvec[c];
    static_cast<float*>(v_page)[v_at] = vvec[c];
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

// One warp folds the n partial results of one (row, head): outputs po[c·head_dim …] (normalised)
// with log-sum-exps pl[c], into oh[head_dim]; returns the fold's log-sum-exp (−inf, and oh = 0,
// when no part saw a key). Every lane returns it.
__device__ inline float fold_partials(const float* pl, const float* po, int n, int head_dim, int lane, float* oh) {
  float mx = -INFINITY;
  for (int c = lane; c < n; c += 32) mx = fmaxf(mx, pl[c]);
  mx = warp_max(mx);
  if (mx == -INFINITY) {
    for (int d = lane; d < head_dim; d += 32) oh[d] = 0.0f;
    return -INFINITY;
  }
  float wsum = 0.0f;
  for (int c = 0; c < n; ++c) wsum += pl[c] == -INFINITY ? 0.0f : expf(pl[c] - mx);
  const float inv = 1.0f / wsum;
  for (int d = lane; d < head_dim; d += 32) {
    float a = 0.0f;
    for (int c = 0; c < n; ++c)
      if (pl[c] != -INFINITY) a = fmaf(expf(pl[c] - mx), po[static_cast<int64_t>(c) * head_dim + d], a);
    oh[d] = a * inv;
  }
  return mx + logf(wsum);
}

}  // namespace flashmem::cuda

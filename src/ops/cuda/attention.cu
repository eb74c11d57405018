#include "ops/cuda/attention.cuh"

#include <cuda_fp16.h>

namespace flashmem::cuda {

namespace {

constexpr int kWarps = 4;  // (query, head) items per block, one warp each

template <bool F16>
__device__ inline float kv_at(const void* base, int64_t at) {
  if constexpr (F16) return __half2float(static_cast<const __half*>(base)[at]);
  else return static_cast<const float*>(base)[at];
}

// One warp per (query row i, head h). Lane j takes keys j, j + 32, ... of each page and keeps
// its own online-softmax state (max, sum, unnormalised output); the warp merges the 32 states
// at the end. K is dim-major, so the lanes' key loads for one dim are contiguous.
template <int HD, bool F16>
__global__ void attention_kernel(DevAttention p, const float* q, const int32_t* pos, int64_t m,
                                 const DevPage* pages, int n_pages, float* out, float* lse) {
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (item >= m * p.n_heads) return;
  const int64_t i = item / p.n_heads;
  const int h = static_cast<int>(item % p.n_heads);
  const int g = h / (p.n_heads / p.n_kv_heads);
  const int32_t qpos = pos[i];
  float qr[HD], acc[HD];
  const float* qh = q + item * HD;
#pragma unroll
  for (int c = 0; c < HD; ++c) {
    qr[c] = qh[c];
    acc[c] = 0.0f;
  }
  float mx = -INFINITY, l = 0.0f;
  const int pt = p.page_tokens;
  const int64_t head_off = static_cast<int64_t>(g) * p.head_stride;
  for (int pi = 0; pi < n_pages; ++pi) {
    const DevPage pg = pages[pi];
    const int vis = min(pg.n_tokens, qpos - pg.pos0 + 1);
    for (int j = lane; j < vis; j += 32) {
      float s = 0.0f;
#pragma unroll
      for (int c = 0; c < HD; ++c) s = fmaf(qr[c], kv_at<F16>(pg.k, head_off + int64_t{c} * pt + j), s);
      s *= p.scale;
      if (s > mx) {
        const float corr = expf(mx - s);  // 0 on the first key (mx = −inf)
        l *= corr;
#pragma unroll
        for (int c = 0; c < HD; ++c) acc[c] *= corr;
        mx = s;
      }
      const float e = expf(s - mx);
      l += e;
      const int64_t vo = head_off + int64_t{j} * HD;
#pragma unroll
      for (int c = 0; c < HD; ++c) acc[c] = fmaf(e, kv_at<F16>(pg.v, vo + c), acc[c]);
    }
  }
  // Merge the lanes' states.
  float gm = mx;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) gm = fmaxf(gm, __shfl_xor_sync(0xffffffffu, gm, o));
  const float w = mx == -INFINITY ? 0.0f : expf(mx - gm);
  l *= w;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
  float* oh = out + item * HD;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int c = 0; c < HD; ++c) {
    float a = acc[c] * w;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
    if (lane == (c & 31)) oh[c] = a * inv;
  }
  if (lse && lane == 0) lse[item] = l > 0.0f ? gm + logf(l) : -INFINITY;
}

// One block per row, one thread per dim.
__global__ void merge_kernel(int head_dim, float* out, float* lse, const float* out2,
                             const float* lse2) {
  const int64_t r = blockIdx.x;
  const float a = lse[r], b = lse2[r];
  __syncthreads();  // every thread has read lse[r] before thread 0 rewrites it
  if (b == -INFINITY) return;
  float* o = out + r * head_dim;
  const float* o2 = out2 + r * head_dim;
  const int c = threadIdx.x;
  if (a == -INFINITY) {
    if (c < head_dim) o[c] = o2[c];
    if (c == 0) lse[r] = b;
    return;
  }
  const float mx = fmaxf(a, b);
  const float wa = expf(a - mx), wb = expf(b - mx);
  const float inv = 1.0f / (wa + wb);
  if (c < head_dim) o[c] = (o[c] * wa + o2[c] * wb) * inv;
  if (c == 0) lse[r] = mx + logf(wa + wb);
}

// One thread per (token, kv head, dim).
template <bool F16>
__global__ void write_kv_kernel(DevAttention p, void* k_page, void* v_page, int slot0, int64_t n,
                                const float* k, const float* v) {
  const int hd = p.head_dim, nh = p.n_kv_heads;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * nh * hd) return;
  const int c = static_cast<int>(idx % hd);
  const int h = static_cast<int>((idx / hd) % nh);
  const int64_t t = idx / (int64_t{hd} * nh);
  const int64_t slot = slot0 + t;
  const int64_t k_at = h * p.head_stride + int64_t{c} * p.page_tokens + slot;
  const int64_t v_at = h * p.head_stride + slot * hd + c;
  if constexpr (F16) {
    static_cast<__half*>(k_page)[k_at] = __float2half_rn(k[idx]);
    static_cast<__half*>(v_page)[v_at] = __float2half_rn(v[idx]);
  } else {
    static_cast<float*>(k_page)[k_at] = k[idx];
    static_cast<float*>(v_page)[v_at] = v[idx];
  }
}

}  // namespace

cudaError_t attention(const DevAttention& p, const float* q, const int32_t* pos, int64_t m,
                      const DevPage* pages, int n_pages, float* out, float* lse, cudaStream_t s) {
  const int64_t items = m * p.n_heads;
  if (items <= 0) return cudaSuccess;
  if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>((items + kWarps - 1) / kWarps);
  const int threads = 32 * kWarps;
  if (p.head_dim == 64) {
    if (p.kv_f16) attention_kernel<64, true><<<blocks, threads, 0, s>>>(p, q, pos, m, pages, n_pages, out, lse);
    else attention_kernel<64, false><<<blocks, threads, 0, s>>>(p, q, pos, m, pages, n_pages, out, lse);
  } else if (p.head_dim == 128) {
    if (p.kv_f16) attention_kernel<128, true><<<blocks, threads, 0, s>>>(p, q, pos, m, pages, n_pages, out, lse);
    else attention_kernel<128, false><<<blocks, threads, 0, s>>>(p, q, pos, m, pages, n_pages, out, lse);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t merge_attention(int64_t rows, int head_dim, float* out, float* lse, const float* out2,
                            const float* lse2, cudaStream_t s) {
  if (rows <= 0) return cudaSuccess;
  if (head_dim > 1024) return cudaErrorInvalidValue;
  const int threads = (head_dim + 31) / 32 * 32;
  merge_kernel<<<static_cast<unsigned>(rows), threads, 0, s>>>(head_dim, out, lse, out2, lse2);
  return cudaGetLastError();
}

cudaError_t write_kv(const DevAttention& p, void* k_page, void* v_page, int slot0, int64_t n,
                     const float* k, const float* v, cudaStream_t s) {
  const int64_t total = n * p.n_kv_heads * p.head_dim;
  if (total <= 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
  if (p.kv_f16) write_kv_kernel<true><<<blocks, 256, 0, s>>>(p, k_page, v_page, slot0, n, k, v);
  else write_kv_kernel<false><<<blocks, 256, 0, s>>>(p, k_page, v_page, slot0, n, k, v);
  return cudaGetLastError();
}

}  // namespace flashmem::cuda

#include "ops/cuda/indexer.cuh"

namespace flashmem::cuda {

namespace {

// e4m3: sign, 4 exponent bits (bias 7), 3 mantissa bits; 0x7F/0xFF are NaN.
__device__ __forceinline__ float fp8_e4m3(uint8_t b) {
  const int e = (b >> 3) & 0xF, m = b & 0x7;
  float v;
  if (e == 0xF && m == 0x7) v = __int_as_float(0x7fc00000);
  else if (e == 0) v = ldexpf(static_cast<float>(m), -9);
  else v = ldexpf(1.0f + static_cast<float>(m) * 0.125f, e - 7);
  return (b & 0x80) ? -v : v;
}

__global__ void index_scores_kernel(int n_heads, int n_kv_heads, int head_dim, float bias,
                                    const float* __restrict__ q, const float* __restrict__ w,
                                    const uint8_t* __restrict__ keys, const float* __restrict__ scales,
                                    int64_t n, float* __restrict__ logits) {
  const int lane = threadIdx.x & 31;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (c >= n) return;
  const int rep = n_heads / n_kv_heads;
  const uint8_t* kc = keys + c * static_cast<int64_t>(n_kv_heads) * head_dim;
  float acc = 0.0f;
  for (int h = 0; h < n_heads; ++h) {
    const uint8_t* k = kc + static_cast<int64_t>(h / rep) * head_dim;
    const float* qh = q + static_cast<int64_t>(h) * head_dim;
    float dot = 0.0f;
    for (int i = lane; i < head_dim; i += 32) dot += qh[i] * fp8_e4m3(k[i]);
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    dot *= scales[c];
    acc += w[h] * fmaxf(dot, 0.0f);
  }
  if (lane == 0) logits[c] = bias + acc;
}

}  // namespace

cudaError_t index_scores(int n_heads, int n_kv_heads, int head_dim, float bias, const float* q,
                         const float* w, const uint8_t* keys, const float* scales, int64_t n,
                         float* logits, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  constexpr int kThreads = 256;  // 8 chunks per block
  const int64_t blocks = (n * 32 + kThreads - 1) / kThreads;
  index_scores_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(n_heads, n_kv_heads, head_dim, bias, q,
                                                                          w, keys, scales, n, logits);
  return cudaGetLastError();
}

}  // namespace flashmem::cuda

// flashmem/ops/cuda/norm.cuh — RMSNorm's 1/rms of one row, found by one block (device code:
// included by the .cu files only). The rms_norm kernel and the GEMV that applies the norm on the
// way in (matvec.cuh, MatvecNorm) both use it, so a row is normalised to the same bits by either.
#pragma once

#include <cstdint>

namespace flashmem::cuda {

constexpr int kNormThreads = 128;  // the block size of every caller

// 1 / sqrt(mean(x²) + eps) over x[0, n): each thread sums the squares of a strided subset in
// double, the warps fold theirs with shuffles and the warps' sums are added in order. Every
// thread of the block (kNormThreads) must call it; every thread gets the value.
__device__ inline float block_inv_rms(const float* x, int64_t n, float eps) {
  __shared__ double part[kNormThreads / 32];
  double ss = 0.0;
  for (int64_t c = threadIdx.x; c < n; c += kNormThreads) ss += static_cast<double>(x[c]) * x[c];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  double total = 0.0;
#pragma unroll
  for (int w = 0; w < kNormThreads / 32; ++w) total += part[w];
  __syncthreads();  // part may be written again by the next call
  return static_cast<float>(1.0 / sqrt(total / static_cast<double>(n) + eps));
}

}  // namespace flashmem::cuda

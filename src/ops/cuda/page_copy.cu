#include "ops/cuda/page_copy.cuh"

namespace flashmem::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // 16-byte loads in flight per thread before the stores

// Block (x, y): page y, its 16-byte vectors x·kThreads·kUnroll ... in kUnroll rounds.
__global__ void __launch_bounds__(kThreads)
copy_pages_kernel(const DevCopy* copies, int64_t first, size_t vecs) {
  const DevCopy c = copies[first + blockIdx.y];
  const int4* src = reinterpret_cast<const int4*>(c.src);
  int4* dst = reinterpret_cast<int4*>(c.dst);
  const size_t base = static_cast<size_t>(blockIdx.x) * kThreads * kUnroll + threadIdx.x;
  int4 v[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const size_t at = base + static_cast<size_t>(u) * kThreads;
    if (at < vecs) v[u] = src[at];
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const size_t at = base + static_cast<size_t>(u) * kThreads;
    if (at < vecs) dst[at] = v[u];
  }
}

}  // namespace

cudaError_t copy_pages(const DevCopy* copies, int64_t n, size_t bytes, cudaStream_t s) {
  if (!page_copy_supported(bytes)) return cudaErrorInvalidValue;
  if (n <= 0) return cudaSuccess;
  const size_t vecs = bytes / 16;
  const size_t per_block = static_cast<size_t>(kThreads) * kUnroll;
  const unsigned bx = static_cast<unsigned>((vecs + per_block - 1) / per_block);
  for (int64_t first = 0; first < n; first += 65535) {  // gridDim.y ≤ 65535
    const unsigned by = static_cast<unsigned>(n - first < 65535 ? n - first : 65535);
    copy_pages_kernel<<<dim3(bx, by), kThreads, 0, s>>>(copies, first, vecs);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace flashmem::cuda

#include "ops/cuda/elementwise.cuh"

#include "ops/cuda/norm.cuh"
#include "ops/cuda/rope.cuh"

namespace flashmem::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// One block (kNormThreads) per row.
__global__ void __launch_bounds__(kNormThreads)
rms_norm_kernel(const float* x, const float* w, int64_t n, float eps, float* y) {
  const float* xr = x + blockIdx.x * n;
  float* yr = y + blockIdx.x * n;
  const float inv = block_inv_rms(xr, n, eps);
  for (int64_t i = threadIdx.x; i < n; i += kNormThreads) yr[i] = __fmul_rn(__fmul_rn(xr[i], inv), w[i]);
}

// One thread per (row, head, rotated pair); heads [0, nq) of a row are q's, [nq, nq + nk) k's.
__global__ void rope_kernel(float* q, int nq, float* k, int nk, int64_t m, int head_dim, const int32_t* pos,
                            int n_rot, float freq_base, float freq_scale, bool neox) {
  const int half = n_rot / 2;
  const int heads = nq + nk;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * heads * half) return;
  const int i = static_cast<int>(idx % half);
  const int h = static_cast<int>((idx / half) % heads);
  const int64_t row = idx / (int64_t{half} * heads);
  float* v = h < nq ? q + (row * nq + h) * head_dim : k + (row * nk + (h - nq)) * head_dim;
  int i0, i1;
  rope_pair_dims(i, n_rot, neox, i0, i1);
  rope_rotate(pos[row], i, n_rot, freq_base, freq_scale, v[i0], v[i1]);
}

__global__ void swiglu_kernel(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]);
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] = __fadd_rn(x[i], y[i]);
}

__global__ void add_rows_kernel(float* x, const float* b, int64_t total, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) x[i] = __fadd_rn(x[i], b[i % n]);
}

}  // namespace

cudaError_t rms_norm(const float* x, const float* weight, int64_t m, int64_t n, float eps,
                     float* y, cudaStream_t s) {
  if (m <= 0) return cudaSuccess;
  rms_norm_kernel<<<static_cast<unsigned>(m), kNormThreads, 0, s>>>(x, weight, n, eps, y);
  return cudaGetLastError();
}

cudaError_t rope(float* x, int64_t m, int n_heads, int head_dim, const int32_t* pos, int n_rot,
                 float freq_base, float freq_scale, bool neox, cudaStream_t s) {
  return rope_qk(x, n_heads, nullptr, 0, m, head_dim, pos, n_rot, freq_base, freq_scale, neox, s);
}

cudaError_t rope_qk(float* q, int n_heads, float* k, int n_kv_heads, int64_t m, int head_dim, const int32_t* pos,
                    int n_rot, float freq_base, float freq_scale, bool neox, cudaStream_t s) {
  const int64_t n = m * (n_heads + n_kv_heads) * (n_rot / 2);
  if (n <= 0) return cudaSuccess;
  rope_kernel<<<blocks_for(n), kThreads, 0, s>>>(q, n_heads, k, n_kv_heads, m, head_dim, pos, n_rot, freq_base,
                                                  freq_scale, neox);
  return cudaGetLastError();
}

cudaError_t swiglu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  swiglu_kernel<<<blocks_for(n), kThreads, 0, s>>>(gate, up, n, out);
  return cudaGetLastError();
}

cudaError_t add(float* x, const float* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  add_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
  return cudaGetLastError();
}

cudaError_t add_rows(float* x, const float* b, int64_t m, int64_t n, cudaStream_t s) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  add_rows_kernel<<<blocks_for(m * n), kThreads, 0, s>>>(x, b, m * n, n);
  return cudaGetLastError();
}

}  // namespace flashmem::cuda

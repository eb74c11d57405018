// flashmem/ops/cuda/elementwise.cuh — row and element ops on the GPU (RMSNorm, RoPE, SwiGLU,
// add), with the CPU reference's arithmetic (ops/cpu/elementwise.cpp).
//
// Launchers only (no device code): included by the C++20 backend. Each returns the launch's
// error; every pointer is device memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace flashmem::cuda {

// y = x / rms(x) * weight per row of n (sum of squares in double, like the CPU).
cudaError_t rms_norm(const float* x, const float* weight, int64_t m, int64_t n, float eps,
                     float* y, cudaStream_t s);
// In-place rotary embedding of x[m × n_heads × head_dim] at positions pos[m]; angles in double.
cudaError_t rope(float* x, int64_t m, int n_heads, int head_dim, const int32_t* pos, int n_rot,
                 float freq_base, float freq_scale, bool neox, cudaStream_t s);
// rope of q[m × n_heads × head_dim] and k[m × n_kv_heads × head_dim] in one launch.
cudaError_t rope_qk(float* q, int n_heads, float* k, int n_kv_heads, int64_t m, int head_dim, const int32_t* pos,
                    int n_rot, float freq_base, float freq_scale, bool neox, cudaStream_t s);
// out = silu(gate) * up
cudaError_t swiglu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t s);
// x += y
cudaError_t add(float* x, const float* y, int64_t n, cudaStream_t s);
// x[i·n + j] += b[j] over m rows
cudaError_t add_rows(float* x, const float* b, int64_t m, int64_t n, cudaStream_t s);

}  // namespace flashmem::cuda

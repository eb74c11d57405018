// flashmem/ops/cpu/elementwise.h — row-wise and element-wise CPU ops (norms, RoPE, SwiGLU).
#pragma once

#include <cstdint>

#include "ops/backend.h"

namespace flashmem::cpu {

void rms_norm(const float* x, const float* weight, int64_t n, float eps, float* y);  // one row
void rope(float* x, int n_heads, int head_dim, int32_t pos, const RopeParams& p);   // one token
void swiglu(const float* gate, const float* up, int64_t n, float* out);
void add(float* x, const float* y, int64_t n);
// Numerically stable softmax in place over n values; returns the max used.
float softmax(float* x, int64_t n);

}  // namespace flashmem::cpu

// flashmem/ops/cpu/matvec_q8.h — decode dot products with 8-bit activations.
//
// The activation vector is quantised once per matrix product to blocks of 32 int8 values with
// one f32 scale (d = max|x| / 127, q = round(x / d)), as llama.cpp does for its CPU decode. A
// quantised weight block then meets it in integer arithmetic: 32 products summed exactly in
// int32, scaled once by d_w·d_x. Against the f32 fused kernels (matmul.h) this does about half
// the instructions per weight on AVX2; the price is the activation rounding, at most d_x / 2
// per element (the bound tests/test_ops.cpp checks), which keeps logits within ~1e-2 of float64
// (tests/model/test_model_reference.cpp). `CpuDot::kF32` keeps the exact path.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/quant.h"

namespace flashmem::cpu {

// 32 activations: x_j ≈ d · q_j; s = d · Σ q_j (for the weight formats with an offset).
struct ActQ8Block {
  float d;
  float s;
  int8_t q[32];
};
static_assert(sizeof(ActQ8Block) == 40);

// The weight types these kernels take (32-element blocks: Q4_0, Q4_1, Q8_0).
bool q8_dot_supported(GgmlType type);

// x[n] → out[n / 32]; n must be a multiple of 32. The fast path and its scalar reference
// (bit-identical: the same scale, rounding half to even).
void quantize_act_q8(const float* x, int64_t n, ActQ8Block* out);
void quantize_act_q8_ref(const float* x, int64_t n, ActQ8Block* out);

// Dot products of `rows` consecutive weight rows (row_bytes apart, nb blocks each) with one
// quantised activation vector; out[r] for each row. The fast path (AVX2 when built for it).
void dot_q8_rows(GgmlType type, const uint8_t* row0, size_t row_bytes, int rows,
                 const ActQ8Block* x, int64_t nb, float* out);
// The same, plain scalar code: the reference the fast path is tested against.
float dot_q8_ref(GgmlType type, const uint8_t* row, const ActQ8Block* x, int64_t nb);

}  // namespace flashmem::cpu

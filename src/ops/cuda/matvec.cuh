// flashmem/ops/cuda/matvec.cuh — decode matrix products on weights in their stored type.
//
// A decode step multiplies a few activation rows (one per sequence in the batch) by every weight
// matrix: memory-bound work whose cost is reading the weights once. Here each weight row is
// read once, in its GGUF block type, dequantised in registers and dotted with up to 16
// activation rows (more rows: passes of 16). One warp per output row, lanes over its 32-value
// units (core/quant.h). Fused forms save the launches and round trips the model's sequence
// would cost: Q/K/V in one launch, the residual add in the epilogue, SwiGLU's gate and up read
// together.
//
// Launchers only: included by the C++20 backend. Every pointer is device memory.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/quant.h"

namespace flashmem::cuda {

// One weight of a launch: `rows` rows of row_bytes bytes, and where its product goes
// (y[m × rows], row-major).
struct MatvecSeg {
  const void* w;
  size_t row_bytes;
  int64_t rows;
  float* y;
};

enum MatvecEpilogue : int {
  kMvStore = 0,   // y_k = x · W_kᵀ for each of 1..3 weights
  kMvAdd = 1,     // y += x · Wᵀ (one weight)
  kMvSwiglu = 2,  // segs[0].y = silu(x · gateᵀ) ⊙ (x · upᵀ); segs = {gate, up}, equal rows
};

// An RMSNorm applied to one row x on the way in (x is then the norm's input; m = 1): every block
// finds the row's 1/rms itself (norm.cuh, the rms_norm kernel's arithmetic), the product reads
// fmul(fmul(x, inv), w) in place of x, and the first block writes those values to xn, so the
// normalised row exists after the launch, the same bits as rms_norm writes. w == nullptr: no norm.
struct MatvecNorm {
  const float* w = nullptr;
  float eps = 0.0f;
  float* xn = nullptr;
};

// Up to this many rows share one pass over the weights.
constexpr int kMatvecRowsPerPass = 16;

// Whether matvec takes weights of this type and width (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0:
// cols % 32 == 0; Q4_K, Q6_K: cols % 256 == 0; F32 rows 16-byte aligned).
bool matvec_supported(GgmlType type, int64_t cols, size_t row_bytes);
// x [m × cols]; all weights of `type` and `cols` columns, each starting 16-byte aligned.
// cudaErrorInvalidValue when the combination is not supported (then nothing ran).
// norm: see MatvecNorm (kMvStore and kMvSwiglu, m = 1 only).
cudaError_t matvec(GgmlType type, const MatvecSeg* segs, int n_segs, int epilogue, const float* x,
                   int64_t m, int64_t cols, cudaStream_t s, const MatvecNorm& norm = {});

}  // namespace flashmem::cuda

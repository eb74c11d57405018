// flashmem/ops/cuda/matmul_mma.cuh — products of a few to a few dozen activation rows with the
// weights in their stored type, on tensor cores.
//
// A batch's decode step multiplies one activation row per sequence by every weight matrix. The
// GEMV (matvec.cuh) reads each weight once but re-reads the activations for every weight row, so
// at 8–16 rows it is bound by those re-reads, not by the weights. Here a block takes 16 weight
// rows as the A operand of m16n8k16 bf16 MMAs and the activation rows as B (8 per n-tile): each
// activation value read serves 16 weight rows. The block's 4 warps split the columns and meet
// in shared memory in a fixed order.
//
// Accuracy: block-quantised weights enter the MMA as their small integers (exact in bf16) and
// their f16 scale multiplies the f32 partial sum of each 32-column block; bf16 weights enter as
// they are. Each activation value is split into three bf16 terms (hi + mid + lo, 24 significant
// bits), so the products carry about f32's precision, not bf16's.
//
// Batch invariance: a weight row's product with an activation row takes the same additions in
// the same order whatever the other rows are and however many there are (an MMA's output column
// depends on its own B column alone), so a sequence's logits do not depend on its batch within
// this path. The GEMV path gives other bits: which one a row count takes is the backend's choice.
//
// Launchers only: included by the C++20 backend. Every pointer is device memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/quant.h"
#include "ops/cuda/matvec.cuh"

namespace flashmem::cuda {

// Activation rows one pass takes (more rows: passes over the weights again).
constexpr int kMmaRowsPerPass = 64;

// Whether matmul_mma takes this weight: Q4_0, Q4_1, Q8_0 or BF16, cols % 32 == 0, rows % 16 == 0.
bool matmul_mma_supported(GgmlType type, int64_t rows, int64_t cols);

// As matvec (matvec.cuh): segs of one type and width, epilogue kMvStore (1–3 weights), kMvAdd
// (one) or kMvSwiglu ({gate, up}); x [m × cols]; no norm. cudaErrorInvalidValue when a weight is
// not supported (then nothing ran).
cudaError_t matmul_mma(GgmlType type, const MatvecSeg* segs, int n_segs, int epilogue, const float* x, int64_t m,
                       int64_t cols, cudaStream_t s);

}  // namespace flashmem::cuda

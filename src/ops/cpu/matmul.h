// flashmem/ops/cpu/matmul.h — CPU matrix products over quantised weights.
//
// Decode (m small): fused dot products that dequantise a weight row on the fly, against the
// activations quantised to 8 bits (CpuDot::kQ8, matvec_q8.h; Q4_0/Q4_1/Q8_0 weights) or in
// f32 (CpuDot::kF32 and every other type: results stay close to float64 math).
// Prefill (m large): weight rows are dequantised in tiles and multiplied with sgemm
// (OpenBLAS when built with it, else flashmem's tiled loop).
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "ops/backend.h"

namespace flashmem {
class ThreadPool;
namespace cpu {

// Dot product of one stored weight row (cols values) with x. Plain reference and fast path.
float dot_row_ref(GgmlType type, const uint8_t* row, const float* x, int64_t cols);
float dot_row(GgmlType type, const uint8_t* row, const float* x, int64_t cols);
// The same for four consecutive rows (row_bytes apart), sharing the activation loads.
void dot4_rows(GgmlType type, const uint8_t* row0, size_t row_bytes, const float* x, int64_t cols,
               float* out);

// Products of up to this many activation rows (decode, and batches of decodes) take the fused
// dot products, every row computed as if it were alone; more rows take the tiled GEMM.
inline constexpr int64_t kDecodeMaxRows = 16;

// y[m × w.rows] = x[m × w.cols] · wᵀ, parallel over output rows.
void matmul(ThreadPool& pool, const WeightMatrix& w, const float* x, int64_t m, float* y,
            CpuDot dot = CpuDot::kF32);
// Several products sharing x, as one parallel region when m is small (decode).
void matmul_n(ThreadPool& pool, std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
              std::span<float* const> ys, CpuDot dot = CpuDot::kF32);
// Decode products of matrices of equal shape, by row range: each task computes rows [r0, r1) of
// every ws[k] (as matmul_n computes them, the same bits), then calls then(r0, r1) on that range
// while it is in cache, so an elementwise step after the products (SwiGLU, a residual add) runs
// in the parallel region, not after it. m ≤ kDecodeMaxRows.
void matmul_ranges(ThreadPool& pool, std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
                   std::span<float* const> ys, CpuDot dot, const std::function<void(int64_t r0, int64_t r1)>& then);
// Plain single-threaded reference of the same product (dequantise, then double-free f32 loops).
void matmul_ref(const WeightMatrix& w, const float* x, int64_t m, float* y);

// f32 C[m × n] = alpha · A[m × k] · B[n × k]ᵀ (+ beta · C), leading dims given. Uses BLAS
// when available.
void sgemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
              const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
// f32 C[m × n] = A[m × k] · B[k × n] (+ beta · C).
void sgemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
              int64_t ldb, float beta, float* c, int64_t ldc);

bool have_blas();

}  // namespace cpu
}  // namespace flashmem

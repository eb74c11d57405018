// flashmem/ops/cuda/dequant.cuh — GGML block dequantisation on the GPU.
//
// Bit-for-bit the CPU scalar reference (checked on the device by scripts/gpu-check). The CUDA
// backend keeps weights in their stored type: this makes the f32 tiles its prefill GEMM reads
// and the embedding rows of a batch's tokens.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/quant.h"

namespace flashmem::cuda {

// Whether rows of `cols` values of this type can be dequantised here.
bool dequant_supported(GgmlType type, int64_t cols);
// dst[rows × cols] (f32, row-major) = dequantised src rows of `row_bytes` bytes each.
// Supports F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K. Returns cudaErrorInvalidValue for other types or
// a cols that is not a multiple of the type's block size; launch errors otherwise.
cudaError_t dequantize_rows(GgmlType type, const void* src, size_t row_bytes, float* dst,
                            int64_t rows, int64_t cols, cudaStream_t stream);
// dst[m × cols] = dequantised rows ids[0 .. m) of src (ids in device memory, already checked).
cudaError_t dequantize_rows_by_id(GgmlType type, const void* src, size_t row_bytes, const int32_t* ids,
                                  int64_t m, int64_t cols, float* dst, cudaStream_t stream);

}  // namespace flashmem::cuda

// flashmem/ops/cuda/dequant.cuh — GGML block dequantisation on the GPU.
//
// The first CUDA op family: it proves the CUDA build path (compiled in CI without a GPU) and is
// checked bit-for-bit against the CPU scalar reference on the device (scripts/gpu-check).
// The CUDA backend proper (matmul, attention, the LSA recall gather) builds on it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/quant.h"

namespace flashmem::cuda {

// dst[rows × cols] (f32, row-major) = dequantised src rows of `row_bytes` bytes each.
// Supports F32, F16, BF16, Q8_0, Q4_0, Q4_1. Returns cudaErrorInvalidValue for other types or
// a cols that is not a multiple of the type's block size; launch errors otherwise.
cudaError_t dequantize_rows(GgmlType type, const void* src, size_t row_bytes, float* dst,
                            int64_t rows, int64_t cols, cudaStream_t stream);

}  // namespace flashmem::cuda

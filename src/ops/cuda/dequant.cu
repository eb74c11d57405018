#include "ops/cuda/dequant.cuh"

#include "ops/cuda/quant_blocks.cuh"

namespace flashmem::cuda {

namespace {

// One thread per output value, with the CPU reference's rounding (dequant_value).
__global__ void dequant_kernel(GgmlType type, const uint8_t* src, size_t row_bytes, float* dst,
                               int64_t rows, int64_t cols) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * cols) return;
  const int64_t r = idx / cols, c = idx % cols;
  dst[idx] = dequant_value(type, src + r * row_bytes, c);
}

// The same for rows ids[0 .. m).
__global__ void dequant_ids_kernel(GgmlType type, const uint8_t* src, size_t row_bytes,
                                   const int32_t* ids, float* dst, int64_t m, int64_t cols) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * cols) return;
  const int64_t i = idx / cols, c = idx % cols;
  dst[idx] = dequant_value(type, src + static_cast<int64_t>(ids[i]) * row_bytes, c);
}

}  // namespace

bool dequant_supported(GgmlType type, int64_t cols) {
  switch (type) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16:
      return true;
    case GgmlType::Q8_0: case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0:
      return cols % 32 == 0;
    case GgmlType::Q4_K: case GgmlType::Q6_K:
      return cols % 256 == 0;
    default:
      return false;
  }
}

namespace {

constexpr int kThreads = 256;

}  // namespace

cudaError_t dequantize_rows(GgmlType type, const void* src, size_t row_bytes, float* dst,
                            int64_t rows, int64_t cols, cudaStream_t stream) {
  if (!dequant_supported(type, cols)) return cudaErrorInvalidValue;
  if (rows <= 0 || cols <= 0) return rows == 0 || cols == 0 ? cudaSuccess : cudaErrorInvalidValue;
  const int64_t blocks = (rows * cols + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  dequant_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      type, static_cast<const uint8_t*>(src), row_bytes, dst, rows, cols);
  return cudaGetLastError();
}

cudaError_t dequantize_rows_by_id(GgmlType type, const void* src, size_t row_bytes, const int32_t* ids,
                                  int64_t m, int64_t cols, float* dst, cudaStream_t stream) {
  if (!dequant_supported(type, cols)) return cudaErrorInvalidValue;
  if (m <= 0 || cols <= 0) return m == 0 || cols == 0 ? cudaSuccess : cudaErrorInvalidValue;
  const int64_t blocks = (m * cols + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  dequant_ids_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      type, static_cast<const uint8_t*>(src), row_bytes, ids, dst, m, cols);
  return cudaGetLastError();
}

}  // namespace flashmem::cuda

#include "ops/cuda/dequant.cuh"

#include <cuda_fp16.h>

namespace flashmem::cuda {

namespace {

// Like the CPU reference (and x86 F16C), NaNs come out quiet: signalling payloads get bit 22 set.
// (__half2float returns a canonical NaN, so NaNs are built from the bits here.)
__device__ inline float half_bits_to_float(uint16_t h) {
  if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0)
    return __uint_as_float((static_cast<uint32_t>(h & 0x8000u) << 16) | 0x7fc00000u |
                           (static_cast<uint32_t>(h & 0x3ffu) << 13));
  return __half2float(__ushort_as_half(h));
}

__device__ inline uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));  // blocks are byte-packed: no aligned loads
}

// One thread per output value. The products and sums use _rn intrinsics so nvcc does not fuse
// them into FMAs: the result must equal the CPU reference (which rounds each step) bit for bit.
__global__ void dequant_kernel(GgmlType type, const uint8_t* src, size_t row_bytes, float* dst,
                               int64_t rows, int64_t cols) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * cols) return;
  const int64_t r = idx / cols, c = idx % cols;
  const uint8_t* row = src + r * row_bytes;
  float v = 0.0f;
  switch (type) {
    case GgmlType::F32: v = reinterpret_cast<const float*>(row)[c]; break;
    case GgmlType::F16: v = half_bits_to_float(load_u16(row + 2 * c)); break;
    case GgmlType::BF16: v = __uint_as_float(static_cast<uint32_t>(load_u16(row + 2 * c)) << 16); break;
    case GgmlType::Q8_0: {
      const uint8_t* b = row + (c / 32) * 34;
      v = __fmul_rn(half_bits_to_float(load_u16(b)), static_cast<float>(static_cast<int8_t>(b[2 + c % 32])));
      break;
    }
    case GgmlType::Q4_0: {
      const uint8_t* b = row + (c / 32) * 18;
      const int j = c % 32;
      const int q = (j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4)) - 8;
      v = __fmul_rn(half_bits_to_float(load_u16(b)), static_cast<float>(q));
      break;
    }
    case GgmlType::Q4_1: {
      const uint8_t* b = row + (c / 32) * 20;
      const int j = c % 32;
      const int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
      v = __fadd_rn(__fmul_rn(half_bits_to_float(load_u16(b)), static_cast<float>(q)),
                    half_bits_to_float(load_u16(b + 2)));
      break;
    }
    default: break;
  }
  dst[idx] = v;
}

}  // namespace

cudaError_t dequantize_rows(GgmlType type, const void* src, size_t row_bytes, float* dst,
                            int64_t rows, int64_t cols, cudaStream_t stream) {
  switch (type) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16:
      break;
    case GgmlType::Q8_0: case GgmlType::Q4_0: case GgmlType::Q4_1:
      if (cols % 32 != 0) return cudaErrorInvalidValue;
      break;
    default:
      return cudaErrorInvalidValue;
  }
  if (rows <= 0 || cols <= 0) return rows == 0 || cols == 0 ? cudaSuccess : cudaErrorInvalidValue;
  const int64_t n = rows * cols;
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  dequant_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      type, static_cast<const uint8_t*>(src), row_bytes, dst, rows, cols);
  return cudaGetLastError();
}

}  // namespace flashmem::cuda

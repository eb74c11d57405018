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
    case GgmlType::Q5_0: {
      const uint8_t* b = row + (c / 32) * 22;
      const int j = c % 32;
      const uint32_t qh = b[2] | (b[3] << 8) | (b[4] << 16) | (static_cast<uint32_t>(b[5]) << 24);
      const int lo = j < 16 ? (b[6 + j] & 0xF) : (b[6 + j - 16] >> 4);
      const int q = (lo | static_cast<int>(((qh >> j) & 1u) << 4)) - 16;
      v = __fmul_rn(static_cast<float>(q), half_bits_to_float(load_u16(b)));
      break;
    }
    case GgmlType::Q4_K: {  // layout: see ref_q4_k in core/quant.cpp
      const uint8_t* b = row + (c / 256) * 144;
      const int e = c % 256, chunk = e / 64, within = e % 64;
      const int sub = 2 * chunk + (within >= 32 ? 1 : 0);
      const uint8_t* s = b + 4;
      int sc, mn;
      if (sub < 4) {
        sc = s[sub] & 63;
        mn = s[sub + 4] & 63;
      } else {
        sc = (s[sub + 4] & 0x0f) | ((s[sub - 4] >> 6) << 4);
        mn = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
      }
      const uint8_t qb = b[16 + 32 * chunk + within % 32];
      const int q = within < 32 ? (qb & 0x0f) : (qb >> 4);
      const float d1 = __fmul_rn(half_bits_to_float(load_u16(b)), static_cast<float>(sc));
      const float m1 = __fmul_rn(half_bits_to_float(load_u16(b + 2)), static_cast<float>(mn));
      v = __fsub_rn(__fmul_rn(d1, static_cast<float>(q)), m1);
      break;
    }
    case GgmlType::Q6_K: {  // layout: see ref_q6_k in core/quant.cpp
      const uint8_t* b = row + (c / 256) * 210;
      const int e = c % 256, h = e / 128, k = (e % 128) / 32, l = e % 32;
      const uint8_t* ql = b + 64 * h;
      const uint8_t lb = ql[l + (k & 1) * 32];
      const int lo = k < 2 ? (lb & 0x0f) : (lb >> 4);
      const int hi = (b[128 + 32 * h + l] >> (2 * k)) & 3;
      const int q = (lo | (hi << 4)) - 32;
      const float sc = static_cast<float>(static_cast<int8_t>(b[192 + 8 * h + l / 16 + 2 * k]));
      v = __fmul_rn(__fmul_rn(half_bits_to_float(load_u16(b + 208)), sc), static_cast<float>(q));
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
    case GgmlType::Q8_0: case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0:
      if (cols % 32 != 0) return cudaErrorInvalidValue;
      break;
    case GgmlType::Q4_K: case GgmlType::Q6_K:
      if (cols % 256 != 0) return cudaErrorInvalidValue;
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

// flashmem/ops/cuda/mma.cuh — tensor-core and asynchronous-copy primitives of the attention
// kernels (device code: included by the .cu files only). sm_80+.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace flashmem::cuda {

// Two floats as one f16 pair (round to nearest), the low half first.
__device__ inline uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// x ≈ hi + lo as two f16 pairs, lo holding what hi rounded away: products with an f16 operand
// then keep about 22 bits of x instead of 11.
__device__ inline void split_half2(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(x0, x1);
  const float2 back = __half22float2(h);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = pack_half2(x0 - back.x, x1 - back.y);
}

// d += a · b on tensor cores: m16n8k16, f16 operands, f32 accumulators (the PTX fragment layouts:
// a0..a3 rows g / g + 8 and k 2t / 2t + 8; b0, b1 k 2t / 2t + 8 of column g; d rows g, g + 8).
__device__ inline void mma_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                               uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Four 8 × 8 f16 matrices from shared memory, transposed: lanes 8j … 8j + 7 give the 16-byte
// rows of matrix j; lane (g, t) receives rows 2t, 2t + 1 of column g of each.
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// 16 bytes global → shared without passing through registers; with fill false nothing is read
// and the 16 bytes are zeroed (gmem must still be a valid address). Then the wait for all of a
// thread's copies.
__device__ inline void cp_async16(void* smem, const void* gmem, bool fill = true) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = fill ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(n));
}
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

}  // namespace flashmem::cuda

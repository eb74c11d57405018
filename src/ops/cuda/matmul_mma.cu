#include "ops/cuda/matmul_mma.cuh"

#include <cuda_bf16.h>

#include "ops/cuda/quant_blocks.cuh"

namespace flashmem::cuda {

namespace {

constexpr int kRows = 16;  // weight rows a block takes: the MMA's M
constexpr int kWarps = 4;  // they split the row's 32-column blocks into 4 runs

struct Segs {
  MatvecSeg s[3];
  int n;
};

// d += a · b: m16n8k16, bf16 operands, f32 accumulators (PTX fragment layouts: lane = 4g + t;
// a0..a3 rows g / g + 8 and k 2t / 2t + 8; b0, b1 k 2t / 2t + 8 of column g; d rows g, g + 8 and
// columns 2t, 2t + 1).
__device__ inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two small integers (|v| ≤ 256: exact) as a bf16 pair, the first in the low half.
__device__ inline uint32_t bf16_pair(int lo, int hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(static_cast<float>(lo), static_cast<float>(hi));
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Two activation values as three bf16 pairs: b[0] the values rounded, b[1] and b[2] what the
// terms before them left (each remainder is exact in f32), 24 significant bits together.
__device__ inline void split3(float x0, float x1, uint32_t (&b)[3]) {
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
    b[i] = *reinterpret_cast<const uint32_t*>(&h);
    const float2 back = __bfloat1622float2(h);
    x0 = __fsub_rn(x0, back.x);
    x1 = __fsub_rn(x1, back.y);
  }
}

// One row's share of a 32-column block kb for lane t of its group: the MMA k order within the
// block is permuted so that a lane reads consecutive bytes. Lane t's k slots 2t, 2t + 1, 2t + 8,
// 2t + 9 of the block's first MMA hold columns 4t … 4t + 3, those of its second MMA columns
// 16 + 4t … 16 + 4t + 3 (for Q4_0/Q4_1: the low and the high nibbles of quant bytes 4t … 4t + 3).
// The activations are read in the same order (x columns 4t … and 16 + 4t …), so the sums are the
// block's. s[step][0] holds the first two columns of the step, s[step][1] the other two.
// Block types give their scale d (and Q4_1 its min) to apply to the integer sums.
struct RowPart {
  uint32_t s[2][2];
  float d, mn;
};

template <GgmlType T>
__device__ inline RowPart load_part(const uint8_t* row, int64_t kb, int t) {
  RowPart p{};
  if constexpr (T == GgmlType::Q4_1) {  // 20-byte blocks, 4-byte aligned: d, m, 16 quant bytes
    const uint32_t* b = reinterpret_cast<const uint32_t*>(row + kb * 20);
    const uint32_t dm = __ldg(b), q = __ldg(b + 1 + t);
    p.d = half_bits_to_float(static_cast<uint16_t>(dm));
    p.mn = half_bits_to_float(static_cast<uint16_t>(dm >> 16));
    p.s[0][0] = bf16_pair(q & 0xF, (q >> 8) & 0xF);
    p.s[0][1] = bf16_pair((q >> 16) & 0xF, (q >> 24) & 0xF);
    p.s[1][0] = bf16_pair((q >> 4) & 0xF, (q >> 12) & 0xF);
    p.s[1][1] = bf16_pair((q >> 20) & 0xF, q >> 28);
  } else if constexpr (T == GgmlType::Q4_0) {  // 18-byte blocks, 2-byte aligned: d, 16 quant bytes
    const uint16_t* h = reinterpret_cast<const uint16_t*>(row + kb * 18);
    p.d = half_bits_to_float(__ldg(h));
    const uint32_t q = __ldg(h + 1 + 2 * t) | (static_cast<uint32_t>(__ldg(h + 2 + 2 * t)) << 16);
    p.s[0][0] = bf16_pair(static_cast<int>(q & 0xF) - 8, static_cast<int>((q >> 8) & 0xF) - 8);
    p.s[0][1] = bf16_pair(static_cast<int>((q >> 16) & 0xF) - 8, static_cast<int>((q >> 24) & 0xF) - 8);
    p.s[1][0] = bf16_pair(static_cast<int>((q >> 4) & 0xF) - 8, static_cast<int>((q >> 12) & 0xF) - 8);
    p.s[1][1] = bf16_pair(static_cast<int>((q >> 20) & 0xF) - 8, static_cast<int>(q >> 28) - 8);
  } else if constexpr (T == GgmlType::Q8_0) {  // 34-byte blocks, 2-byte aligned: d, 32 quant bytes
    const uint16_t* h = reinterpret_cast<const uint16_t*>(row + kb * 34);
    p.d = half_bits_to_float(__ldg(h));
#pragma unroll
    for (int step = 0; step < 2; ++step) {
      const int at = 1 + 8 * step + 2 * t;  // quant byte 16·step + 4t, in halves from the block
      const uint32_t q = __ldg(h + at) | (static_cast<uint32_t>(__ldg(h + at + 1)) << 16);
      p.s[step][0] = bf16_pair(static_cast<int8_t>(q & 0xFF), static_cast<int8_t>((q >> 8) & 0xFF));
      p.s[step][1] = bf16_pair(static_cast<int8_t>((q >> 16) & 0xFF), static_cast<int8_t>(q >> 24));
    }
  } else {  // BF16: rows of 32k values, 64-byte aligned blocks; the pairs are the stored bits
    const uint2* b = reinterpret_cast<const uint2*>(row + (kb * 32 + 4 * t) * 2);
    const uint2 u0 = __ldg(b), u1 = __ldg(b + 4);
    p.s[0][0] = u0.x, p.s[0][1] = u0.y, p.s[1][0] = u1.x, p.s[1][1] = u1.y;
    p.d = 1.0f;
  }
  return p;
}

// Block b: weight rows 16b … 16b + 15 of the concatenated segments (each segment's rows a
// multiple of 16; for SwiGLU the same rows of gate and up), against activation rows 0 … m − 1
// (m ≤ 8·NT). Warp w takes a contiguous run of the row's 32-column blocks; the four meet in
// shared memory, added in warp order.
template <GgmlType T, int NT, int EPI>
__global__ void __launch_bounds__(32 * kWarps) mma_kernel(Segs segs, const float* __restrict__ x, int m, int64_t cols) {
  constexpr int NS = EPI == kMvSwiglu ? 2 : 1;  // weight tiles a warp reads (gate and up)
  constexpr bool kScaled = T != GgmlType::BF16;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  int64_t r = static_cast<int64_t>(blockIdx.x) * kRows;
  int k = 0;
  if constexpr (EPI != kMvSwiglu)
    while (k + 1 < segs.n && r >= segs.s[k].rows) r -= segs.s[k++].rows;
  const MatvecSeg seg = segs.s[k];
  const uint8_t* rows[NS][2];
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    const MatvecSeg& sg = EPI == kMvSwiglu ? segs.s[s] : seg;
    rows[s][0] = static_cast<const uint8_t*>(sg.w) + (r + g) * sg.row_bytes;
    rows[s][1] = static_cast<const uint8_t*>(sg.w) + (r + g + 8) * sg.row_bytes;
  }
  const int64_t blocks = cols / 32, per = (blocks + kWarps - 1) / kWarps;
  const int64_t kb0 = warp * per, kb1 = kb0 + per < blocks ? kb0 + per : blocks;
  float acc[NS][NT][4];
#pragma unroll
  for (int s = 0; s < NS; ++s)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[s][n][c] = 0.0f;

  // Two blocks an iteration, so that the next block's loads are in flight during this one's MMAs.
#pragma unroll 2
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    RowPart part[NS][2];
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      part[s][0] = load_part<T>(rows[s][0], kb, t);
      part[s][1] = load_part<T>(rows[s][1], kb, t);
    }
    uint32_t a[NS][2][4];  // per step: a0 (row g), a1 (row g + 8), a2 (row g), a3 (row g + 8)
#pragma unroll
    for (int s = 0; s < NS; ++s)
#pragma unroll
      for (int step = 0; step < 2; ++step) {
        a[s][step][0] = part[s][0].s[step][0];
        a[s][step][1] = part[s][1].s[step][0];
        a[s][step][2] = part[s][0].s[step][1];
        a[s][step][3] = part[s][1].s[step][1];
      }
    const int64_t c0 = kb * 32 + 4 * t;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      if (n * 8 >= m) break;  // the same for the whole warp
      const int j = n * 8 + g;  // the activation row of this lane's B column
      float4 v0 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), v1 = v0;
      if (j < m) {
        const float* xj = x + j * cols + c0;
        v0 = __ldg(reinterpret_cast<const float4*>(xj));
        v1 = __ldg(reinterpret_cast<const float4*>(xj + 16));
      }
      uint32_t b[2][2][3];  // [step][b0 / b1][term]
      split3(v0.x, v0.y, b[0][0]);
      split3(v0.z, v0.w, b[0][1]);
      split3(v1.x, v1.y, b[1][0]);
      split3(v1.z, v1.w, b[1][1]);
      float sx0 = 0.0f, sx1 = 0.0f;  // Q4_1: Σ x over the block for the D columns 2t, 2t + 1
      if constexpr (T == GgmlType::Q4_1) {
        float sum = __fadd_rn(__fadd_rn(__fadd_rn(v0.x, v0.y), __fadd_rn(v0.z, v0.w)),
                              __fadd_rn(__fadd_rn(v1.x, v1.y), __fadd_rn(v1.z, v1.w)));
        sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 1));
        sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 2));
        sx0 = __shfl_sync(0xffffffffu, sum, 8 * t);
        sx1 = __shfl_sync(0xffffffffu, sum, 8 * t + 4);
      }
#pragma unroll
      for (int s = 0; s < NS; ++s) {
        if constexpr (kScaled) {
          float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
          for (int step = 0; step < 2; ++step)
#pragma unroll
            for (int i = 0; i < 3; ++i) mma_bf16(p, a[s][step], b[step][0][i], b[step][1][i]);
          float* o = acc[s][n];
          o[0] = fmaf(part[s][0].d, p[0], o[0]);
          o[1] = fmaf(part[s][0].d, p[1], o[1]);
          o[2] = fmaf(part[s][1].d, p[2], o[2]);
          o[3] = fmaf(part[s][1].d, p[3], o[3]);
          if constexpr (T == GgmlType::Q4_1) {
            o[0] = fmaf(part[s][0].mn, sx0, o[0]);
            o[1] = fmaf(part[s][0].mn, sx1, o[1]);
            o[2] = fmaf(part[s][1].mn, sx0, o[2]);
            o[3] = fmaf(part[s][1].mn, sx1, o[3]);
          }
        } else {
#pragma unroll
          for (int step = 0; step < 2; ++step)
#pragma unroll
            for (int i = 0; i < 3; ++i) mma_bf16(acc[s][n], a[s][step], b[step][0][i], b[step][1][i]);
        }
      }
    }
  }

  __shared__ float red[kWarps][NS][NT][4][32];
#pragma unroll
  for (int s = 0; s < NS; ++s)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) red[warp][s][n][c][lane] = acc[s][n][c];
  __syncthreads();
  for (int e = threadIdx.x; e < NT * 128; e += 32 * kWarps) {
    const int n = e / 128, c = (e / 32) % 4, ln = e % 32;
    const int j = n * 8 + 2 * (ln & 3) + (c & 1);
    if (j >= m) continue;
    const int64_t row = r + (ln >> 2) + (c >= 2 ? 8 : 0);
    float v[NS];
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      v[s] = red[0][s][n][c][ln];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) v[s] = __fadd_rn(v[s], red[w][s][n][c][ln]);
    }
    float* y = seg.y + j * seg.rows + row;
    if constexpr (EPI == kMvStore) {
      *y = v[0];
    } else if constexpr (EPI == kMvAdd) {
      *y = __fadd_rn(*y, v[0]);
    } else {
      const float gt = v[0];
      *y = __fmul_rn(__fdiv_rn(gt, __fadd_rn(1.0f, expf(-gt))), v[NS - 1]);
    }
  }
}

template <GgmlType T, int EPI>
void launch(const Segs& p, int64_t total_rows, const float* x, int m, int64_t cols, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(total_rows / kRows)), block(32 * kWarps);
  if (m <= 8) mma_kernel<T, 1, EPI><<<grid, block, 0, s>>>(p, x, m, cols);
  else if (m <= 16) mma_kernel<T, 2, EPI><<<grid, block, 0, s>>>(p, x, m, cols);
  else if (m <= 32) mma_kernel<T, 4, EPI><<<grid, block, 0, s>>>(p, x, m, cols);
  else mma_kernel<T, 8, EPI><<<grid, block, 0, s>>>(p, x, m, cols);
}

template <GgmlType T>
void launch_epi(const Segs& p, int epi, int64_t total_rows, const float* x, int m, int64_t cols, cudaStream_t s) {
  if (epi == kMvAdd) launch<T, kMvAdd>(p, total_rows, x, m, cols, s);
  else if (epi == kMvSwiglu) launch<T, kMvSwiglu>(p, total_rows, x, m, cols, s);
  else launch<T, kMvStore>(p, total_rows, x, m, cols, s);
}

}  // namespace

bool matmul_mma_supported(GgmlType type, int64_t rows, int64_t cols) {
  const bool typed = type == GgmlType::Q4_0 || type == GgmlType::Q4_1 || type == GgmlType::Q8_0 ||
                     type == GgmlType::BF16;
  return typed && rows > 0 && rows % kRows == 0 && cols > 0 && cols % 32 == 0;
}

cudaError_t matmul_mma(GgmlType type, const MatvecSeg* segs, int n_segs, int epilogue, const float* x, int64_t m,
                       int64_t cols, cudaStream_t s) {
  if (n_segs < 1 || n_segs > 3 || (epilogue == kMvAdd && n_segs != 1) ||
      (epilogue == kMvSwiglu && (n_segs != 2 || segs[0].rows != segs[1].rows)) ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0)
    return cudaErrorInvalidValue;
  int64_t total = 0;
  for (int k = 0; k < n_segs; ++k) {
    if (!matmul_mma_supported(type, segs[k].rows, cols) || reinterpret_cast<uintptr_t>(segs[k].w) % 16 != 0)
      return cudaErrorInvalidValue;
    total += segs[k].rows;
  }
  if (epilogue == kMvSwiglu) total = segs[0].rows;
  if (total / kRows > 0x7fffffff) return cudaErrorInvalidValue;
  if (m <= 0) return cudaSuccess;
  for (int64_t i0 = 0; i0 < m; i0 += kMmaRowsPerPass) {
    const int mi = static_cast<int>(m - i0 < kMmaRowsPerPass ? m - i0 : kMmaRowsPerPass);
    Segs p{};
    p.n = n_segs;
    for (int k = 0; k < n_segs; ++k) {
      p.s[k] = segs[k];
      p.s[k].y = segs[k].y + i0 * segs[k].rows;
    }
    const float* xi = x + i0 * cols;
    switch (type) {
      case GgmlType::Q4_0: launch_epi<GgmlType::Q4_0>(p, epilogue, total, xi, mi, cols, s); break;
      case GgmlType::Q4_1: launch_epi<GgmlType::Q4_1>(p, epilogue, total, xi, mi, cols, s); break;
      case GgmlType::Q8_0: launch_epi<GgmlType::Q8_0>(p, epilogue, total, xi, mi, cols, s); break;
      default: launch_epi<GgmlType::BF16>(p, epilogue, total, xi, mi, cols, s); break;
    }
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace flashmem::cuda

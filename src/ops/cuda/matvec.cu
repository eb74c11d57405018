#include "ops/cuda/matvec.cuh"

#include <cstdlib>

#include "ops/cuda/norm.cuh"
#include "ops/cuda/quant_blocks.cuh"

namespace flashmem::cuda {

namespace {

constexpr int kWarps = 4;  // output rows per block

struct Segs {
  MatvecSeg s[3];
  int n;
};

// Warp w of block b computes output rows (b·kWarps + w)·R … + R − 1 of the concatenated weights
// (for SwiGLU: row r of gate and row r of up). Lane j takes units j, j + 32, ... of a row; each
// unit's 32 weights are dotted with the same 32 columns of each activation row; the warp sums its
// lanes. R > 1 (several activation rows): each activation value read serves R weight rows, a
// fraction 1/R of the loads that bound a batch's product. Every (weight row, activation row)
// pair gets the same additions in the same order whatever R and M, so a row's result does not
// depend on the batch it came in. NORM: x goes through the RMSNorm `nrm` first (MatvecNorm).
template <GgmlType T, int M, int EPI, bool NORM, int R = 1>
__global__ void __launch_bounds__(32 * kWarps)
matvec_kernel(Segs segs, int64_t total_rows, const float* x, int64_t m, int64_t cols, MatvecNorm nrm) {
  static_assert(R == 1 || (EPI != kMvSwiglu && !NORM), "several rows a warp: plain products only");
  const int lane = threadIdx.x & 31;
  // R > 1 is launched only when every segment's rows are a multiple of R: a warp's rows share one.
  int64_t r = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * R;
  const bool active = r < total_rows;
  int k = 0;
  if constexpr (EPI == kMvStore)
    while (k + 1 < segs.n && r >= segs.s[k].rows) r -= segs.s[k++].rows;
  const MatvecSeg seg = segs.s[k];
  constexpr int NW = EPI == kMvSwiglu ? 2 : R;  // weight rows a warp reads
  const uint8_t* rows[NW];
  if constexpr (EPI == kMvSwiglu) {
    rows[0] = static_cast<const uint8_t*>(seg.w) + r * seg.row_bytes;
    rows[1] = static_cast<const uint8_t*>(segs.s[1].w) + r * segs.s[1].row_bytes;
  } else {
#pragma unroll
    for (int t = 0; t < NW; ++t) rows[t] = static_cast<const uint8_t*>(seg.w) + (r + t) * seg.row_bytes;
  }
  const int64_t units = cols / 32;
  const bool spread = spreads<T>(cols);  // which columns a lane's unit covers (unit_col)
  __shared__ float inv_rms[NORM ? M : 1];
  float w0[NORM ? NW : 1][32];  // NORM: the lane's first unit, read while the block finds the norm
  if constexpr (NORM) {
    static_assert(32 * kWarps == kNormThreads, "the norm's block is the GEMV's");
    if (active && lane < units)
#pragma unroll
      for (int t = 0; t < NW; ++t) load_unit_at<T>(rows[t], lane, spread, w0[t]);
    for (int i = 0; i < M && i < m; ++i) {
      const float inv = block_inv_rms(x + i * cols, cols, nrm.eps);
      if (threadIdx.x == 0) inv_rms[i] = inv;
    }
    __syncthreads();
    if (blockIdx.x == 0 && nrm.xn)
      for (int64_t e = threadIdx.x; e < m * cols; e += 32 * kWarps)
        nrm.xn[e] = __fmul_rn(__fmul_rn(x[e], inv_rms[e / cols]), nrm.w[e % cols]);
  }
  if (!active) return;
  float acc[NW][M];
#pragma unroll
  for (int t = 0; t < NW; ++t)
#pragma unroll
    for (int i = 0; i < M; ++i) acc[t][i] = 0.0f;
  if constexpr (R > 1) {
    // The R rows' units first, then each activation value read once for all R rows.
    for (int64_t u = lane; u < units; u += 32) {
      float w[R][32];
#pragma unroll
      for (int t = 0; t < R; ++t) load_unit_at<T>(rows[t], u, spread, w[t]);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        if (i >= m) break;
        const float* xi = x + i * cols;
        float a[R];
#pragma unroll
        for (int t = 0; t < R; ++t) a[t] = acc[t][i];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float4 v = __ldg(reinterpret_cast<const float4*>(xi + unit_col(u, j, spread)));
#pragma unroll
          for (int t = 0; t < R; ++t) {
            a[t] = fmaf(w[t][4 * j], v.x, a[t]);
            a[t] = fmaf(w[t][4 * j + 1], v.y, a[t]);
            a[t] = fmaf(w[t][4 * j + 2], v.z, a[t]);
            a[t] = fmaf(w[t][4 * j + 3], v.w, a[t]);
          }
        }
#pragma unroll
        for (int t = 0; t < R; ++t) acc[t][i] = a[t];
      }
    }
  } else {
  for (int64_t u = lane; u < units; u += 32) {
#pragma unroll
    for (int t = 0; t < NW; ++t) {
      float w[32];
      if (NORM && u == lane) {
#pragma unroll
        for (int j = 0; j < 32; ++j) w[j] = w0[NORM ? t : 0][j];
      } else {
        load_unit_at<T>(rows[t], u, spread, w);
      }
#pragma unroll
      for (int i = 0; i < M; ++i) {
        if (i >= m) break;
        const float* xi = x + i * cols;
        float a = acc[t][i];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int64_t col = unit_col(u, j, spread);
          float4 v = __ldg(reinterpret_cast<const float4*>(xi + col));
          if constexpr (NORM) {
            const float4 nw = __ldg(reinterpret_cast<const float4*>(nrm.w + col));
            const float inv = inv_rms[i];
            v = make_float4(__fmul_rn(__fmul_rn(v.x, inv), nw.x), __fmul_rn(__fmul_rn(v.y, inv), nw.y),
                            __fmul_rn(__fmul_rn(v.z, inv), nw.z), __fmul_rn(__fmul_rn(v.w, inv), nw.w));
          }
          a = fmaf(w[4 * j], v.x, a);
          a = fmaf(w[4 * j + 1], v.y, a);
          a = fmaf(w[4 * j + 2], v.z, a);
          a = fmaf(w[4 * j + 3], v.w, a);
        }
        acc[t][i] = a;
      }
    }
  }
  }
#pragma unroll
  for (int t = 0; t < NW; ++t)
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[t][i] += __shfl_xor_sync(0xffffffffu, acc[t][i], o);
  // Every lane holds the sums; lane i writes activation row i's outputs.
#pragma unroll
  for (int i = 0; i < M; ++i) {
    if (i >= m || lane != i) continue;
    float* y = seg.y + i * seg.rows + r;
    if constexpr (EPI == kMvStore) {
#pragma unroll
      for (int t = 0; t < NW; ++t) y[t] = acc[t][i];
    } else if constexpr (EPI == kMvAdd) {
#pragma unroll
      for (int t = 0; t < NW; ++t) y[t] = __fadd_rn(y[t], acc[t][i]);
    } else {
      const float g = acc[0][i];
      *y = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), acc[NW - 1][i]);
    }
  }
}

// Weight rows a warp takes when several activation rows come (FLASHMEM_CUDA_GEMV_WARP_ROWS = 1, 2 or 4
// overrides, for comparisons; the launch lowers it to what the segments' row counts divide).
int rows_per_warp() {
  static const int r = [] {
    const char* e = std::getenv("FLASHMEM_CUDA_GEMV_WARP_ROWS");
    const int v = e ? std::atoi(e) : 4;
    return v == 1 || v == 2 || v == 4 ? v : 4;
  }();
  return r;
}

template <GgmlType T, int EPI, bool NORM>
cudaError_t launch_rows(const Segs& segs, int64_t total_rows, const float* x, int64_t m, int64_t cols,
                        const MatvecNorm& nrm, cudaStream_t s) {
  const int64_t blocks = (total_rows + kWarps - 1) / kWarps;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks)), block(32 * kWarps);
  if constexpr (NORM) {  // one row only (MatvecNorm)
    if (m != 1) return cudaErrorInvalidValue;
    matvec_kernel<T, 1, EPI, true><<<grid, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
  } else {
    if (m == 1) matvec_kernel<T, 1, EPI, false><<<grid, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
    else if constexpr (EPI != kMvSwiglu) {
      // Several activation rows: R weight rows a warp where every segment's rows allow it.
      // No fewer than ~2 blocks an SM (a 576-row matrix at R = 4 would leave most SMs idle).
      int rr = rows_per_warp();
      while (rr > 1 && total_rows / (kWarps * rr) < 256) rr /= 2;
      for (int k = 0; k < segs.n; ++k)
        while (rr > 1 && segs.s[k].rows % rr != 0) rr /= 2;
      const dim3 g(static_cast<unsigned>((total_rows + kWarps * rr - 1) / (kWarps * rr)));
      if (m <= 4) {
        if (rr == 4) matvec_kernel<T, 4, EPI, false, 4><<<g, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
        else if (rr == 2) matvec_kernel<T, 4, EPI, false, 2><<<g, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
        else matvec_kernel<T, 4, EPI, false><<<g, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
      } else {
        if (rr == 4)
          matvec_kernel<T, kMatvecRowsPerPass, EPI, false, 4><<<g, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
        else if (rr == 2)
          matvec_kernel<T, kMatvecRowsPerPass, EPI, false, 2><<<g, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
        else matvec_kernel<T, kMatvecRowsPerPass, EPI, false><<<g, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
      }
    } else if (m <= 4) {
      matvec_kernel<T, 4, EPI, false><<<grid, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
    } else {
      matvec_kernel<T, kMatvecRowsPerPass, EPI, false><<<grid, block, 0, s>>>(segs, total_rows, x, m, cols, nrm);
    }
  }
  return cudaGetLastError();
}

template <GgmlType T>
cudaError_t launch(const Segs& segs, int epi, const float* x, int64_t m, int64_t cols, const MatvecNorm& nrm,
                   cudaStream_t s) {
  int64_t total = 0;
  for (int k = 0; k < segs.n; ++k) total += segs.s[k].rows;
  const bool norm = nrm.w != nullptr;
  if (epi == kMvAdd) return launch_rows<T, kMvAdd, false>(segs, total, x, m, cols, nrm, s);
  if (epi == kMvSwiglu)
    return norm ? launch_rows<T, kMvSwiglu, true>(segs, segs.s[0].rows, x, m, cols, nrm, s)
                : launch_rows<T, kMvSwiglu, false>(segs, segs.s[0].rows, x, m, cols, nrm, s);
  return norm ? launch_rows<T, kMvStore, true>(segs, total, x, m, cols, nrm, s)
              : launch_rows<T, kMvStore, false>(segs, total, x, m, cols, nrm, s);
}

}  // namespace

bool matvec_supported(GgmlType type, int64_t cols, size_t row_bytes) {
  switch (type) {
    case GgmlType::F32: return cols % 32 == 0 && row_bytes % 16 == 0;
    case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q4_0: case GgmlType::Q4_1:
    case GgmlType::Q5_0: case GgmlType::Q8_0:
      return cols % 32 == 0;
    case GgmlType::Q4_K: case GgmlType::Q6_K: return cols % 256 == 0;
    default: return false;
  }
}

cudaError_t matvec(GgmlType type, const MatvecSeg* segs, int n_segs, int epilogue, const float* x,
                   int64_t m, int64_t cols, cudaStream_t s, const MatvecNorm& norm) {
  if (n_segs < 1 || n_segs > 3 || (epilogue == kMvAdd && n_segs != 1) ||
      (norm.w && (epilogue == kMvAdd || m != 1)) ||
      (epilogue == kMvSwiglu && (n_segs != 2 || segs[0].rows != segs[1].rows)))
    return cudaErrorInvalidValue;
  for (int k = 0; k < n_segs; ++k)  // the block loads (quant_blocks.cuh) rely on 16-byte aligned weights
    if (!matvec_supported(type, cols, segs[k].row_bytes) || reinterpret_cast<uintptr_t>(segs[k].w) % 16 != 0)
      return cudaErrorInvalidValue;
  if (m <= 0 || cols <= 0) return cudaSuccess;
  // Passes of up to kMatvecRowsPerPass activation rows, each over every weight row.
  for (int64_t i0 = 0; i0 < m; i0 += kMatvecRowsPerPass) {
    const int64_t mi = m - i0 < kMatvecRowsPerPass ? m - i0 : kMatvecRowsPerPass;
    Segs p{};
    p.n = n_segs;
    for (int k = 0; k < n_segs; ++k) {
      p.s[k] = segs[k];
      p.s[k].y = segs[k].y + i0 * segs[k].rows;
    }
    const float* xi = x + i0 * cols;
    MatvecNorm ni = norm;
    if (ni.xn) ni.xn += i0 * cols;
    cudaError_t e = cudaErrorInvalidValue;
    switch (type) {
      case GgmlType::F32: e = launch<GgmlType::F32>(p, epilogue, xi, mi, cols, ni, s); break;
      case GgmlType::F16: e = launch<GgmlType::F16>(p, epilogue, xi, mi, cols, ni, s); break;
      case GgmlType::BF16: e = launch<GgmlType::BF16>(p, epilogue, xi, mi, cols, ni, s); break;
      case GgmlType::Q4_0: e = launch<GgmlType::Q4_0>(p, epilogue, xi, mi, cols, ni, s); break;
      case GgmlType::Q4_1: e = launch<GgmlType::Q4_1>(p, epilogue, xi, mi, cols, ni, s); break;
      case GgmlType::Q5_0: e = launch<GgmlType::Q5_0>(p, epilogue, xi, mi, cols, ni, s); break;
      case GgmlType::Q8_0: e = launch<GgmlType::Q8_0>(p, epilogue, xi, mi, cols, ni, s); break;
      case GgmlType::Q4_K: e = launch<GgmlType::Q4_K>(p, epilogue, xi, mi, cols, ni, s); break;
      case GgmlType::Q6_K: e = launch<GgmlType::Q6_K>(p, epilogue, xi, mi, cols, ni, s); break;
      default: break;
    }
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace flashmem::cuda

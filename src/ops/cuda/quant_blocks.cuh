// flashmem/ops/cuda/quant_blocks.cuh — device-side reading of GGML weight blocks (device code:
// included by the .cu files only).
//
// Two readers of the same layouts (core/quant.h, core/quant.cpp's references):
//   dequant_value — one value, with the CPU reference's rounding step for step (no FMA
//                   contraction), so whole-matrix dequantisation is bit-identical to the CPU;
//   load_unit     — 32 consecutive values of a row ("a unit": one Q4_0/Q4_1/Q5_0/Q8_0 block,
//                   an eighth of a Q4_K/Q6_K super-block, 32 plain values) for the decode GEMV,
//                   which reads each weight once and only needs f32 accuracy.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "core/quant.h"

namespace flashmem::cuda {

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

// The 6-bit scale and min of sub-block `sub` (0..7) of a Q4_K super-block's 12 scale bytes.
__device__ inline void q4_k_scale_min(const uint8_t* s, int sub, int& sc, int& mn) {
  if (sub < 4) {
    sc = s[sub] & 63;
    mn = s[sub + 4] & 63;
  } else {
    sc = (s[sub + 4] & 0x0f) | ((s[sub - 4] >> 6) << 4);
    mn = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
  }
}

// Value c of a row, rounded as the CPU reference rounds it (the _rn intrinsics keep nvcc from
// fusing products and sums into FMAs).
__device__ inline float dequant_value(GgmlType type, const uint8_t* row, int64_t c) {
  switch (type) {
    case GgmlType::F32: return reinterpret_cast<const float*>(row)[c];
    case GgmlType::F16: return half_bits_to_float(load_u16(row + 2 * c));
    case GgmlType::BF16: return __uint_as_float(static_cast<uint32_t>(load_u16(row + 2 * c)) << 16);
    case GgmlType::Q8_0: {
      const uint8_t* b = row + (c / 32) * 34;
      return __fmul_rn(half_bits_to_float(load_u16(b)), static_cast<float>(static_cast<int8_t>(b[2 + c % 32])));
    }
    case GgmlType::Q4_0: {
      const uint8_t* b = row + (c / 32) * 18;
      const int j = static_cast<int>(c % 32);
      const int q = (j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4)) - 8;
      return __fmul_rn(half_bits_to_float(load_u16(b)), static_cast<float>(q));
    }
    case GgmlType::Q4_1: {
      const uint8_t* b = row + (c / 32) * 20;
      const int j = static_cast<int>(c % 32);
      const int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
      return __fadd_rn(__fmul_rn(half_bits_to_float(load_u16(b)), static_cast<float>(q)),
                       half_bits_to_float(load_u16(b + 2)));
    }
    case GgmlType::Q5_0: {
      const uint8_t* b = row + (c / 32) * 22;
      const int j = static_cast<int>(c % 32);
      const uint32_t qh = b[2] | (b[3] << 8) | (b[4] << 16) | (static_cast<uint32_t>(b[5]) << 24);
      const int lo = j < 16 ? (b[6 + j] & 0xF) : (b[6 + j - 16] >> 4);
      const int q = (lo | static_cast<int>(((qh >> j) & 1u) << 4)) - 16;
      return __fmul_rn(static_cast<float>(q), half_bits_to_float(load_u16(b)));
    }
    case GgmlType::Q4_K: {  // layout: see ref_q4_k in core/quant.cpp
      const uint8_t* b = row + (c / 256) * 144;
      const int e = static_cast<int>(c % 256), chunk = e / 64, within = e % 64;
      int sc, mn;
      q4_k_scale_min(b + 4, 2 * chunk + (within >= 32 ? 1 : 0), sc, mn);
      const uint8_t qb = b[16 + 32 * chunk + within % 32];
      const int q = within < 32 ? (qb & 0x0f) : (qb >> 4);
      const float d1 = __fmul_rn(half_bits_to_float(load_u16(b)), static_cast<float>(sc));
      const float m1 = __fmul_rn(half_bits_to_float(load_u16(b + 2)), static_cast<float>(mn));
      return __fsub_rn(__fmul_rn(d1, static_cast<float>(q)), m1);
    }
    case GgmlType::Q6_K: {  // layout: see ref_q6_k in core/quant.cpp
      const uint8_t* b = row + (c / 256) * 210;
      const int e = static_cast<int>(c % 256), h = e / 128, k = (e % 128) / 32, l = e % 32;
      const uint8_t lb = b[64 * h + l + (k & 1) * 32];
      const int lo = k < 2 ? (lb & 0x0f) : (lb >> 4);
      const int hi = (b[128 + 32 * h + l] >> (2 * k)) & 3;
      const int q = (lo | (hi << 4)) - 32;
      const float sc = static_cast<float>(static_cast<int8_t>(b[192 + 8 * h + l / 16 + 2 * k]));
      return __fmul_rn(__fmul_rn(half_bits_to_float(load_u16(b + 208)), sc), static_cast<float>(q));
    }
    default: return 0.0f;
  }
}

// A block of a 16-bit scale then 4·NW quant bytes (Q4_0: NW = 4, Q8_0: NW = 8), 2-byte aligned:
// the quants into q as NW little-endian words, in NW + 1 aligned loads; returns the scale's bits.
template <int NW>
__device__ inline uint16_t load_block_quants(const uint8_t* b, uint32_t (&q)[NW]) {
  if (reinterpret_cast<uintptr_t>(b) & 2) {  // the quants start 4-byte aligned
    const uint32_t* p = reinterpret_cast<const uint32_t*>(b + 2);
#pragma unroll
    for (int i = 0; i < NW; ++i) q[i] = p[i];
    return *reinterpret_cast<const uint16_t*>(b);
  }
  const uint32_t* p = reinterpret_cast<const uint32_t*>(b);  // words straddle the quants by 2 bytes
  uint32_t wd[NW + 1];
#pragma unroll
  for (int i = 0; i < NW; ++i) wd[i] = p[i];
  wd[NW] = *reinterpret_cast<const uint16_t*>(b + 4 * NW);  // the last 2 bytes (no read past the block)
#pragma unroll
  for (int i = 0; i < NW; ++i) q[i] = __funnelshift_r(wd[i], wd[i + 1], 16);
  return static_cast<uint16_t>(wd[0]);
}

// The columns of a lane's unit u in a GEMV (matvec.cu): 32 consecutive ones (the unit's own), or
// for f32 and 16-bit weights in a row of whole warps' spans (cols % 1024 == 0: "spread") 4 runs of
// 8 over the 1024 columns of the warp's pass, so that each load instruction of the warp reads 512
// contiguous bytes (the unit's own columns leave every lane's 16-byte load 64 bytes from the next).
// Float4 j4 (0–7) of unit u starts at unit_col(u, j4, spread).
template <GgmlType T>
__host__ __device__ constexpr bool spreads(int64_t cols) {
  return (T == GgmlType::F32 || T == GgmlType::F16 || T == GgmlType::BF16) && cols % 1024 == 0;
}
__device__ inline int64_t unit_col(int64_t u, int j4, bool spread) {
  return spread ? (u / 32) * 1024 + (j4 / 2) * 256 + (u % 32) * 8 + (j4 % 2) * 4 : u * 32 + 4 * j4;
}

// Values [32u, 32u + 32) of a row into w.
template <GgmlType T>
__device__ inline void load_unit(const uint8_t* row, int64_t u, float (&w)[32]) {
  if constexpr (T == GgmlType::F32) {
    const float4* p = reinterpret_cast<const float4*>(row) + u * 8;  // rows of f32 are 16-byte aligned
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float4 v = p[i];
      w[4 * i] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  } else if constexpr (T == GgmlType::F16 || T == GgmlType::BF16) {
    const uint4* p = reinterpret_cast<const uint4*>(row + u * 64);  // rows of 32k halves: 64-byte units
    uint32_t h2[16];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint4 v = p[i];
      h2[4 * i] = v.x;
      h2[4 * i + 1] = v.y;
      h2[4 * i + 2] = v.z;
      h2[4 * i + 3] = v.w;
    }
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const uint16_t h = static_cast<uint16_t>(h2[j / 2] >> (16 * (j % 2)));
      w[j] = T == GgmlType::F16 ? half_bits_to_float(h) : __uint_as_float(static_cast<uint32_t>(h) << 16);
    }
  } else if constexpr (T == GgmlType::Q8_0) {
    const uint8_t* b = row + u * 34;
    uint32_t q[8];
    const float d = half_bits_to_float(load_block_quants<8>(b, q));
#pragma unroll
    for (int j = 0; j < 32; ++j) w[j] = d * static_cast<float>(static_cast<int8_t>(q[j / 4] >> (8 * (j % 4))));
  } else if constexpr (T == GgmlType::Q4_0) {
    const uint8_t* b = row + u * 18;
    uint32_t q4[4];
    const float d = half_bits_to_float(load_block_quants<4>(b, q4));
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int q = (q4[j / 4] >> (8 * (j % 4))) & 0xFF;
      w[j] = d * static_cast<float>((q & 0xF) - 8);
      w[j + 16] = d * static_cast<float>((q >> 4) - 8);
    }
  } else if constexpr (T == GgmlType::Q4_1) {
    const uint32_t* b = reinterpret_cast<const uint32_t*>(row + u * 20);  // 20-byte blocks: 4-byte aligned
    const uint32_t dm = b[0];
    uint32_t q4[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) q4[i] = b[1 + i];
    const float d = half_bits_to_float(static_cast<uint16_t>(dm)), m = half_bits_to_float(static_cast<uint16_t>(dm >> 16));
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int q = (q4[j / 4] >> (8 * (j % 4))) & 0xFF;
      w[j] = fmaf(d, static_cast<float>(q & 0xF), m);
      w[j + 16] = fmaf(d, static_cast<float>(q >> 4), m);
    }
  } else if constexpr (T == GgmlType::Q5_0) {
    const uint8_t* b = row + u * 22;
    const float d = half_bits_to_float(load_u16(b));
    const uint32_t qh = b[2] | (b[3] << 8) | (b[4] << 16) | (static_cast<uint32_t>(b[5]) << 24);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int q = b[6 + j];
      w[j] = d * static_cast<float>(((q & 0xF) | static_cast<int>(((qh >> j) & 1u) << 4)) - 16);
      w[j + 16] = d * static_cast<float>(((q >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4)) - 16);
    }
  } else if constexpr (T == GgmlType::Q4_K) {
    const uint8_t* b = row + (u / 8) * 144;
    const int sub = static_cast<int>(u % 8), chunk = sub / 2;
    int sc, mn;
    q4_k_scale_min(b + 4, sub, sc, mn);
    const float d = half_bits_to_float(load_u16(b)) * static_cast<float>(sc);
    const float m = half_bits_to_float(load_u16(b + 2)) * static_cast<float>(mn);
    const uint8_t* qs = b + 16 + 32 * chunk;
    const int shift = (sub & 1) * 4;
#pragma unroll
    for (int j = 0; j < 32; ++j) w[j] = fmaf(d, static_cast<float>((qs[j] >> shift) & 0xF), -m);
  } else if constexpr (T == GgmlType::Q6_K) {
    const uint8_t* b = row + (u / 8) * 210;
    const int sub = static_cast<int>(u % 8), h = sub / 4, k = sub % 4;
    const float d = half_bits_to_float(load_u16(b + 208));
    const uint8_t* ql = b + 64 * h + (k & 1) * 32;
    const uint8_t* qh = b + 128 + 32 * h;
    const float s0 = d * static_cast<float>(static_cast<int8_t>(b[192 + 8 * h + 2 * k]));
    const float s1 = d * static_cast<float>(static_cast<int8_t>(b[192 + 8 * h + 1 + 2 * k]));
    const int lshift = k < 2 ? 0 : 4;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      const int q = (((ql[l] >> lshift) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
      w[l] = (l < 16 ? s0 : s1) * static_cast<float>(q);
    }
  }
}

// load_unit for the GEMV's columns of unit u (unit_col): spread for f32 and 16-bit weights, else
// the unit's own.
template <GgmlType T>
__device__ inline void load_unit_at(const uint8_t* row, int64_t u, bool spread, float (&w)[32]) {
  if constexpr (T == GgmlType::F32 || T == GgmlType::F16 || T == GgmlType::BF16) {
    if (spread) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {  // run c: values 8c … 8c + 7, one 16-byte load (16-bit) or two
        if constexpr (T == GgmlType::F32) {
          const float4* p = reinterpret_cast<const float4*>(row) + unit_col(u, 2 * c, true) / 4;
          const float4 a = p[0], b = p[1];
          w[8 * c] = a.x, w[8 * c + 1] = a.y, w[8 * c + 2] = a.z, w[8 * c + 3] = a.w;
          w[8 * c + 4] = b.x, w[8 * c + 5] = b.y, w[8 * c + 6] = b.z, w[8 * c + 7] = b.w;
        } else {
          const uint4 v = *reinterpret_cast<const uint4*>(row + unit_col(u, 2 * c, true) * 2);
          const uint32_t h2[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const uint16_t h = static_cast<uint16_t>(h2[e / 2] >> (16 * (e % 2)));
            w[8 * c + e] = T == GgmlType::F16 ? half_bits_to_float(h) : __uint_as_float(static_cast<uint32_t>(h) << 16);
          }
        }
      }
      return;
    }
  }
  load_unit<T>(row, u, w);
}

}  // namespace flashmem::cuda

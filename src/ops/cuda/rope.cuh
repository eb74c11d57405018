// flashmem/ops/cuda/rope.cuh — the rotary embedding of one pair of a head (device code: included
// by the .cu files only), shared by the rope kernel and the fused rope + K/V write so that both
// give the same bits (the CPU reference's arithmetic: the angle in double, the rotation in
// unfused f32 products).
#pragma once

#include <cstdint>

namespace flashmem::cuda {

// Where pair i of a head sits (GGUF llama: adjacent dims; NeoX: the two halves of n_rot).
__device__ inline void rope_pair_dims(int i, int n_rot, bool neox, int& i0, int& i1) {
  i0 = neox ? i : 2 * i;
  i1 = neox ? i + n_rot / 2 : 2 * i + 1;
}

// Rotates (a, b), pair i of a head at `position`, in place.
__device__ inline void rope_rotate(int32_t position, int i, int n_rot, float freq_base, float freq_scale, float& a,
                                   float& b) {
  const double p = static_cast<double>(position) * freq_scale;
  const double theta = p * pow(static_cast<double>(freq_base), -2.0 * i / static_cast<double>(n_rot));
  const float c = static_cast<float>(cos(theta));
  const float sn = static_cast<float>(sin(theta));
  const float x = a, y = b;
  a = __fsub_rn(__fmul_rn(x, c), __fmul_rn(y, sn));
  b = __fadd_rn(__fmul_rn(x, sn), __fmul_rn(y, c));
}

}  // namespace flashmem::cuda

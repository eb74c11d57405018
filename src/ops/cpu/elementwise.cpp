#include "ops/cpu/elementwise.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/simd.h"

namespace flashmem::cpu {

void rms_norm(const float* x, const float* weight, int64_t n, float eps, float* y) {
  // Sum of squares in double: the row is short and this keeps the norm exact to f32 rounding.
  double ss = 0.0;
  int64_t i = 0;
#if defined(__AVX2__)
  __m256d acc[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
  for (; i + 8 <= n; i += 8)
    for (int h = 0; h < 2; ++h) {
      const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4 * h));
      acc[h] = _mm256_fmadd_pd(v, v, acc[h]);  // exact: an f32 square fits a double
    }
  alignas(32) double part[4];
  _mm256_store_pd(part, _mm256_add_pd(acc[0], acc[1]));
  ss = (part[0] + part[1]) + (part[2] + part[3]);
#endif
  for (; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (i = 0; i < n; ++i) y[i] = x[i] * inv * weight[i];
}

void rope(float* x, int n_heads, int head_dim, int32_t pos, const RopeParams& p) {
  const int half = p.n_rot / 2;
  // The angles of one position, kept for the next call: a decode step rotates q and k of every
  // layer at the same position, so they are computed once a token, not twice a layer.
  struct Angles {
    int32_t pos = -1;
    RopeParams p{};
    std::vector<float> c, s;
  };
  thread_local Angles t;
  if (t.pos != pos || t.p.n_rot != p.n_rot || t.p.freq_base != p.freq_base || t.p.freq_scale != p.freq_scale) {
    t.pos = pos;
    t.p = p;
    t.c.resize(static_cast<size_t>(half));
    t.s.resize(static_cast<size_t>(half));
    const double position = static_cast<double>(pos) * p.freq_scale;
    for (int i = 0; i < half; ++i) {
      // theta_i = pos · base^(−2i / n_rot); computed in double so long positions keep precision.
      const double theta = position * std::pow(static_cast<double>(p.freq_base),
                                               -2.0 * i / static_cast<double>(p.n_rot));
      t.c[i] = static_cast<float>(std::cos(theta));
      t.s[i] = static_cast<float>(std::sin(theta));
    }
  }
  for (int i = 0; i < half; ++i) {
    const float c = t.c[i], s = t.s[i];
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + static_cast<int64_t>(h) * head_dim;
      const int i0 = p.neox ? i : 2 * i;
      const int i1 = p.neox ? i + half : 2 * i + 1;
      const float a = v[i0], b = v[i1];
      v[i0] = a * c - b * s;
      v[i1] = a * s + b * c;
    }
  }
}

void swiglu(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

float softmax(float* x, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
  return mx;
}

}  // namespace flashmem::cpu

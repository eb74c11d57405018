#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/simd.h"

namespace flashmem {

void SamplerParams::validate() const {
  FM_CHECK(std::isfinite(temperature) && temperature >= 0.0f, ErrorCode::kInvalidArgument,
           "temperature must be ≥ 0, got ", temperature);
  FM_CHECK(top_k >= 0, ErrorCode::kInvalidArgument, "top-k must be ≥ 0, got ", top_k);
  FM_CHECK(top_p > 0.0f && top_p <= 1.0f, ErrorCode::kInvalidArgument,
           "top-p must be in (0, 1], got ", top_p);
}

Sampler::Sampler(const SamplerParams& params) : params_(params), rng_(params.seed) {
  params_.validate();
}

int32_t argmax(const float* logits, int64_t n) {
  // The first index holding the largest value; NaNs are never chosen over a number (a NaN at 0
  // is kept, as no value compares greater).
#if defined(__AVX2__)
  if (n >= 8 && !std::isnan(logits[0])) {
    // The largest non-NaN value (max_ps yields its second operand when the first is NaN), then
    // the first index holding it: the scalar loop's answer, found with vector compares.
    __m256 mx8 = _mm256_set1_ps(logits[0]);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) mx8 = _mm256_max_ps(_mm256_loadu_ps(logits + i), mx8);
    float mx = -INFINITY;
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, mx8);
    for (float v : lanes) mx = std::max(mx, v);
    for (; i < n; ++i) mx = logits[i] > mx ? logits[i] : mx;
    const __m256 want = _mm256_set1_ps(mx);
    for (i = 0; i + 8 <= n; i += 8) {
      const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(logits + i), want, _CMP_EQ_OQ));
      if (hit) return static_cast<int32_t>(i + __builtin_ctz(static_cast<unsigned>(hit)));
    }
    for (; i < n; ++i)
      if (logits[i] == mx) return static_cast<int32_t>(i);
  }
#endif
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

int32_t Sampler::sample(const float* logits, int64_t n) {
  if (params_.temperature <= 0.0f) return argmax(logits, n);
  cand_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) cand_[i] = {logits[i] / params_.temperature, static_cast<int32_t>(i)};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = cand_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = static_cast<size_t>(params_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax over the kept candidates (sorted, so the first is the max).
  const float mx = cand_[0].first;
  double total = 0.0;
  std::vector<double> p(keep);
  for (size_t i = 0; i < keep; ++i) total += p[i] = std::exp(static_cast<double>(cand_[i].first - mx));
  // Nucleus: the smallest prefix whose mass reaches top_p.
  if (params_.top_p < 1.0f) {
    double acc = 0.0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      acc += p[i] / total;
      if (acc >= params_.top_p) { cut = i + 1; break; }
    }
    keep = cut;
    total = 0.0;
    for (size_t i = 0; i < keep; ++i) total += p[i];
  }
  std::uniform_real_distribution<double> uni(0.0, total);
  const double r = uni(rng_);
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (r < acc) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace flashmem

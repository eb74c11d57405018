#include "ops/cpu/indexer.h"

#include <array>

#include "core/fp8.h"

namespace flashmem::cpu {

namespace {

const std::array<float, 256>& fp8_table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> a{};
    for (int i = 0; i < 256; ++i) a[i] = fp8_e4m3_to_fp32(static_cast<uint8_t>(i));
    return a;
  }();
  return t;
}

}  // namespace

void index_scores(const IndexScoreParams& p, const float* q, const float* w, const uint8_t* keys,
                  const float* scales, int64_t c0, int64_t c1, float* logits) {
  const auto& f8 = fp8_table();
  const int d = p.head_dim, rep = p.n_heads / p.n_kv_heads;
  const int64_t row = static_cast<int64_t>(p.n_kv_heads) * d;
  for (int64_t c = c0; c < c1; ++c) {
    const uint8_t* kc = keys + c * row;
    float acc = 0.0f;
    for (int h = 0; h < p.n_heads; ++h) {
      const uint8_t* k = kc + static_cast<int64_t>(h / rep) * d;
      const float* qh = q + static_cast<int64_t>(h) * d;
      float dot = 0.0f;
      for (int i = 0; i < d; ++i) dot += qh[i] * f8[k[i]];
      dot *= scales[c];
      acc += w[h] * (dot > 0.0f ? dot : 0.0f);
    }
    logits[c] = p.bias + acc;
  }
}

}  // namespace flashmem::cpu

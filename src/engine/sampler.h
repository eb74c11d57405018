// flashmem/engine/sampler.h — next-token sampling: greedy, temperature, top-k, top-p, seeded.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace flashmem {

struct SamplerParams {
  float temperature = 0.0f;  // ≤ 0: greedy (argmax)
  int top_k = 0;             // 0: all tokens
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  uint64_t seed = 0;         // same seed and logits ⇒ same tokens

  // Throws Error(kInvalidArgument) naming the bad field.
  void validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& params);
  // Picks a token from n logits (not modified). Deterministic given the seed and call order.
  int32_t sample(const float* logits, int64_t n);

 private:
  SamplerParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

// Index of the largest logit (lowest index on ties).
int32_t argmax(const float* logits, int64_t n);

}  // namespace flashmem

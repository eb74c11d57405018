// Sampling: greedy, reproducibility, top-k / top-p truncation and the sampled distribution.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "core/error.h"
#include "engine/sampler.h"

namespace flashmem {
namespace {

TEST(Sampler, GreedyIsArgmaxWithLowestIndexOnTies) {
  const float l[5] = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f};
  Sampler s(SamplerParams{});
  EXPECT_EQ(s.sample(l, 5), 1);
  EXPECT_EQ(argmax(l, 5), 1);
}

// argmax's vector path against the plain loop: ties (the first index wins), NaNs (never chosen
// over a number; one at 0 is kept), ±0, infinities, and lengths around the vector width.
TEST(Sampler, ArgmaxEqualsThePlainLoop) {
  const auto plain = [](const std::vector<float>& v) {
    int64_t best = 0;
    for (int64_t i = 1; i < static_cast<int64_t>(v.size()); ++i)
      if (v[i] > v[best]) best = i;
    return static_cast<int32_t>(best);
  };
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> level(-3, 3), special(0, 9);
  for (int trial = 0; trial < 4000; ++trial) {
    std::vector<float> v(1 + trial % 41);
    for (float& x : v) {
      x = static_cast<float>(level(rng));  // few levels: many ties
      const int sp = special(rng);
      if (trial % 3 == 0 && sp == 0) x = NAN;
      if (trial % 5 == 0 && sp == 1) x = -0.0f;
      if (trial % 7 == 0 && sp == 2) x = trial % 2 ? INFINITY : -INFINITY;
    }
    ASSERT_EQ(argmax(v.data(), static_cast<int64_t>(v.size())), plain(v)) << "trial " << trial;
  }
  std::vector<float> all_nan(20, NAN);
  EXPECT_EQ(argmax(all_nan.data(), 20), 0);
  std::vector<float> big(49152, -1.0f);
  big[40000] = 2.0f;
  big[45000] = 2.0f;
  EXPECT_EQ(argmax(big.data(), 49152), 40000);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[i] = std::sin(i * 0.7f);
  auto draw = [&](uint64_t seed) {
    Sampler s(SamplerParams{1.0f, 0, 1.0f, seed});
    std::vector<int> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.sample(l.data(), 100));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(Sampler, TopKAndTopPTruncate) {
  const float l[4] = {2.0f, 1.9f, 0.0f, -5.0f};
  Sampler k1(SamplerParams{1.0f, 1, 1.0f, 3});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(k1.sample(l, 4), 0);
  Sampler k2(SamplerParams{1.0f, 2, 1.0f, 3});
  for (int i = 0; i < 200; ++i) EXPECT_LT(k2.sample(l, 4), 2);
  Sampler p(SamplerParams{1.0f, 0, 0.3f, 3});  // the top token alone holds > 30%
  for (int i = 0; i < 100; ++i) EXPECT_EQ(p.sample(l, 4), 0);
}

TEST(Sampler, FollowsTheSoftmaxDistribution) {
  const float l[3] = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  Sampler s(SamplerParams{1.0f, 0, 1.0f, 9});
  std::map<int, int> count;
  const int n = 20000;
  for (int i = 0; i < n; ++i) count[s.sample(l, 3)]++;
  // 5 standard deviations of a binomial proportion at n = 20000 is < 0.018.
  EXPECT_NEAR(count[0] / double(n), 0.5, 0.018);
  EXPECT_NEAR(count[1] / double(n), 0.3, 0.018);
  EXPECT_NEAR(count[2] / double(n), 0.2, 0.018);
}

TEST(Sampler, RejectsBadParameters) {
  EXPECT_THROW(Sampler(SamplerParams{-1.0f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerParams{1.0f, -3, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerParams{1.0f, 0, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerParams{1.0f, 0, 1.5f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerParams{NAN, 0, 1.0f, 0}), Error);
}

}  // namespace
}  // namespace flashmem

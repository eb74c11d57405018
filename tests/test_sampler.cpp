// Sampling: greedy, reproducibility, top-k / top-p truncation and the sampled distribution.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

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

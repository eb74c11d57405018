// The paged KV cache: contents, page boundaries, accounting and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "memory/kv_cache.h"

namespace flashmem {
namespace {

TEST(PagedKvCache, StoresEveryTokenWhereTheViewSaysAndCountsPages) {
  for (KvType type : {KvType::kF32, KvType::kF16, KvType::kQ8}) {
    SCOPED_TRACE(kv_type_name(type));
    const int layers = 2, heads = 3, hd = 8, pt = 4;
    PagedKvCache kv(KvCacheConfig{layers, heads, hd, pt, 11, type});
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-4, 4);
    std::vector<float> k(11 * heads * hd), v(k.size());
    for (auto& x : k) x = d(rng);
    for (auto& x : v) x = d(rng);
    for (int l = 0; l < layers; ++l) {
      kv.append(l, 5, k.data(), v.data());  // two appends crossing a page boundary
      kv.append(l, 6, k.data() + 5 * heads * hd, v.data() + 5 * heads * hd);
    }
    EXPECT_EQ(kv.n_tokens(), 11);
    EXPECT_EQ(kv.pages_in_use(), layers * 3);
    EXPECT_EQ(kv.bytes_in_use(), static_cast<size_t>(layers * 3) * kv.page_bytes());
    if (type == KvType::kQ8) {  // int8 values, then one f32 scale per (head, slot)
      EXPECT_EQ(kv.page_bytes(), 2u * (heads * pt * hd + heads * pt * 4));
      EXPECT_EQ(kv.bytes_per_token(), 2u * layers * heads * (hd + 4));
    } else {
      EXPECT_EQ(kv.page_bytes(), 2u * heads * pt * hd * kv_type_bytes(type));
      EXPECT_EQ(kv.bytes_per_token(), 2u * layers * heads * hd * kv_type_bytes(type));
    }
    for (int l = 0; l < layers; ++l) {
      auto pages = kv.pages(l);
      ASSERT_EQ(pages.size(), 3u);
      EXPECT_EQ(pages[2].pos0, 8);
      EXPECT_EQ(pages[2].n_tokens, 3);
      for (int t = 0; t < 11; ++t)
        for (int h = 0; h < heads; ++h)
          for (int c = 0; c < hd; ++c) {
            const auto& pg = pages[t / pt];
            const size_t k_at = static_cast<size_t>(h) * pt * hd + static_cast<size_t>(c) * pt + t % pt;
            const size_t at = (static_cast<size_t>(h) * pt + t % pt) * hd + c;
            const float want_k = k[(t * heads + h) * hd + c], want_v = v[(t * heads + h) * hd + c];
            float got_k, got_v;
            if (type == KvType::kQ8) {
              // Scale max|x|/127 of the token's head vector, in double from the input.
              double amax_k = 0.0, amax_v = 0.0;
              for (int i = 0; i < hd; ++i) {
                amax_k = std::max(amax_k, std::fabs(static_cast<double>(k[(t * heads + h) * hd + i])));
                amax_v = std::max(amax_v, std::fabs(static_cast<double>(v[(t * heads + h) * hd + i])));
              }
              const float* ks = reinterpret_cast<const float*>(static_cast<const uint8_t*>(pg.k) + heads * pt * hd);
              const float* vs = reinterpret_cast<const float*>(static_cast<const uint8_t*>(pg.v) + heads * pt * hd);
              const float sk = ks[h * pt + t % pt], sv = vs[h * pt + t % pt];
              ASSERT_NEAR(sk, amax_k / 127.0, 1e-6 * amax_k);
              ASSERT_NEAR(sv, amax_v / 127.0, 1e-6 * amax_v);
              got_k = static_cast<const int8_t*>(pg.k)[k_at] * sk;
              got_v = static_cast<const int8_t*>(pg.v)[at] * sv;
              ASSERT_LE(std::fabs(got_k - want_k), 0.5001 * sk);  // round to nearest
              ASSERT_LE(std::fabs(got_v - want_v), 0.5001 * sv);
            } else if (type == KvType::kF32) {
              got_k = static_cast<const float*>(pg.k)[k_at];
              got_v = static_cast<const float*>(pg.v)[at];
              ASSERT_EQ(got_k, want_k);
              ASSERT_EQ(got_v, want_v);
            } else {
              got_k = fp16_to_fp32(static_cast<const uint16_t*>(pg.k)[k_at]);
              got_v = fp16_to_fp32(static_cast<const uint16_t*>(pg.v)[at]);
              ASSERT_EQ(got_k, fp16_to_fp32(fp32_to_fp16(want_k)));
              ASSERT_EQ(got_v, fp16_to_fp32(fp32_to_fp16(want_v)));
            }
          }
    }
    kv.truncate(5);
    EXPECT_EQ(kv.n_tokens(), 5);
    EXPECT_EQ(kv.pages(0).size(), 2u);
    EXPECT_EQ(kv.pages(0)[1].n_tokens, 1);
    EXPECT_EQ(kv.pages_in_use(), layers * 2);
    kv.truncate(0);
    EXPECT_EQ(kv.pages_in_use(), 0);
    EXPECT_EQ(kv.bytes_in_use(), 0u);
  }
}

TEST(PagedKvCache, RefusesTokensBeyondCapacityWithoutLosingState) {
  PagedKvCache kv(KvCacheConfig{1, 1, 4, 2, 3, KvType::kF32});
  std::vector<float> x(4 * 4, 1.0f);
  kv.append(0, 3, x.data(), x.data());
  try {
    kv.append(0, 1, x.data(), x.data());
    FAIL() << "append past capacity must throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfRange);
    EXPECT_NE(std::string(e.what()).find("context full"), std::string::npos);
  }
  EXPECT_EQ(kv.n_tokens(), 3);
}

TEST(PagedKvCache, RejectsBadConfigurations) {
  EXPECT_THROW(PagedKvCache(KvCacheConfig{0, 1, 4, 2, 3, KvType::kF32}), Error);
  EXPECT_THROW(PagedKvCache(KvCacheConfig{1, 1, 4, 0, 3, KvType::kF32}), Error);
  EXPECT_THROW(PagedKvCache(KvCacheConfig{1, 1, 4, 2, 0, KvType::kF32}), Error);
  EXPECT_THROW(PagedKvCache(KvCacheConfig{1, 1, 4, 8192, 3, KvType::kF32}), Error);
}

}  // namespace
}  // namespace flashmem

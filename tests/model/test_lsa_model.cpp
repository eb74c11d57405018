// The LSA memory system on the default model.
//  * Budget 100% ⇒ bit-identical logits to the full-KV path (PagedKvCache) at ≥ 2K context
//    over 64 decode steps, for every policy that can run at 100% — a permanent regression test.
//  * Under a real budget, prefill streams through the reserve and still matches full attention
//    (prefill is exact; only decode is sparse), and the device never exceeds the budget.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "memory/residency.h"
#include "test_util.h"

namespace flashmem {
namespace {

Engine& engine(KvType kv = KvType::kF16) {
  static std::unique_ptr<Engine> e16, e32;
  auto& e = kv == KvType::kF16 ? e16 : e32;
  if (!e) {
    EngineOptions o;
    o.model_path = test::require_default_model();
    o.n_ctx = 4096;
    o.kv_type = kv;  // f16 is the default; 64-token pages
    e = Engine::load(o);
  }
  return *e;
}

// ≥ 2K tokens from the three prompt fixtures (their token ids are stored with the logits).
std::vector<int32_t> long_prompt(size_t n) {
  std::vector<int32_t> out;
  while (out.size() < n)
    for (const char* name : {"prose", "code", "chat"}) {
      std::ifstream in(std::string(FLASHMEM_FIXTURES_DIR) + "/logits/" + name + ".json");
      const auto toks = nlohmann::json::parse(in).at("tokens").get<std::vector<int32_t>>();
      out.insert(out.end(), toks.begin() + (out.empty() ? 0 : 1), toks.end());  // one BOS
    }
  out.resize(n);
  return out;
}

constexpr int kSteps = 64;

struct Trajectory {
  std::vector<int32_t> tokens;             // fed after the prompt
  std::vector<std::vector<float>> logits;  // after the prompt, then after each token
};

Trajectory full_path(const std::vector<int32_t>& prompt) {
  Engine& eng = engine();
  PagedKvCache kv = eng.new_cache();
  const int nv = eng.info().n_vocab;
  Trajectory t;
  std::vector<float> logits(nv);
  eng.model().forward(prompt, kv, logits.data());
  t.logits.push_back(logits);
  for (int i = 0; i < kSteps; ++i) {
    t.tokens.push_back(argmax(logits.data(), nv));
    eng.model().forward(std::span<const int32_t>(&t.tokens.back(), 1), kv, logits.data());
    t.logits.push_back(logits);
  }
  return t;
}

TEST(LsaModel, FullBudgetIsBitIdenticalToTheFullPathAt2KOver64Steps) {
  Engine& eng = engine();
  const auto prompt = long_prompt(2100);
  const Trajectory ref = full_path(prompt);
  const int nv = eng.info().n_vocab;
  ASSERT_TRUE(test::all_finite(ref.logits.back().data(), nv));
  const KvCacheConfig kc = eng.kv_config();
  for (const char* policy : {"full", "recency", "random", "quest"}) {
    SCOPED_TRACE(policy);
    ResidencyOptions o;
    o.policy = policy;
    const int64_t final_tokens = static_cast<int64_t>(prompt.size()) + kSteps;
    const int64_t pages = resolve_budget_pages(o, kc, final_tokens);
    KvReserve reserve(eng.backend(), kc.page_bytes(), pages * kc.n_layers);
    RecallEngine recall(eng.backend());
    TieredKvStore kv(kc, pages, reserve, recall);
    o.cycle = 16;  // four selections over the 64 steps
    Residency res(kv, make_policy(policy, kc, 7), o);
    std::vector<float> logits(nv);
    eng.model().forward(prompt, kv, logits.data());
    ASSERT_EQ(std::memcmp(logits.data(), ref.logits[0].data(), nv * sizeof(float)), 0) << "prefill";
    for (int i = 0; i < kSteps; ++i) {
      res.before_step(i, kSteps - i);
      eng.model().forward(std::span<const int32_t>(&ref.tokens[i], 1), kv, logits.data());
      ASSERT_EQ(std::memcmp(logits.data(), ref.logits[i + 1].data(), nv * sizeof(float)), 0)
          << "decode step " << i;
    }
    EXPECT_EQ(recall.stats().pages, 0);  // everything stayed on the device
    EXPECT_EQ(kv.footprint().reserve + kv.footprint().open, kv.footprint().full_kv);
    EXPECT_EQ(res.cycles(), 4);
  }
}

// With f32 KV: with f16 KV, last-bit differences in the hidden state flip f16 roundings of
// later layers' K/V and the comparison would measure f16 KV quantisation, not the merge.
TEST(LsaModel, StreamedPrefillUnderATenPercentBudgetMatchesFullAttention) {
  Engine& eng = engine(KvType::kF32);
  const auto prompt = long_prompt(2100);
  const KvCacheConfig kc = eng.kv_config();
  const int nv = eng.info().n_vocab;
  std::vector<float> want(nv), got(nv);
  {
    PagedKvCache kv = eng.new_cache();
    eng.model().forward(prompt, kv, want.data());
  }
  ResidencyOptions o;
  o.policy = "recency";
  o.budget = KvBudget::parse("10%");
  o.cycle = 1;  // so that 3 pages per layer meet the minimum (sink + tail + 1 per cycle)
  const int64_t p2 = resolve_budget_pages(o, kc, static_cast<int64_t>(prompt.size()) + 1);
  ASSERT_EQ(p2, 3);  // ⌊0.1 · 33⌋: the 2.1K-token prompt streams through 3 pages per layer
  KvReserve reserve(eng.backend(), kc.page_bytes(), p2 * kc.n_layers);
  RecallEngine recall(eng.backend());
  TieredKvStore kv(kc, p2, reserve, recall);
  eng.model().forward(prompt, kv, got.data());
  ASSERT_TRUE(test::all_finite(got.data(), nv));
  const double err = test::rel_l2(got.data(), want.data(), nv);
  std::printf("[ lsa ] streamed prefill (%lld pages/layer) vs full: rel L2 %.3e, recalled %lld pages\n",
              static_cast<long long>(p2), err, static_cast<long long>(recall.stats().pages));
  EXPECT_LE(err, 1e-5);  // the same attention, merged in a different order
  EXPECT_LE(kv.peak().reserve + kv.peak().open, reserve.bytes_allocated());
  EXPECT_GT(recall.stats().pages, 0);
}

}  // namespace
}  // namespace flashmem

namespace flashmem {
namespace {

// One prefill, several policies (what the eval harness does): decoding a fork of the prefill
// gives exactly what a request of its own gives, and a fork never reads the original's reserve.
TEST(LsaModel, DecodingAForkOfOnePrefillEqualsAFreshRequest) {
  Engine& eng = engine();
  const auto prompt = long_prompt(1500);
  GenerateOptions go;
  go.max_new_tokens = 24;
  go.memory.policy = "recency";
  go.memory.budget = KvBudget::parse("25%");
  const GenerateResult fresh = eng.generate(prompt, go);
  auto pre = eng.prefill(prompt, go.memory, go.max_new_tokens);
  const GenerateResult forked = eng.decode(*pre, go);
  EXPECT_EQ(forked.tokens, fresh.tokens);
  EXPECT_EQ(forked.kv.budget_pages, fresh.kv.budget_pages);
  EXPECT_LE(forked.kv.peak.device(), forked.kv.reserve_bytes);
  GenerateOptions full = go;
  full.memory = ResidencyOptions{};
  const GenerateResult f1 = eng.decode(*pre, full);  // a larger budget may reuse the prefill
  EXPECT_EQ(f1.tokens.size(), 24u);
  GenerateOptions small = go;
  small.memory.budget = KvBudget::parse("20pages");
  auto big = eng.prefill(prompt, full.memory, go.max_new_tokens);
  EXPECT_THROW(eng.decode(*big, small), Error);  // smaller than the prefill's budget
}

}  // namespace
}  // namespace flashmem

// Request and Scheduler on the default model: requests of different prompts, lengths and
// residency policies, prefilled in chunks and decoded together, each get bit for bit the tokens
// and text they get when run alone (the CPU's decode rows are exact in a batch, see
// Model::forward_batch); a cancelled or failing request ends alone and gives its pages back.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "test_util.h"

namespace flashmem {
namespace {

Engine& engine() {
  static std::unique_ptr<Engine> e;
  if (!e) {
    EngineOptions o;
    o.model_path = test::require_default_model();
    o.n_ctx = 4096;
    o.page_tokens = 16;
    o.indexer_path = std::string(FLASHMEM_SOURCE_DIR) + "/indexers/SmolLM2-135M-Instruct.safetensors";
    e = Engine::load(o);
  }
  return *e;
}

// n tokens of the prompt fixtures, starting `skip` tokens in (after one BOS).
std::vector<int32_t> prompt_of(size_t n, size_t skip) {
  std::vector<int32_t> all;
  while (all.size() < n + skip + 1)
    for (const char* name : {"prose", "code", "chat"}) {
      std::ifstream in(std::string(FLASHMEM_FIXTURES_DIR) + "/logits/" + name + ".json");
      const auto toks = nlohmann::json::parse(in).at("tokens").get<std::vector<int32_t>>();
      all.insert(all.end(), toks.begin() + 1, toks.end());
    }
  std::vector<int32_t> out = {all.front()};
  out.insert(out.end(), all.begin() + 1 + static_cast<std::ptrdiff_t>(skip),
             all.begin() + 1 + static_cast<std::ptrdiff_t>(skip + n - 1));
  out.front() = 1;  // BOS
  return out;
}

struct Case {
  std::vector<int32_t> prompt;
  GenerateOptions go;
};

std::vector<Case> cases() {
  std::vector<Case> cs(5);
  const char* policies[5] = {"full", "recency", "random", "lsa", "quest"};
  const char* budgets[5] = {"100%", "30%", "40%", "25%", "35%"};
  const size_t lens[5] = {350, 560, 420, 650, 450};
  const int news[5] = {14, 24, 9, 20, 12};
  for (int i = 0; i < 5; ++i) {
    cs[i].prompt = prompt_of(lens[i], 37 * i);
    cs[i].go.max_new_tokens = news[i];
    cs[i].go.stop_at_eos = false;
    cs[i].go.memory.policy = policies[i];
    cs[i].go.memory.budget = KvBudget::parse(budgets[i]);
    cs[i].go.memory.cycle = 8;  // several selections within the run
    cs[i].go.memory.seed = 5;
    cs[i].go.memory.lsa.widen = false;
  }
  cs[2].go.sampling.temperature = 0.8f;  // a seeded sampler too
  cs[2].go.sampling.seed = 11;
  return cs;
}

GenerateResult alone(const Case& c, int64_t chunk) {
  Request r(engine(), c.prompt, c.go);
  r.set_prefill_chunk(chunk);
  while (const auto in = r.next_input()) {
    engine().model().forward_batch(std::span<const SequenceInput>(&*in, 1));
    r.consume();
  }
  EXPECT_TRUE(r.finished());
  return r.result();
}

void expect_same(const GenerateResult& got, const GenerateResult& want, const std::string& what) {
  EXPECT_EQ(got.tokens, want.tokens) << what;
  EXPECT_EQ(got.text, want.text) << what;
  EXPECT_EQ(got.stop_reason, want.stop_reason) << what;
  EXPECT_EQ(got.decode_steps, want.decode_steps) << what;
  EXPECT_EQ(got.kv.budget_pages, want.kv.budget_pages) << what;
  EXPECT_EQ(got.kv.cycles, want.kv.cycles) << what;
  EXPECT_EQ(got.kv.recall.pages, want.kv.recall.pages) << what;
}

TEST(Scheduler, RequestsDecodedTogetherEqualEachDecodedAlone) {
  const std::vector<Case> cs = cases();
  constexpr int64_t kChunk = 256;
  std::vector<GenerateResult> want;
  for (const Case& c : cs) want.push_back(alone(c, kChunk));
  // A request run alone whole is what Engine::generate gives.
  expect_same(engine().generate(cs[0].prompt, cs[0].go), alone(cs[0], 0), "generate");

  Scheduler s(engine(), SchedulerOptions{.max_decode = 16, .prefill_chunk = kChunk});
  std::vector<std::string> streamed(cs.size());
  auto add = [&](size_t i) {
    s.add(std::make_unique<Request>(engine(), cs[i].prompt, cs[i].go,
                                    [&streamed, i](std::string_view t) { streamed[i] += t; }));
  };
  for (size_t i = 0; i < 4; ++i) add(i);
  std::vector<std::unique_ptr<Request>> done;
  int64_t most = 0;
  for (int step = 0; !s.idle() || done.size() < cs.size(); ++step) {
    ASSERT_LT(step, 1000);
    if (step == 9) add(4);  // joins while the others decode
    for (auto& r : s.step()) done.push_back(std::move(r));
    most = std::max(most, s.running() - s.prefilling());
    EXPECT_LE(s.prefilling(), s.running());
  }
  EXPECT_GE(most, 3);  // several requests really decoded in one pass
  EXPECT_GT(s.stats().decode_rows, s.stats().decode_passes);
  EXPECT_EQ(s.stats().failed, 0);
  EXPECT_EQ(s.reserve_bytes(), 0u);
  ASSERT_EQ(done.size(), cs.size());
  for (auto& r : done) {
    size_t i = 0;
    while (i < cs.size() && r->result().n_prompt != static_cast<int64_t>(cs[i].prompt.size())) ++i;
    ASSERT_LT(i, cs.size());
    expect_same(r->result(), want[i], cs[i].go.memory.policy);
    EXPECT_EQ(streamed[i], r->result().text) << cs[i].go.memory.policy;
    EXPECT_EQ(r->reserve_bytes(), 0u);
  }
}

TEST(Scheduler, CancelledAndFailingRequestsEndAloneAndGiveTheirPagesBack) {
  std::vector<Case> cs = cases();
  cs.resize(3);
  const GenerateResult want0 = alone(cs[0], 128);
  const GenerateResult want2 = alone(cs[2], 128);
  Scheduler s(engine(), SchedulerOptions{.max_decode = 16, .prefill_chunk = 128});
  GenerateOptions failing = cs[1].go;
  failing.on_step = [](int64_t step) {
    if (step == 3) throw Error(ErrorCode::kInternal, "injected failure at step 3");
  };
  s.add(std::make_unique<Request>(engine(), cs[0].prompt, cs[0].go));
  s.add(std::make_unique<Request>(engine(), cs[1].prompt, failing));
  auto third = std::make_unique<Request>(engine(), cs[2].prompt, cs[2].go);
  Request* cancelled = third.get();
  s.add(std::move(third));
  std::vector<std::unique_ptr<Request>> done;
  for (int step = 0; !s.idle(); ++step) {
    ASSERT_LT(step, 1000);
    const uint64_t before = s.reserve_bytes();
    for (auto& r : s.step()) done.push_back(std::move(r));
    EXPECT_LE(s.reserve_bytes(), before);  // nothing new joins: the reserves only shrink
    if (cancelled && !cancelled->prefilling() && cancelled->result().tokens.size() >= 3) {
      ASSERT_FALSE(cancelled->finished());
      const uint64_t held = s.reserve_bytes();
      cancelled->cancel();  // its client went away: its pages go at once
      EXPECT_EQ(cancelled->reserve_bytes(), 0u);
      EXPECT_LT(s.reserve_bytes(), held);
      cancelled = nullptr;
    }
  }
  ASSERT_EQ(done.size(), 3u);
  int errors = 0, cancels = 0;
  for (auto& r : done) {
    const GenerateResult& g = r->result();
    if (g.stop_reason == "error") {
      ++errors;
      EXPECT_NE(g.error.find("injected failure"), std::string::npos) << g.error;
      EXPECT_EQ(g.decode_steps, 3);
    } else if (g.stop_reason == "cancelled") {
      ++cancels;
      ASSERT_GT(g.tokens.size(), 0u);
      ASSERT_LT(g.tokens.size(), want2.tokens.size());
      EXPECT_EQ(g.tokens, std::vector<int32_t>(want2.tokens.begin(), want2.tokens.begin() + g.tokens.size()));
    } else {
      expect_same(g, want0, "first");
    }
    EXPECT_EQ(r->reserve_bytes(), 0u);
  }
  EXPECT_EQ(cancels, 1);
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(s.stats().failed, 1);

  // Cancelling: the request ends at once, keeps what it generated, and holds no pages.
  Request r(engine(), cs[0].prompt, cs[0].go);
  r.set_prefill_chunk(128);  // as want0 was made: the prefill's blocking decides the last bits
  EXPECT_GT(r.reserve_bytes(), 0u);
  while (r.result().tokens.size() < 6) {
    const auto in = r.next_input();
    ASSERT_TRUE(in.has_value());
    engine().model().forward_batch(std::span<const SequenceInput>(&*in, 1));
    r.consume();
  }
  r.cancel();
  EXPECT_TRUE(r.finished());
  EXPECT_EQ(r.result().stop_reason, "cancelled");
  EXPECT_EQ(r.reserve_bytes(), 0u);
  EXPECT_EQ(r.result().tokens, std::vector<int32_t>(want0.tokens.begin(), want0.tokens.begin() + 6));
  EXPECT_FALSE(r.next_input().has_value());
}

TEST(Scheduler, RefusesWhatAStepwiseRequestCannotRun) {
  Case c = cases()[0];
  c.go.memory.policy = "oracle";
  c.go.memory.budget = KvBudget::parse("30%");
  EXPECT_THROW(Request(engine(), c.prompt, c.go), Error);  // needs its own recorded pass
  c.go.memory.policy = "full";
  c.go.memory.budget = KvBudget{};
  EXPECT_THROW(Request(engine(), std::vector<int32_t>(5000, 1), c.go), Error);  // longer than the context
  EXPECT_THROW(Scheduler(engine(), SchedulerOptions{.max_decode = 0}), Error);
}

}  // namespace
}  // namespace flashmem

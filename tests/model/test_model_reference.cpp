// The default model (SmolLM2-135M-Instruct Q4_1) end to end against independent references
// kept in tests/fixtures/logits (see tests/fixtures/README.md for how they were made):
//  * last-position logits of three ≥ 500-token prompts vs a float64 numpy forward pass over
//    the same dequantised weights (relative L2 ≤ 1e-3 with f32 KV);
//  * the same logits vs llama.cpp (which quantises activations: ≤ 5e-2);
//  * the default CPU decode (8-bit activations, CpuDot::kQ8) against both references;
//  * batched prefill vs token-by-token decode, and page-size independence;
//  * sequences decoded together (Model::forward_batch) vs each alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/engine.h"
#include "logits_fixture.h"
#include "test_util.h"

namespace flashmem {
namespace {

using Fixture = test::LogitsFixture;
Fixture load_fixture(const std::string& name) { return test::load_logits_fixture(name, name, "greedy64"); }

// The float64 comparisons use the exact f32 dot products (CpuDot::kF32); the default decode
// path is tested on its own below.
Engine& engine(KvType kv, CpuDot dot = CpuDot::kF32) {
  static std::unique_ptr<Engine> engines[2][2];
  auto& e = engines[kv == KvType::kF32][dot == CpuDot::kQ8];
  if (!e) {
    EngineOptions o;
    o.model_path = test::require_default_model();
    o.kv_type = kv;
    o.n_ctx = 2048;
    o.cpu_dot = dot;
    e = Engine::load(o);
  }
  return *e;
}

std::vector<float> last_logits(Engine& eng, const std::vector<int32_t>& tokens, int page_tokens = 64) {
  KvCacheConfig c;
  c.n_layers = eng.info().n_layers;
  c.n_kv_heads = eng.info().n_kv_heads;
  c.head_dim = eng.info().head_dim;
  c.page_tokens = page_tokens;
  c.max_tokens = eng.n_ctx();
  c.type = eng.kv_type();
  PagedKvCache kv(c);
  std::vector<float> logits(eng.info().n_vocab);
  eng.model().forward(tokens, kv, logits.data());
  return logits;
}

class PromptFixtures : public ::testing::TestWithParam<std::string> {};

TEST_P(PromptFixtures, LogitsMatchFloat64ReferenceWithF32Kv) {
  const Fixture f = load_fixture(GetParam());
  ASSERT_GE(f.tokens.size(), 500u);
  const auto logits = last_logits(engine(KvType::kF32), f.tokens);
  ASSERT_TRUE(test::all_finite(logits.data(), logits.size()));
  const double err = test::rel_l2(logits.data(), f.f64_logits.data(), logits.size());
  RecordProperty("rel_l2_f64_kvf32", std::to_string(err));
  std::printf("[ %s ] rel L2 vs float64 (f32 KV): %.3e\n", f.name.c_str(), err);
  EXPECT_LE(err, 1e-3);
}

TEST_P(PromptFixtures, LogitsCloseToFloat64ReferenceWithF16Kv) {
  const Fixture f = load_fixture(GetParam());
  const auto logits = last_logits(engine(KvType::kF16), f.tokens);
  ASSERT_TRUE(test::all_finite(logits.data(), logits.size()));
  const double err = test::rel_l2(logits.data(), f.f64_logits.data(), logits.size());
  std::printf("[ %s ] rel L2 vs float64 (f16 KV): %.3e\n", f.name.c_str(), err);
  EXPECT_LE(err, 1e-3);  // the default KV precision meets the same bound
}

TEST_P(PromptFixtures, LogitsCloseToLlamaCpp) {
  const Fixture f = load_fixture(GetParam());
  const auto logits = last_logits(engine(KvType::kF16), f.tokens);
  const double err = test::rel_l2(logits.data(), f.llamacpp_logits.data(), logits.size());
  std::printf("[ %s ] rel L2 vs llama.cpp (f16 KV): %.3e\n", f.name.c_str(), err);
  EXPECT_LE(err, 5e-2);
}

// The default CPU decode rounds activations to 8 bits in its dot products (as llama.cpp does).
// Only decode-sized forward passes (one or two tokens) take that path, so the prompt is
// prefilled and its last token decoded alone: the logits then carry the rounding of every
// layer's products. Bounds: 3e-2 from float64 (measured 2026-12-04: see the printed values), and
// llama.cpp's own 5e-2.
TEST_P(PromptFixtures, Q8DotLogitsCloseToBothReferences) {
  const Fixture f = load_fixture(GetParam());
  Engine& eng = engine(KvType::kF16, CpuDot::kQ8);
  PagedKvCache kv = eng.new_cache();
  std::vector<float> logits(eng.info().n_vocab), prefilled(eng.info().n_vocab);
  eng.model().forward(std::span<const int32_t>(f.tokens).first(f.tokens.size() - 1), kv, prefilled.data());
  eng.model().forward(std::span<const int32_t>(f.tokens).last(1), kv, logits.data());
  ASSERT_TRUE(test::all_finite(logits.data(), logits.size()));
  const double e64 = test::rel_l2(logits.data(), f.f64_logits.data(), logits.size());
  const double ell = test::rel_l2(logits.data(), f.llamacpp_logits.data(), logits.size());
  // The same pass with exact dot products, to show the q8 path really ran.
  Engine& exact = engine(KvType::kF16, CpuDot::kF32);
  PagedKvCache kv2 = exact.new_cache();
  std::vector<float> exact_logits(eng.info().n_vocab);
  exact.model().forward(std::span<const int32_t>(f.tokens).first(f.tokens.size() - 1), kv2, prefilled.data());
  exact.model().forward(std::span<const int32_t>(f.tokens).last(1), kv2, exact_logits.data());
  const double e_exact = test::rel_l2(exact_logits.data(), f.f64_logits.data(), logits.size());
  std::printf("[ %s ] q8 dot: rel L2 vs float64 %.3e (f32 dot %.3e), vs llama.cpp %.3e; argmax %d / %d\n",
              f.name.c_str(), e64, e_exact, ell, argmax(logits.data(), eng.info().n_vocab),
              argmax(f.f64_logits.data(), eng.info().n_vocab));
  EXPECT_LE(e64, 3e-2);
  EXPECT_LE(ell, 5e-2);
  EXPECT_GT(e64, e_exact);  // the rounding is visible: this was not the f32 path
  EXPECT_EQ(argmax(logits.data(), eng.info().n_vocab), argmax(f.f64_logits.data(), eng.info().n_vocab));
}

// Greedy 64-token continuations side by side with the references: reports agreement and the
// first divergence (also written to $FLASHMEM_REPORT_DIR/greedy_<name>.json when set).
TEST_P(PromptFixtures, GreedyContinuationsAgainstReferences) {
  const Fixture f = load_fixture(GetParam());
  for (int variant = 0; variant < 3; ++variant) {
    const KvType kvt = variant == 0 ? KvType::kF32 : KvType::kF16;
    const CpuDot dot = variant == 2 ? CpuDot::kQ8 : CpuDot::kF32;
    Engine& eng = engine(kvt, dot);
    PagedKvCache kv = eng.new_cache();
    std::vector<float> logits(eng.info().n_vocab);
    eng.model().forward(f.tokens, kv, logits.data());
    std::vector<int32_t> ours;
    for (int i = 0; i < 64; ++i) {
      ours.push_back(argmax(logits.data(), eng.info().n_vocab));
      eng.model().forward(std::span<const int32_t>(&ours.back(), 1), kv, logits.data());
    }
    auto first_diff = [&](const std::vector<int32_t>& ref) {
      size_t i = 0;
      while (i < ours.size() && i < ref.size() && ours[i] == ref[i]) ++i;
      return i;
    };
    auto agree = [&](const std::vector<int32_t>& ref) {
      int n = 0;
      for (size_t i = 0; i < ours.size() && i < ref.size(); ++i) n += ours[i] == ref[i];
      return n;
    };
    const size_t d64 = first_diff(f.f64_greedy), dll = first_diff(f.llamacpp_greedy);
    std::printf("[ %s ] greedy64 (%s KV, %s dot): vs float64 %d/64 equal, first divergence %s; "
                "vs llama.cpp %d/64 equal, first divergence %s\n",
                f.name.c_str(), kv_type_name(kvt), cpu_dot_name(dot), agree(f.f64_greedy),
                d64 == 64 ? "none" : std::to_string(d64).c_str(), agree(f.llamacpp_greedy),
                dll == 64 ? "none" : std::to_string(dll).c_str());
    if (const char* dir = std::getenv("FLASHMEM_REPORT_DIR")) {
      const Tokenizer& tk = eng.tokenizer();
      nlohmann::json j = {{"prompt", f.name}, {"kv", kv_type_name(kvt)}, {"flashmem", ours},
                          {"f64", f.f64_greedy}, {"llamacpp", f.llamacpp_greedy},
                          {"first_divergence_f64", d64}, {"first_divergence_llamacpp", dll},
                          {"equal_f64", agree(f.f64_greedy)}, {"equal_llamacpp", agree(f.llamacpp_greedy)},
                          {"text_flashmem", tk.decode(ours)}, {"text_f64", tk.decode(f.f64_greedy)},
                          {"text_llamacpp", tk.decode(f.llamacpp_greedy)}};
      std::ofstream(std::string(dir) + "/greedy_" + f.name + "_" + kv_type_name(kvt) + "_" +
                    cpu_dot_name(dot) + ".json")
          << j.dump() << "\n";
    }
    // With logits within ~1e-6 of float64, f32 KV must reproduce the float64 greedy path.
    if (variant == 0) {
      EXPECT_EQ(d64, 64u) << "diverges from float64 at token " << d64;
    }
    // With 8-bit activations (logits ~1e-2 from float64, llama.cpp's scheme) the path may part
    // from float64 at a near tie, but not at once from both references. Measured: on an AVX2
    // machine (2026-12-04) 64 of 64 equal to float64 on all three prompts; on an AVX-512 one
    // (2026-12-05) "prose" parts from float64 at token 9 and follows llama.cpp to token 48.
    if (variant == 2) {
      EXPECT_GE(std::max(d64, dll), 16u) << "q8 dot products diverge from float64 at token " << d64
                                         << " and from llama.cpp at token " << dll;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DefaultModel, PromptFixtures, ::testing::Values("prose", "code", "chat"));

TEST(DefaultModel, PrefillEqualsTokenByTokenDecode) {
  Engine& eng = engine(KvType::kF32);
  const Fixture f = load_fixture("chat");
  const std::vector<int32_t> toks(f.tokens.begin(), f.tokens.begin() + 150);
  const auto batched = last_logits(eng, toks);
  PagedKvCache kv = eng.new_cache();
  std::vector<float> step(eng.info().n_vocab);
  for (int32_t t : toks) eng.model().forward(std::span<const int32_t>(&t, 1), kv, step.data());
  ASSERT_TRUE(test::all_finite(step.data(), step.size()));
  EXPECT_LT(test::rel_l2(step.data(), batched.data(), step.size()), 1e-5);
  EXPECT_EQ(argmax(step.data(), eng.info().n_vocab), argmax(batched.data(), eng.info().n_vocab));
}

// Model::forward_batch: sequences of different lengths, decoded together with the default
// q8 dot products and f16 KV, get bit for bit the logits (and so the greedy tokens) each gets
// alone, also as the batch shrinks when one sequence stops. A batched prefill agrees with
// prefills alone to float rounding (checked with exact f32 dots and f32 KV: the tiled products'
// blocking depends on the batch's rows, and 8-bit activations or f16 keys would turn a last-bit
// difference into a rounding step).
TEST(DefaultModel, SequencesDecodedTogetherEqualEachDecodedAlone) {
  Engine& eng = engine(KvType::kF16, CpuDot::kQ8);
  const int64_t nv = eng.info().n_vocab;
  std::vector<std::vector<int32_t>> prompts;
  const char* names[3] = {"prose", "code", "chat"};
  const size_t lens[3] = {97, 140, 61};
  for (int s = 0; s < 3; ++s) {
    const Fixture f = load_fixture(names[s]);
    prompts.emplace_back(f.tokens.begin(), f.tokens.begin() + static_cast<std::ptrdiff_t>(lens[s]));
  }
  const int steps[3] = {20, 12, 20};  // the code sequence leaves the batch after 12 steps
  // Alone: prefill, then greedy steps one at a time; every step's logits kept.
  std::vector<std::vector<std::vector<float>>> alone(3);
  for (int s = 0; s < 3; ++s) {
    PagedKvCache kv = eng.new_cache();
    std::vector<float> logits(nv);
    eng.model().forward(prompts[s], kv, logits.data());
    alone[s].push_back(logits);
    for (int i = 0; i < steps[s]; ++i) {
      const int32_t t = argmax(logits.data(), nv);
      eng.model().forward(std::span<const int32_t>(&t, 1), kv, logits.data());
      alone[s].push_back(logits);
    }
  }
  // A batched prefill (exact dots, f32 KV) against prefills alone.
  {
    Engine& exact = engine(KvType::kF32, CpuDot::kF32);
    std::vector<PagedKvCache> kvs;
    std::vector<std::vector<float>> got(3, std::vector<float>(nv)), want(3, std::vector<float>(nv));
    std::vector<SequenceInput> batch;
    for (int s = 0; s < 3; ++s) {
      kvs.push_back(exact.new_cache());
      PagedKvCache lone = exact.new_cache();
      exact.model().forward(prompts[s], lone, want[s].data());
    }
    for (int s = 0; s < 3; ++s) batch.push_back({prompts[s], &kvs[s], got[s].data()});
    exact.model().forward_batch(batch);
    for (int s = 0; s < 3; ++s) {
      ASSERT_TRUE(test::all_finite(got[s].data(), nv));
      EXPECT_LT(test::rel_l2(got[s].data(), want[s].data(), nv), 1e-5) << names[s];
      EXPECT_EQ(argmax(got[s].data(), nv), argmax(want[s].data(), nv)) << names[s];
      EXPECT_EQ(kvs[s].n_tokens(), static_cast<int64_t>(prompts[s].size()));
    }
  }
  // Together: each prefilled alone, then decode batches of one token per running sequence.
  std::vector<PagedKvCache> kvs;
  std::vector<std::vector<float>> logits(3, std::vector<float>(nv));
  for (int s = 0; s < 3; ++s) {
    kvs.push_back(eng.new_cache());
    eng.model().forward(prompts[s], kvs[s], logits[s].data());
  }
  std::vector<SequenceInput> batch;
  std::vector<int32_t> next(3);
  for (int i = 0; i < 20; ++i) {
    batch.clear();
    for (int s = 0; s < 3; ++s) {
      if (i >= steps[s]) continue;
      next[s] = argmax(logits[s].data(), nv);
      batch.push_back({std::span<const int32_t>(&next[s], 1), &kvs[s], logits[s].data()});
    }
    eng.model().forward_batch(batch);
    for (int s = 0; s < 3; ++s) {
      if (i >= steps[s]) continue;
      ASSERT_EQ(std::memcmp(logits[s].data(), alone[s][i + 1].data(), nv * sizeof(float)), 0)
          << names[s] << " step " << i << " in a batch of " << batch.size();
    }
  }
  // Bad batches are refused before anything runs.
  const int32_t t = 1;
  std::vector<SequenceInput> shared = {{std::span<const int32_t>(&t, 1), &kvs[0], nullptr},
                                       {std::span<const int32_t>(&t, 1), &kvs[0], nullptr}};
  const int64_t before = kvs[0].n_tokens();
  EXPECT_THROW(eng.model().forward_batch(shared), Error);
  std::vector<SequenceInput> empty = {{std::span<const int32_t>(), &kvs[1], nullptr}};
  EXPECT_THROW(eng.model().forward_batch(empty), Error);
  EXPECT_EQ(kvs[0].n_tokens(), before);
}

TEST(DefaultModel, PageSizeDoesNotChangeTheResult) {
  Engine& eng = engine(KvType::kF32);
  const Fixture f = load_fixture("code");
  const auto a = last_logits(eng, f.tokens, 64);
  const auto b = last_logits(eng, f.tokens, 16);
  const auto c = last_logits(eng, f.tokens, 1);
  EXPECT_LT(test::rel_l2(b.data(), a.data(), a.size()), 1e-5);
  EXPECT_LT(test::rel_l2(c.data(), a.data(), a.size()), 1e-5);
}

TEST(DefaultModel, RejectsPromptsLongerThanTheContext) {
  EngineOptions o;
  o.model_path = test::require_default_model();
  o.n_ctx = 64;
  auto eng = Engine::load(o);
  std::vector<int32_t> prompt(64, 42);
  try {
    eng->generate(prompt, GenerateOptions{});
    FAIL() << "a prompt that fills the context must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfRange);
    EXPECT_NE(std::string(e.what()).find("64 tokens"), std::string::npos) << e.what();
  }
  o.n_ctx = 1 << 20;
  EXPECT_THROW(Engine::load(o), Error);  // beyond the trained context
}

TEST(DefaultModel, ChatGenerationIsDeterministicAndStopsAtEndOfTurn) {
  Engine& eng = engine(KvType::kF16);
  const std::string text = eng.chat().render({{"user", "What is the capital of France?"}}, true);
  const auto prompt = eng.tokenizer().encode(text, true, true);
  GenerateOptions go;
  go.max_new_tokens = 48;
  go.stop_strings = eng.chat().stop_strings();
  std::string streamed;
  const GenerateResult a = eng.generate(prompt, go, [&](std::string_view s) { streamed += s; });
  const GenerateResult b = eng.generate(prompt, go);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(streamed, a.text);
  EXPECT_NE(a.text.find("Paris"), std::string::npos) << a.text;
  EXPECT_TRUE(a.stop_reason == "eos" || a.stop_reason == "stop_string") << a.stop_reason;
  EXPECT_EQ(a.text.find("<|im_end|>"), std::string::npos);
}

}  // namespace
}  // namespace flashmem

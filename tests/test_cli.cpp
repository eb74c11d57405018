// The flashmem CLI: bad flags and bad values give a usage message and exit code 2; bad model
// files give a clear error and exit code 1; `info` describes the default model.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace flashmem {
namespace {

using test::CmdResult;
using test::run_cli;

std::string temp_file(const std::string& name, const std::string& contents) {
  const auto path = std::filesystem::temp_directory_path() / ("flashmem_cli_" + name);
  std::ofstream(path, std::ios::binary) << contents;
  return path.string();
}

TEST(Cli, UsageErrorsExitWithTwo) {
  const std::string model = test::require_default_model();
  const struct {
    std::string args;
    std::string expect;
  } cases[] = {
      {"", "subcommand"},
      {"frobnicate", "frobnicate"},
      {"run --bogus-flag", "bogus"},
      {"run -p hi", "--model"},
      {"run -m " + model + " -p hi --temp -1", "temp"},
      {"run -m " + model + " -p hi --top-p 2", "top-p"},
      {"run -m " + model + " -p hi -n abc", "n-predict"},
      {"run -m " + model + " -p hi --kv-type q7", "kv-type"},
      {"run -m " + model + " -p hi --policy lru", "policy"},
      {"run -m " + model + " -p hi --policy recency --kv-budget 0%", "(0%, 100%]"},
      {"run -m " + model + " -p hi --policy recency --kv-budget 150%", "(0%, 100%]"},
      {"run -m " + model + " -p hi --policy recency --kv-budget lots", "bad KV budget"},
      {"run -m " + model + " -p hi --policy recency --kv-budget 2.5pages", "whole number"},
      {"run -m " + model + " -p hi --kv-budget 10%", "policy full keeps every page"},
      {"run -m " + model + " -p hi --cycle 0", "cycle"},
      {"run -m " + model + " -p hi --sink -1", "sink"},
      {"run -m " + model, "prompt"},
      {"info", "--model"},
      // Checked against the indexer's metadata before the model is loaded (issue #25).
      {"run -m " + model + " -p hi --policy lsa --kv-budget 50% --page-tokens 7",
       "--page-tokens 7 is not a multiple of the 16-token chunks of the indexer"},
      {"run -m " + model + " -p hi --policy lsa --kv-budget 50% --lsa-layers 4", "--lsa-layers"},
  };
  for (const auto& c : cases) {
    const CmdResult r = run_cli(c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.args << "\n" << r.out;
  }
}

// A model file that is missing is a bad file, not bad usage: exit 1, one line naming it, for
// every command that takes one.
TEST(Cli, AMissingModelFileExitsOneWithOneLine) {
  for (const std::string cmd : {"run -p hi", "info", "bench", "dump --out /tmp/flashmem_missing_model --layers 4 --ruler-samples 1"}) {
    const CmdResult r = run_cli(cmd + " -m /nonexistent/model.gguf");
    EXPECT_EQ(r.code, 1) << cmd << "\n" << r.out;
    EXPECT_NE(r.out.find("/nonexistent/model.gguf"), std::string::npos) << cmd << "\n" << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << cmd << "\n" << r.out;
  }
}

// policy lsa finds the indexer shipped for a model by its file name without .gguf and the weight
// type (so any quantisation of SmolLM2-135M-Instruct finds SmolLM2's), and names what it looked
// for when there is none.
TEST(Cli, LsaFindsTheShippedIndexerByTheModelNameWithoutItsWeightType) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "flashmem_cli_indexer_names";
  fs::create_directories(dir);
  const std::string model = test::require_default_model();
  const fs::path renamed = dir / "SmolLM2-135M-Instruct.Q4_K_M.gguf";
  const fs::path other = dir / "Qwen2.5-Coder-0.5B-Instruct.Q5_0.gguf";
  for (const fs::path& p : {renamed, other}) {
    fs::remove(p);
    fs::create_symlink(model, p);
  }
  const CmdResult ok = run_cli("run -m " + renamed.string() + " -p hi -n 1 --policy lsa --kv-budget 50%");
  EXPECT_EQ(ok.code, 0) << ok.out;
  const CmdResult none = run_cli("run -m " + other.string() + " -p hi -n 1 --policy lsa");
  EXPECT_EQ(none.code, 2) << none.out;
  EXPECT_NE(none.out.find("none shipped for 'Qwen2.5-Coder-0.5B-Instruct'"), std::string::npos) << none.out;
  fs::remove_all(dir);
}

// --policy lsa with no other flag is the configuration lsa was measured at: pages of the
// indexer's chunk size (16 tokens for the shipped one); --page-tokens still wins, and the other
// policies keep 64-token pages.
TEST(Cli, LsaPagesDefaultToTheIndexersChunkSize) {
  const std::string m = " -m " + test::require_default_model() + " -p hi -n 2 --kv-budget 50%";
  const CmdResult lsa = run_cli("run" + m + " --policy lsa");
  EXPECT_EQ(lsa.code, 0) << lsa.out;
  EXPECT_NE(lsa.out.find("page 16 tok"), std::string::npos) << lsa.out;
  const CmdResult given = run_cli("run" + m + " --policy lsa --page-tokens 32");
  EXPECT_EQ(given.code, 0) << given.out;
  EXPECT_NE(given.out.find("page 32 tok"), std::string::npos) << given.out;
  const CmdResult recency = run_cli("run" + m + " --policy recency");
  EXPECT_EQ(recency.code, 0) << recency.out;
  EXPECT_NE(recency.out.find("page 64 tok"), std::string::npos) << recency.out;
  const CmdResult help = run_cli("run --help");
  EXPECT_NE(help.out.find("--page-tokens INT:INT in [1 - 4096]=auto"), std::string::npos) << help.out;
}

// A request whose host KV mirror would not fit is refused before it runs, with the arithmetic.
TEST(Cli, AMirrorBeyondTheHostMemoryIsRefusedUpFront) {
  const std::string m = " -m " + test::require_default_model();
  // 200 tokens of the default model's f16 KV: 4 pages × 30 layers × 49,152 B = 5.625 MiB.
  const CmdResult r = run_cli("run" + m + " -p hi -n 199 --host-memory 0.001");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("host KV mirror needs 5.625 MiB (4 pages of 64 tokens × 30 layers × 49152 B, for 200 "
                       "tokens) but the host KV cap is 0.95"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_EQ(run_cli("run" + m + " -p hi -n 40 --host-memory 0.002").code, 0);  // 1 page × 30 × 49,152 B fits
}

// The CLI tells the truth: every default is in --help, and a budget that still holds every page
// of a short request says that nothing was offloaded.
TEST(Cli, HelpShowsDefaultsAndABudgetThatHoldsEverythingSaysSo) {
  const CmdResult h = run_cli("run --help");
  EXPECT_EQ(h.code, 0) << h.out;
  for (const char* d : {"=256", "=64", "=f16", "=full", "=100%", "=cpu"})
    EXPECT_NE(h.out.find(d), std::string::npos) << d << "\n" << h.out;
  const std::string model = test::require_default_model();
  const CmdResult r = run_cli("run -m " + model + " -p hi -n 2 --policy recency --kv-budget 10%");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("nothing was offloaded"), std::string::npos) << r.out;
  const CmdResult full = run_cli("run -m " + model + " -p hi -n 2");
  EXPECT_EQ(full.out.find("nothing was offloaded"), std::string::npos) << full.out;
}

// bench and dump check every argument before their first test or document, so a bad last
// value fails at once instead of after the work for the others (issue #25).
TEST(Cli, BenchAndDumpCheckEveryArgumentFirst) {
  const std::string model = test::require_default_model();
  const auto out = std::filesystem::temp_directory_path() / "flashmem_cli_dump_early";
  std::filesystem::remove_all(out);
  const struct {
    std::string args;
    int code;
    std::string expect;
  } cases[] = {
      {"bench -m " + model + " -p 64,100000 -r 1", 2, "prefill length 100000 outside [1, 8192]"},
      {"bench -m " + model + " -p 64 -d 0,8190 -r 1", 2, "depth 8190 + 64 exceeds the context 8192"},
      {"bench -m " + model + " -p 64,1024 -r 1 --prefill-budget 1%", 2, "(of 16) is below the minimum of 1"},
      {"dump -m " + model + " --out " + out.string() + " --layers 4,30 --ruler-samples 1", 2,
       "--layers 30 is outside the model's 30 layers"},
      {"dump -m " + model + " --out " + out.string() + " --layers 4 --chunk-tokens 24 --ruler-samples 1", 2,
       "--chunk-tokens 24 must divide the page size 64"},
      {"dump -m " + model + " --out " + out.string() + " --layers 4 --ruler-lengths 16k --ruler-samples 1", 1,
       "--ruler-lengths 16384 exceeds the model's context of 8192"},
      {"dump -m " + model + " --out " + out.string() + " --layers 4 --needle-samples 1", 2,
       "--needle-samples and --text-docs need --haystack DIR..."},
      {"dump -m " + model + " --out " + out.string() + " --layers 4 --text-docs 1 --haystack /nonexistent/man", 1,
       "/nonexistent/man"},
      {"dump -m " + model + " --out " + out.string() + " --layers 4 --text-docs 1 --haystack " +
           std::string(FLASHMEM_SOURCE_DIR) + "/docs --haystack-lengths 8k",
       1, "--haystack-lengths 8192 leaves no room for -n 64"},
  };
  for (const auto& c : cases) {
    const CmdResult r = run_cli(c.args);
    EXPECT_EQ(r.code, c.code) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_EQ(r.out.find("| model |"), std::string::npos) << "a test ran first: " << r.out;
  }
  EXPECT_FALSE(std::filesystem::exists(out)) << "dump wrote before refusing";
}

// -p 0 times decode only (as llama-bench); the backend column names the CPU dot products.
TEST(Cli, BenchWithoutPrefillTimesDecodeOnly) {
  const std::string model = test::require_default_model();
  const CmdResult r = run_cli("bench -m " + model + " -p 0 -d 0 -n 4 -r 1 -t 1 --cpu-dot f32");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("| tg4 @ d0 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cpu, 1 threads, f32 dot"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("| pp"), std::string::npos) << r.out;
  // -b: sequences decoded together, one row per batch size.
  const CmdResult batched = run_cli("bench -m " + model + " -p 0 -d 8 -b 1,3 -n 2 -r 1 -t 1");
  ASSERT_EQ(batched.code, 0) << batched.out;
  EXPECT_NE(batched.out.find("| tg2 @ d8 |"), std::string::npos) << batched.out;
  EXPECT_NE(batched.out.find("| tg2 @ d8 × 3 seqs |"), std::string::npos) << batched.out;
  EXPECT_EQ(run_cli("bench -m " + model + " -p 0 -b 0 -n 2 -r 1").code, 2);
  // -b with -p: sequences prefilled in one forward pass, one row per batch size.
  const CmdResult pp = run_cli("bench -m " + model + " -p 24 -d 0 -b 1,2 -n 1 -r 1 -t 1");
  ASSERT_EQ(pp.code, 0) << pp.out;
  EXPECT_NE(pp.out.find("| pp24 |"), std::string::npos) << pp.out;
  EXPECT_NE(pp.out.find("| pp24 × 2 seqs |"), std::string::npos) << pp.out;
  const CmdResult bad = run_cli("bench -m " + model + " -p 0 -d 0 -n 4 -r 1 --cpu-dot q4");
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("--cpu-dot"), std::string::npos) << bad.out;
}

TEST(Cli, MalformedModelFilesAreRefusedClearly) {
  const struct {
    std::string name;
    std::string bytes;
    std::string expect;
  } cases[] = {
      {"empty.gguf", "", "GGUF"},
      {"magic.gguf", std::string("GGML\x03\x00\x00\x00", 8) + std::string(40, '\0'), "magic"},
      {"truncated.gguf", std::string("GGUF\x03\x00\x00\x00\x05\x00", 10), "trunc"},
  };
  for (const auto& c : cases) {
    const std::string path = temp_file(c.name, c.bytes);
    for (const std::string sub : {"run -p hi -m ", "info -m "}) {
      const CmdResult r = run_cli(sub + path);
      EXPECT_EQ(r.code, 1) << c.name << "\n" << r.out;
      EXPECT_NE(r.out.find("error"), std::string::npos) << r.out;
      std::string lower = r.out;
      for (auto& ch : lower) ch = static_cast<char>(std::tolower(ch));
      std::string want = c.expect;
      for (auto& ch : want) ch = static_cast<char>(std::tolower(ch));
      EXPECT_NE(lower.find(want), std::string::npos) << c.name << "\n" << r.out;
    }
  }
}

TEST(Cli, InfoDescribesTheDefaultModel) {
  const CmdResult r = run_cli("info -m " + test::require_default_model());
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* want : {"llama", "layers        30", "576", "9 query / 3 kv", "49152",
                           "blk.0.attn_q.weight", "Q4_1", "Q8_0", "kv bytes/tok  23040 (f16), 46080 (f32)"})
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
}

TEST(Cli, PromptLongerThanContextIsAnErrorNotACrash) {
  const std::string path = temp_file("long_prompt.txt", std::string(3000, 'a') + " word");
  const CmdResult r = run_cli("run -m " + test::require_default_model() + " -f " + path + " -c 128 -n 4");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("context"), std::string::npos) << r.out;
}

TEST(Cli, RunReportsTokensAndKvBytesAsJson) {
  // The chat fixture is hand-written ChatML: its special tokens must be recognised, giving
  // exactly the ids llama.cpp produced for it (tests/fixtures/logits/chat.json).
  const std::string fx = std::string(FLASHMEM_FIXTURES_DIR);
  std::ifstream in(fx + "/logits/chat.json");
  const auto want = nlohmann::json::parse(in).at("tokens").get<std::vector<int>>();
  const auto report = (std::filesystem::temp_directory_path() / "flashmem_cli_report.json").string();
  const CmdResult r = run_cli("run -m " + test::require_default_model() + " -f " + fx +
                              "/prompts/chat.txt -n 8 --kv-type f32 --report-json " + report);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("[flashmem] KV"), std::string::npos) << r.out;
  std::ifstream rin(report);
  const auto j = nlohmann::json::parse(rin);
  EXPECT_EQ(j.at("prompt_tokens").get<size_t>(), want.size());
  const size_t n = j.at("prompt_tokens").get<size_t>() + j.at("generated_tokens").get<size_t>();
  EXPECT_EQ(j.at("kv_bytes_per_token").get<size_t>(), 46080u);  // 2·30·3·64·4
  // Whole 64-token pages per layer hold the tokens that went through the model; with the
  // default policy (full, 100%) every one of them is on the device.
  const size_t pages = (n - 1 + 63) / 64;
  const auto& kv = j.at("kv");
  EXPECT_EQ(kv.at("policy").get<std::string>(), "full");
  EXPECT_EQ(kv.at("full_kv_bytes").get<size_t>(), pages * 64u * 46080u);
  EXPECT_EQ(kv.at("final").at("device").get<size_t>(), pages * 64u * 46080u);
  EXPECT_EQ(kv.at("final").at("reserve").get<size_t>() + kv.at("final").at("open").get<size_t>(),
            pages * 64u * 46080u);
  EXPECT_EQ(kv.at("final").at("mirror").get<size_t>(), (n - 1) / 64 * 64u * 46080u);
}

TEST(Cli, RunUnderABudgetKeepsTheDeviceWithinItAndSaysSo) {
  const std::string fx = std::string(FLASHMEM_FIXTURES_DIR);
  const auto report = (std::filesystem::temp_directory_path() / "flashmem_cli_budget.json").string();
  const CmdResult r = run_cli("run -m " + test::require_default_model() + " -f " + fx +
                              "/prompts/prose.txt -n 8 --policy recency --kv-budget 50% --kv-report"
                              " --report-json " + report);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("KV report: policy recency, budget 50%"), std::string::npos) << r.out;
  std::ifstream rin(report);
  const auto kv = nlohmann::json::parse(rin).at("kv");
  const size_t page = 64u * 23040u;  // one page of every layer, f16
  const size_t budget_pages = kv.at("budget_pages").get<size_t>();
  const size_t full_pages = kv.at("full_kv_bytes").get<size_t>() / page;
  EXPECT_EQ(budget_pages, full_pages / 2);  // 50% of the request's pages, rounded down
  EXPECT_EQ(kv.at("reserve_bytes").get<size_t>(), budget_pages * page);
  EXPECT_LE(kv.at("device_bytes_peak").get<size_t>(), budget_pages * page);
  EXPECT_GT(kv.at("recall").at("pages").get<size_t>(), 0u);  // the prompt streamed through
}

}  // namespace
}  // namespace flashmem

namespace flashmem {
namespace {

// Teacher forcing a policy on full's own tokens: full agrees with itself at every step, and the
// count is bounded by the forced length for any other policy.
TEST(Cli, TeacherForcingCountsAgreementWithTheForcedTokens) {
  const std::string fx = std::string(FLASHMEM_FIXTURES_DIR);
  const auto tmp = std::filesystem::temp_directory_path();
  const std::string ref = (tmp / "flashmem_cli_tf_ref.json").string();
  const std::string base = "run -m " + test::require_default_model() + " -f " + fx + "/prompts/code.txt -n 12 ";
  ASSERT_EQ(run_cli(base + "--report-json " + ref).code, 0);
  for (const char* policy : {"--policy full", "--policy recency --kv-budget 40%"}) {
    const std::string out = (tmp / "flashmem_cli_tf.json").string();
    const auto r = run_cli(base + policy + " --force-tokens " + ref + " --report-json " + out);
    ASSERT_EQ(r.code, 0) << r.out;
    std::ifstream in(out);
    const auto j = nlohmann::json::parse(in);
    EXPECT_EQ(j.at("forced_tokens").get<int>(), 12);
    if (std::string(policy) == "--policy full") {
      EXPECT_EQ(j.at("forced_agree").get<int>(), 12);
    } else {
      EXPECT_LE(j.at("forced_agree").get<int>(), 12);
    }
    std::ifstream rin(ref);
    EXPECT_EQ(j.at("tokens"), nlohmann::json::parse(rin).at("tokens"));  // the forced ones
  }
  const std::string bad = temp_file("tf_bad.json", "{\"no_tokens\": 1}");
  const auto r = run_cli(base + "--force-tokens " + bad);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("not a run report"), std::string::npos) << r.out;
  // Tokens must be 32-bit integers (a float out of range was cast unchecked).
  for (const char* tokens : {"[1, 2.5e39]", "[1, 3000000000]", "[1, \"7\"]", "12"}) {
    const std::string odd = temp_file("tf_odd.json", std::string("{\"tokens\": ") + tokens + "}");
    const auto o = run_cli(base + "--force-tokens " + odd);
    EXPECT_EQ(o.code, 1) << tokens << ": " << o.out;
    EXPECT_NE(o.out.find("tf_odd.json"), std::string::npos) << o.out;
  }
}

}  // namespace
}  // namespace flashmem

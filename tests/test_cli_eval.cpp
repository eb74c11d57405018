// flashmem eval end to end on the default model: bad requests are refused before anything is
// written, results are appended one line per (sample, policy, budget) and a rerun resumes,
// the file suites run from user-supplied files, and --compare renders runs side by side.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace flashmem {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

std::string fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("flashmem_eval_" + name);
  fs::remove_all(d);
  return d.string();
}

std::vector<nlohmann::json> lines(const std::string& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/results.jsonl");
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(nlohmann::json::parse(l));
  return out;
}

TEST(CliEval, BadRequestsAreRefusedBeforeAnythingIsWritten) {
  const std::string m = "-m " + test::require_default_model();
  const std::string fx = std::string(FLASHMEM_FIXTURES_DIR) + "/eval/";
  const struct {
    std::string args;
    int code;
    std::string expect;
  } cases[] = {
      {"--tasks niah_single_9 --lengths 1k", 2, "unknown RULER task"},
      {"--tasks vt --lengths 16k", 1, "exceeds the model's context"},
      {"--tasks vt --lengths 4q", 2, "bad length"},
      {"--tasks vt --lengths 1k --policy recency --kv-budget 0%", 2, "(0%, 100%]"},
      {"--suite longbench-v2", 2, "needs --data"},
      {"--suite longbench-v2 --data " + fx + "longbench_v2_malformed.json", 1, "longbench_v2_malformed.json"},
      {"--suite longmemeval --data " + fx + "longmemeval_bad_turn.json", 1, "longmemeval_bad_turn.json"},
      {"--tasks vt --lengths 1k --lsa-trace " + fresh_dir("bad_trace") + ".jsonl", 2, "add lsa to --policy"},
      // Flags the suite does not read are refused, not ignored (issue #25).
      {"--suite ruler --tasks vt --lengths 1k --data " + fx + "longmemeval_bad_turn.json", 2,
       "is for --suite longbench-v2 or longmemeval: ruler generates its samples"},
      {"--tasks vt --lengths 1k --max-length 2048", 2, "--max-length is for --suite longbench-v2"},
      {"--suite longmemeval", 2, "--suite longmemeval needs --data FILE"},
      // Checked before the first prefill (and before the results file is created).
      {"--tasks vt --lengths 1k --policy lsa --kv-budget 50% --page-tokens 7", 2,
       "--page-tokens 7 is not a multiple of the 16-token chunks of the indexer"},
      {"--tasks vt --lengths 1k --samples 1 --policy full,recency --kv-budget 2pages", 2,
       "is below the minimum of 4"},
  };
  for (const auto& c : cases) {
    const std::string dir = fresh_dir("bad");
    const auto r = run_cli("eval " + m + " --out " + dir + " " + c.args);
    EXPECT_EQ(r.code, c.code) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_FALSE(fs::exists(dir + "/results.jsonl")) << c.args;
  }
}

TEST(CliEval, RulerRunsAppendsAndResumes) {
  const std::string dir = fresh_dir("ruler");
  const std::string base = "eval -m " + test::require_default_model() +
                           " --suite ruler --lengths 1k --tasks niah_single_1 --policy full,recency"
                           " --kv-budget 50% --out " + dir;
  auto r = run_cli(base + " --samples 1");
  ASSERT_EQ(r.code, 0) << r.out;
  auto l1 = lines(dir);
  ASSERT_EQ(l1.size(), 2u);  // 1 sample × (full, recency 50%)
  for (const auto& j : l1) {
    EXPECT_EQ(j.at("task"), "niah_single_1");
    EXPECT_EQ(j.at("length"), 1024);
    const double s = j.at("score").get<double>();
    EXPECT_TRUE(s == 0.0 || s == 1.0);
    EXPECT_GT(j.at("full_kv_bytes").get<double>(), 0.0);
    EXPECT_LE(j.at("device_kv_bytes_peak").get<double>(), j.at("full_kv_bytes").get<double>() + 1);
  }
  EXPECT_EQ(l1[1].at("policy"), "recency");
  EXPECT_LT(l1[1].at("device_kv_bytes_mean").get<double>(), 0.6 * l1[1].at("full_kv_bytes").get<double>());
  EXPECT_TRUE(fs::exists(dir + "/summary.md"));
  EXPECT_TRUE(fs::exists(dir + "/plot.png"));
  // A rerun with one more sample keeps the finished lines and adds only the new sample's.
  r = run_cli(base + " --samples 2");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto l2 = lines(dir);
  ASSERT_EQ(l2.size(), 4u);
  EXPECT_EQ(l2[0], l1[0]);
  EXPECT_EQ(l2[1], l1[1]);
  EXPECT_EQ(l2[2].at("sample_index"), 1);
  // --compare renders both policies and writes a plot.
  const std::string png = fresh_dir("cmp") + ".png";
  r = run_cli("eval --compare " + dir + " --plot " + png);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("full"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("recency"), std::string::npos) << r.out;
  EXPECT_GT(fs::file_size(png), 1000u);
}

// q8 KV: the records name their precision and the full KV at f16, and a directory of q8
// records is not resumed at f16 (its tables would mix two precisions).
TEST(CliEval, Q8RunsRecordTheirPrecisionAndAreNotResumedAtAnother) {
  const std::string dir = fresh_dir("q8");
  const std::string base = "eval -m " + test::require_default_model() +
                           " --suite ruler --lengths 1k --tasks niah_single_1 --samples 1 --policy full --out " + dir;
  auto r = run_cli(base + " --kv-type q8");
  ASSERT_EQ(r.code, 0) << r.out;
  auto l = lines(dir);
  ASSERT_EQ(l.size(), 1u);
  EXPECT_EQ(l[0].at("extra").at("kv_type"), "q8");
  // 68 bytes per 64-dim head vector against f16's 128 (SmolLM2: 3 kv heads, 64-token pages).
  const double full = l[0].at("full_kv_bytes").get<double>();
  const double full16 = l[0].at("extra").at("full_kv_bytes_f16").get<double>();
  EXPECT_NEAR(full16 / full, 128.0 / 68.0, 1e-6);
  r = run_cli(base);  // f16, the default
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("holds --kv-type q8 records"), std::string::npos) << r.out;
  EXPECT_EQ(lines(dir).size(), 1u);
}

TEST(CliEval, FileSuitesRunFromUserSuppliedData) {
  const std::string fx = std::string(FLASHMEM_FIXTURES_DIR) + "/eval/";
  for (const char* suite : {"longbench-v2", "longmemeval"}) {
    const std::string dir = fresh_dir(suite);
    const std::string file = std::string(suite) == "longbench-v2" ? "longbench_v2.json" : "longmemeval.json";
    const auto r = run_cli("eval -m " + test::require_default_model() + " --suite " + suite +
                           " --data " + fx + file + " --samples 2 --max-length 1024 --out " + dir);
    ASSERT_EQ(r.code, 0) << suite << "\n" << r.out;
    const auto l = lines(dir);
    ASSERT_EQ(l.size(), 2u) << suite;
    for (const auto& j : l) {
      EXPECT_EQ(j.at("suite"), suite);
      EXPECT_LE(j.at("prompt_tokens").get<int>(), 1024);
    }
  }
}

}  // namespace
}  // namespace flashmem

namespace flashmem {
namespace {

TEST(CliEval, LsaTraceRecordsTheSelectionsNextToTheAnswers) {
  // The needle fallback is forced (--lsa-widen-kept 0.001): the request widens right after the
  // first pass, which the trace still holds. (Under ASan this also guards the widened store's
  // lifetime: it must outlive the residency that unhooks itself from it.)
  const std::string dir = fresh_dir("trace");
  const std::string file = dir + "-trace.jsonl";
  fs::remove(file);
  const auto r = run_cli("eval -m " + test::require_default_model() +
                         " --suite ruler --lengths 1k --tasks niah_single_1 --samples 1 --policy lsa"
                         " --kv-budget 30% --page-tokens 16 --lsa-widen-kept 0.001 --out " + dir +
                         " --lsa-trace " + file);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto results = lines(dir);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].at("extra").at("widened_at_step"), 0);
  std::ifstream in(file);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  const auto j = nlohmann::json::parse(line);
  EXPECT_FALSE(std::getline(in, line));  // one lsa decode, one line
  EXPECT_EQ(j.at("prompt_id"), results[0].at("prompt_id"));
  EXPECT_EQ(j.at("score"), results[0].at("score"));
  const int64_t n_tok = j.at("prompt_tokens").get<int64_t>();
  EXPECT_EQ(n_tok, results[0].at("prompt_tokens").get<int64_t>());
  // The needle's number is in the prompt once: a span of a few tokens inside it.
  ASSERT_EQ(j.at("answers").size(), 1u);
  const auto& a = j.at("answers")[0];
  EXPECT_EQ(a.at("text"), results[0].at("answers")[0]);
  const int64_t b = a.at("token_begin").get<int64_t>(), e = a.at("token_end").get<int64_t>();
  EXPECT_GE(b, 0);
  EXPECT_LT(b, e);
  EXPECT_LE(e - b, 8);  // 7 digits, one token each, and the space before them at most
  EXPECT_LE(e, n_tok);
  // The first pass: right after the prompt, over every completed page; then the widen ends lsa.
  ASSERT_EQ(j.at("selections").size(), 1u);
  const auto& s0 = j.at("selections")[0];
  EXPECT_EQ(s0.at("cycle"), 0);
  EXPECT_EQ(s0.at("step"), 0);
  const int64_t mb = s0.at("middle")[0].get<int64_t>(), me = s0.at("middle")[1].get<int64_t>();
  EXPECT_LT(mb, me);
  EXPECT_EQ(s0.at("chunk_scores").size(), static_cast<size_t>(n_tok / 16));
  for (const auto& x : s0.at("chunk_scores")) {
    const double v = x.get<double>();
    EXPECT_TRUE(v >= 0.0 && v <= 1.0) << v;  // probabilities, no NaN
  }
  const auto pages = s0.at("pages").get<std::vector<int64_t>>();
  EXPECT_GT(pages.size(), 0u);
  EXPECT_LE(static_cast<int64_t>(pages.size()), s0.at("slots").get<int64_t>());
  std::set<int64_t> seen;
  for (int64_t p : pages) {
    EXPECT_TRUE(p >= mb && p < me) << p;
    EXPECT_TRUE(seen.insert(p).second) << "page " << p << " twice";
  }
  const double kept = s0.at("kept_fraction").get<double>();
  EXPECT_TRUE(kept >= 0.0 && kept <= 1.0);
}

}  // namespace
}  // namespace flashmem

namespace flashmem {
namespace {

// Two small families of generated text under DIR: "notes" (prose paragraphs) and "rows" (CSV).
std::string needle_families(const std::string& name) {
  const fs::path root = fs::path(fresh_dir(name));
  fs::create_directories(root / "notes");
  fs::create_directories(root / "rows");
  std::ofstream notes(root / "notes" / "a.txt"), rows(root / "rows" / "t.csv");
  for (int i = 0; i < 200; ++i) {
    notes << "Paragraph " << i << " talks about the river, the mill and the old road north of town.\n\n";
    rows << i << ",widget" << i % 17 << "," << (i * 37) % 1000 << "\n";
  }
  return root.string();
}

// A checkpoint settles lsa's knobs (train-indexer --select --set lsa.KEY=VALUE): --policy lsa
// with no flag runs them, a given flag wins, and a bad setting is refused when it is written.
TEST(CliEval, TheIndexerCheckpointSettlesLsaKnobs) {
  const std::string shipped = std::string(FLASHMEM_SOURCE_DIR) + "/indexers/SmolLM2-135M-Instruct.safetensors";
  const std::string ix = (fs::temp_directory_path() / "flashmem_ix_settled.safetensors").string();
  fs::remove(ix);
  const auto w = run_cli("train-indexer --select " + shipped + " --set lsa.spread=0 --set lsa.observe=0 "
                         "--set lsa.contrast=8 --out " + ix);
  ASSERT_EQ(w.code, 0) << w.out;
  const std::string m = "-m " + test::require_default_model();
  const std::string run = "eval " + m + " --suite ruler --lengths 1k --tasks niah_single_1 --samples 1 "
                          "--policy lsa --kv-budget 50% --indexer " + ix;
  const std::string dir = fresh_dir("settled");
  const auto r = run_cli(run + " --out " + dir);
  ASSERT_EQ(r.code, 0) << r.out;
  auto recs = lines(dir);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].at("extra").at("lsa_spread"), 0);
  EXPECT_EQ(recs[0].at("extra").at("lsa_observe"), 0);
  EXPECT_EQ(recs[0].at("extra").at("lsa_contrast"), 8);
  EXPECT_EQ(recs[0].at("extra").at("lsa_observe_spread"), 1);  // not settled: the default
  EXPECT_EQ(recs[0].at("extra").at("page_tokens"), 16);         // the indexer's chunks
  const std::string dir2 = fresh_dir("settled_flag");
  const auto r2 = run_cli(run + " --lsa-spread 2 --out " + dir2);
  ASSERT_EQ(r2.code, 0) << r2.out;
  recs = lines(dir2);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].at("extra").at("lsa_spread"), 2);  // the flag wins
  EXPECT_EQ(recs[0].at("extra").at("lsa_observe"), 0);
  // The shipped checkpoint, no flags: the defaults it was measured with.
  const std::string dir3 = fresh_dir("settled_shipped");
  const auto r3 = run_cli("eval " + m + " --suite ruler --lengths 1k --tasks niah_single_1 --samples 1 "
                          "--policy lsa --kv-budget 50% --out " + dir3);
  ASSERT_EQ(r3.code, 0) << r3.out;
  recs = lines(dir3);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].at("extra").at("lsa_spread"), 1);
  EXPECT_EQ(recs[0].at("extra").at("lsa_observe"), 32);
  EXPECT_EQ(recs[0].at("extra").at("lsa_contrast"), 16);
  for (const auto& [set, expect] : std::vector<std::pair<std::string, std::string>>{
           {"lsa.bogus=1", "expected lsa.KEY=VALUE"},
           {"lsa.threshold=abc", "lsa.threshold = 'abc' is not a number"},
           {"lsa.threshold=1.5", "threshold"},
           {"lsa.spread", "expected lsa.KEY=VALUE"}}) {
    const std::string bad = (fs::temp_directory_path() / "flashmem_ix_bad_set.safetensors").string();
    fs::remove(bad);
    const auto e = run_cli("train-indexer --select " + shipped + " --set " + set + " --out " + bad);
    EXPECT_EQ(e.code, 2) << set << "\n" << e.out;
    EXPECT_NE(e.out.find(expect), std::string::npos) << set << "\n" << e.out;
    EXPECT_FALSE(fs::exists(bad)) << set;
  }
  fs::remove(ix);
}

TEST(CliEval, NeedleUsageErrors) {
  const std::string m = "-m " + test::require_default_model();
  const std::string fam = needle_families("needle_bad");
  const fs::path empty = fs::path(fam) / "empty";
  fs::create_directories(empty);
  std::ofstream(empty / "zero.txt").close();
  fs::create_directories(fs::path(fam) / "x" / "notes");
  std::ofstream(fs::path(fam) / "x" / "notes" / "b.txt") << "other notes\n";
  const struct {
    std::string args;
    int code;
    std::string expect;
  } cases[] = {
      {"--suite needle --lengths 1k", 2, "needs --haystack"},
      {"--suite ruler --tasks vt --lengths 1k --haystack " + fam + "/notes", 2, "--haystack is for --suite needle"},
      {"--suite needle --haystack " + fam + "/notes", 2, "needs --lengths"},
      {"--suite needle --lengths 1k --haystack " + fam + "/notes --tasks vt", 2, "--tasks is for --suite ruler"},
      {"--suite needle --lengths 1k --haystack " + fam + "/missing", 2, "missing"},
      {"--suite needle --lengths 1k --haystack " + fam + "/notes," + fam + "/empty", 1, "no usable text"},
      {"--suite needle --lengths 1k --haystack " + fam + "/notes --haystack " + fam + "/x/notes", 2,
       "two haystack directories are named 'notes'"},
  };
  for (const auto& c : cases) {
    const std::string dir = fresh_dir("needle_out");
    const auto r = run_cli("eval " + m + " --out " + dir + " " + c.args);
    EXPECT_EQ(r.code, c.code) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_FALSE(fs::exists(dir + "/results.jsonl")) << c.args;
  }
}

TEST(CliEval, NeedleReportsEveryFamily) {
  const std::string fam = needle_families("needle_run");
  const std::string dir = fresh_dir("needle_results");
  const auto r = run_cli("eval -m " + test::require_default_model() + " --suite needle --haystack " + fam +
                         "/notes," + fam + "/rows --lengths 512 --samples 2 --seed 3 --policy full --out " + dir);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto l = lines(dir);
  ASSERT_EQ(l.size(), 4u);  // 2 families × 2 samples × full, at 512 tokens
  std::set<std::string> tasks, shapes;
  for (const auto& j : l) {
    EXPECT_EQ(j.at("suite"), "needle");
    EXPECT_EQ(j.at("length"), 512);
    EXPECT_LE(j.at("prompt_tokens").get<int>() + 32, 512);
    EXPECT_GT(j.at("prompt_tokens").get<int>(), 400);
    tasks.insert(j.at("task").get<std::string>());
    shapes.insert(j.at("extra").at("needle_shape").get<std::string>());
    EXPECT_EQ(j.at("prompt_id").get<std::string>().rfind("needle/" + j.at("task").get<std::string>() + "/512/seed3/", 0), 0u);
  }
  EXPECT_EQ(tasks, (std::set<std::string>{"notes", "rows"}));
  EXPECT_GE(shapes.size(), 2u);  // consecutive samples take different shapes
  std::ifstream in(dir + "/summary.md");
  const std::string md((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(md.find("| needle | full | 100% | 512 | notes | 2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| needle | full | 100% | 512 | rows | 2 |"), std::string::npos) << md;
}

}  // namespace
}  // namespace flashmem

// Tests of eval result recording and reporting (src/eval/results.h) and the progress bar
// (src/eval/progress.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "eval/progress.h"
#include "eval/results.h"
#include "eval/selection_trace.h"

namespace flashmem::eval {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A fresh directory under the test temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path = fs::path(testing::TempDir()) /
           ("fm_results_" + std::string(info->name()) + "_" + std::to_string(::getpid()) + "_" +
            std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
  std::string sub(const std::string& name) const { return (path / name).string(); }
};

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

void write_file(const std::string& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << s;
  f.close();
  ASSERT_TRUE(f.good()) << "cannot write " << p;
}

EvalRecord rec(const std::string& task, int64_t length, int64_t idx, const std::string& policy,
               const std::string& budget, double score, double dev_mean = 100.0,
               uint64_t peak = 120, uint64_t full = 1000, const std::string& suite = "ruler") {
  EvalRecord r;
  r.suite = suite;
  r.task = task;
  r.length = length;
  r.sample_index = idx;
  r.prompt_id = suite + "/" + task + "/" + std::to_string(length) + "/seed0/" + std::to_string(idx);
  r.seed = 0;
  r.policy = policy;
  r.budget = budget;
  r.prompt_tokens = length - 50;
  r.prediction = "the answer is 42";
  r.answers = {"42"};
  r.score = score;
  r.device_kv_bytes_mean = dev_mean;
  r.device_kv_bytes_peak = peak;
  r.full_kv_bytes = full;
  r.prefill_seconds = 0.5;
  r.decode_seconds = 0.25;
  r.generated_tokens = 6;
  return r;
}

template <typename F>
void expect_error(F&& f, ErrorCode code, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected flashmem::Error(" << error_code_name(code) << ")";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message lacks '" << n << "': " << e.what();
  }
}

size_t count_lines(const std::string& s) {
  return static_cast<size_t>(std::count(s.begin(), s.end(), '\n'));
}

// ---- records ---------------------------------------------------------------------------------

TEST(EvalResults, RecordRoundTrip) {
  EvalRecord r = rec("niah_multivalue", 8192, 7, "h2o", "32pages", 0.75, 12345.5, 20000, 99999);
  r.seed = (uint64_t{1} << 63) + 5;  // above int64
  r.prediction = "line1\nline2 \"quoted\" ünïcödé";
  r.answers = {"a", "b c", ""};
  r.synthetic_substitute = true;
  r.extra = json{{"depth", 37.5}, {"tags", {"x", "y"}}};
  const std::string line = to_json(r).dump();
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const EvalRecord back = from_json(json::parse(line), "t");
  EXPECT_TRUE(back == r);
  EXPECT_EQ(back.seed, r.seed);
  EXPECT_EQ(back.prediction, r.prediction);
  EXPECT_EQ(back.answers, r.answers);
  EXPECT_DOUBLE_EQ(back.device_kv_bytes_mean, 12345.5);
  EXPECT_EQ(back.extra["tags"][1], "y");
  EvalRecord other = r;
  other.score = 0.5;
  EXPECT_FALSE(other == r);
}

TEST(EvalResults, FromJsonIsStrict) {
  const json good = to_json(rec("vt", 4096, 0, "full", "100%", 1.0));
  {
    json j = good;
    j.erase("score");
    expect_error([&] { from_json(j, "f.jsonl:3"); }, ErrorCode::kFormat,
                 {"f.jsonl:3", "\"score\"", "missing"});
  }
  {
    json j = good;
    j["length"] = "4096";
    expect_error([&] { from_json(j, "f.jsonl:4"); }, ErrorCode::kFormat,
                 {"f.jsonl:4", "\"length\""});
  }
  {
    json j = good;
    j["length"] = 4096.5;
    expect_error([&] { from_json(j, "w"); }, ErrorCode::kFormat, {"\"length\""});
  }
  {
    json j = good;
    j["prompt_tokens"] = -3;
    expect_error([&] { from_json(j, "w"); }, ErrorCode::kFormat, {"\"prompt_tokens\""});
  }
  {
    json j = good;
    j["score"] = 1.5;
    expect_error([&] { from_json(j, "w"); }, ErrorCode::kFormat, {"\"score\"", "[0, 1]"});
  }
  {
    json j = good;
    j["answers"] = json::array({"a", 3});
    expect_error([&] { from_json(j, "w"); }, ErrorCode::kFormat, {"\"answers\""});
  }
  {
    json j = good;
    j["synthetic_substitute"] = 1;
    expect_error([&] { from_json(j, "w"); }, ErrorCode::kFormat, {"\"synthetic_substitute\""});
  }
  {
    json j = good;
    j["scor"] = 1.0;
    expect_error([&] { from_json(j, "w"); }, ErrorCode::kFormat, {"unknown field \"scor\""});
  }
  expect_error([&] { from_json(json::array(), "w"); }, ErrorCode::kFormat, {"object"});
  EXPECT_NO_THROW(from_json(good, "w"));
}

// ---- writer ----------------------------------------------------------------------------------

TEST(EvalResults, AppendAndReopenResumes) {
  TempDir tmp;
  const std::string dir = tmp.sub("run/nested");  // created on open
  std::vector<EvalRecord> rs = {rec("niah_single_1", 4096, 0, "recency", "10%", 1.0),
                                rec("niah_single_1", 4096, 1, "recency", "10%", 0.0),
                                rec("vt", 4096, 0, "recency", "10%", 0.6)};
  {
    ResultsWriter w(dir, nullptr);
    EXPECT_TRUE(w.records().empty());
    for (const auto& r : rs) {
      EXPECT_FALSE(w.done(r));
      w.append(r);
      EXPECT_TRUE(w.done(r));
    }
    // Each line is on disk as soon as append returns.
    EXPECT_EQ(count_lines(read_file(w.path())), 3u);
    expect_error([&] { w.append(rs[1]); }, ErrorCode::kInvalidArgument, {"already"});
  }
  ResultsWriter w(dir, nullptr);
  ASSERT_EQ(w.records().size(), 3u);
  EXPECT_TRUE(w.warnings().empty());
  for (size_t i = 0; i < rs.size(); ++i) {
    EXPECT_TRUE(w.records()[i] == rs[i]) << i;
    EXPECT_TRUE(w.done(key_of(rs[i])));
  }
  EXPECT_TRUE(w.done(ResultKey{"ruler/vt/4096/seed0/0", "recency", "10%"}));
  EXPECT_FALSE(w.done(ResultKey{"ruler/vt/4096/seed0/0", "recency", "20%"}));
  EXPECT_FALSE(w.done(ResultKey{"ruler/vt/4096/seed0/0", "full", "10%"}));
  EXPECT_FALSE(w.done(ResultKey{"ruler/vt/4096/seed0/1", "recency", "10%"}));
  const EvalRecord more = rec("vt", 4096, 1, "recency", "10%", 0.2);
  w.append(more);
  const auto loaded = load_results(dir, nullptr);
  ASSERT_EQ(loaded.size(), 4u);
  EXPECT_TRUE(loaded[3] == more);
}

TEST(EvalResults, InvalidUtf8PredictionIsReplacedNotFatal) {
  TempDir tmp;
  EvalRecord r = rec("vt", 4096, 0, "full", "100%", 0.0);
  r.prediction = std::string("ab\xe2\x82", 4);  // a character cut short
  {
    ResultsWriter w(tmp.str(), nullptr);
    w.append(r);
  }
  const auto back = load_results(tmp.str(), nullptr);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].prediction, "ab\xef\xbf\xbd");  // U+FFFD
}

TEST(EvalResults, SecondWriterIsLockedOut) {
  TempDir tmp;
  ResultsWriter w(tmp.str(), nullptr);
  expect_error([&] { ResultsWriter w2(tmp.str(), nullptr); }, ErrorCode::kIo, {"locked"});
}

TEST(EvalResults, TruncatedLastLineIsRepaired) {
  TempDir tmp;
  const std::string path = tmp.sub("results.jsonl");
  {
    ResultsWriter w(tmp.str(), nullptr);
    w.append(rec("qa_1", 4096, 0, "full", "100%", 1.0));
    w.append(rec("qa_1", 4096, 1, "full", "100%", 0.0));
  }
  const std::string good = read_file(path);
  const std::string third = to_json(rec("qa_1", 4096, 2, "full", "100%", 1.0)).dump();
  write_file(path, good + third.substr(0, third.size() / 2));  // a crash mid-write

  // Read-only loading skips the torn line and leaves the file alone.
  EXPECT_EQ(load_results(tmp.str(), nullptr).size(), 2u);
  EXPECT_EQ(read_file(path).size(), good.size() + third.size() / 2);

  ResultsWriter w(tmp.str(), nullptr);
  EXPECT_EQ(w.records().size(), 2u);
  ASSERT_EQ(w.warnings().size(), 1u);
  EXPECT_NE(w.warnings()[0].find("results.jsonl:3"), std::string::npos) << w.warnings()[0];
  EXPECT_EQ(read_file(path), good);  // truncated back to the last good newline
  EXPECT_FALSE(w.done(ResultKey{"ruler/qa_1/4096/seed0/2", "full", "100%"}));
  w.append(rec("qa_1", 4096, 2, "full", "100%", 1.0));
  const auto loaded = load_results(tmp.str(), nullptr);
  ASSERT_EQ(loaded.size(), 3u);
  EXPECT_EQ(loaded[2].sample_index, 2);
}

TEST(EvalResults, GarbledLastLineWithNewlineIsDropped) {
  TempDir tmp;
  const std::string path = tmp.sub("results.jsonl");
  const std::string line = to_json(rec("vt", 4096, 0, "full", "100%", 1.0)).dump() + "\n";
  write_file(path, line + std::string(7, '\0') + "\n\n");
  ResultsWriter w(tmp.str(), nullptr);
  EXPECT_EQ(w.records().size(), 1u);
  EXPECT_EQ(w.warnings().size(), 1u);
  EXPECT_EQ(read_file(path), line);
}

TEST(EvalResults, UnterminatedValidLastLineIsKept) {
  TempDir tmp;
  const std::string path = tmp.sub("results.jsonl");
  const std::string line = to_json(rec("vt", 4096, 0, "full", "100%", 1.0)).dump();
  write_file(path, line);
  {
    ResultsWriter w(tmp.str(), nullptr);
    EXPECT_EQ(w.records().size(), 1u);
    EXPECT_TRUE(w.warnings().empty());
    w.append(rec("vt", 4096, 1, "full", "100%", 0.0));
  }
  const std::string text = read_file(path);
  EXPECT_EQ(text.substr(0, line.size() + 1), line + "\n");
  EXPECT_EQ(load_results(tmp.str(), nullptr).size(), 2u);
}

TEST(EvalResults, MalformedMiddleLineFailsAndLeavesFileUnchanged) {
  TempDir tmp;
  const std::string path = tmp.sub("results.jsonl");
  const std::string l1 = to_json(rec("vt", 4096, 0, "full", "100%", 1.0)).dump();
  const std::string l3 = to_json(rec("vt", 4096, 1, "full", "100%", 1.0)).dump();
  const std::string bytes = l1 + "\n{\"suite\": \"ruler\", oops\n" + l3 + "\n" + l3.substr(0, 20);
  write_file(path, bytes);
  expect_error([&] { ResultsWriter w(tmp.str(), nullptr); }, ErrorCode::kFormat,
               {"results.jsonl:2", "invalid JSON"});
  EXPECT_EQ(read_file(path), bytes);
  expect_error([&] { load_results(tmp.str(), nullptr); }, ErrorCode::kFormat, {"results.jsonl:2"});

  // A last line that is JSON but not a record is not a torn write: an error, not a repair.
  json bad = json::parse(l3);
  bad.erase("policy");
  const std::string bytes2 = l1 + "\n" + bad.dump() + "\n";
  write_file(path, bytes2);
  expect_error([&] { ResultsWriter w(tmp.str(), nullptr); }, ErrorCode::kFormat,
               {"results.jsonl:2", "\"policy\""});
  EXPECT_EQ(read_file(path), bytes2);
}

TEST(EvalResults, LoadMissingDirIsIoError) {
  TempDir tmp;
  expect_error([&] { load_results(tmp.sub("nope"), nullptr); }, ErrorCode::kIo, {"results.jsonl"});
}

// ---- summary ---------------------------------------------------------------------------------

std::vector<EvalRecord> summary_fixture() {
  std::vector<EvalRecord> rs;
  // recency 10% @4096: t1 binary scores 1,0,1,1; t2 scores 0.5, 0.7.
  rs.push_back(rec("t1", 4096, 0, "recency", "10%", 1.0, 100, 150, 1000));
  rs.push_back(rec("t1", 4096, 1, "recency", "10%", 0.0, 200, 450, 1000));
  rs.push_back(rec("t2", 4096, 0, "recency", "10%", 0.5, 500, 800, 1000));
  rs.push_back(rec("t1", 4096, 2, "recency", "10%", 1.0, 300, 300, 1000));
  rs.push_back(rec("t1", 4096, 3, "recency", "10%", 1.0, 400, 400, 1000));
  rs.push_back(rec("t2", 4096, 1, "recency", "10%", 0.7, 700, 900, 2000));
  // Budget ordering: "100%" after "50%" after "10%" (string order would differ).
  rs.push_back(rec("t1", 4096, 0, "recency", "100%", 1.0, 1000, 1000, 1000));
  rs.push_back(rec("t1", 4096, 0, "recency", "50%", 0.5, 500, 500, 1000));
  // Another length and policy.
  rs.push_back(rec("t1", 8192, 0, "full", "100%", 0.0, 2000, 2000, 2000));
  rs.push_back(rec("t1", 8192, 1, "full", "100%", 0.0, 2000, 2000, 2000));
  return rs;
}

TEST(EvalResults, SummaryHandComputed) {
  const Summary s = summarize(summary_fixture());
  ASSERT_EQ(s.tasks.size(), 5u);
  ASSERT_EQ(s.averages.size(), 4u);

  const SummaryRow& t1 = s.tasks[0];
  EXPECT_EQ(t1.policy, "recency");
  EXPECT_EQ(t1.budget, "10%");
  EXPECT_EQ(t1.task, "t1");
  EXPECT_EQ(t1.n, 4);
  EXPECT_NEAR(t1.score, 75.0, 1e-9);
  EXPECT_EQ(t1.ci_method, "wilson");
  EXPECT_NEAR(t1.ci_low, 30.0641843, 1e-5);  // Wilson, 3 of 4, z = 1.96
  EXPECT_NEAR(t1.ci_high, 95.4412739, 1e-5);
  EXPECT_NEAR(t1.device_kv_bytes_mean, 250.0, 1e-9);
  EXPECT_EQ(t1.device_kv_bytes_peak, 450u);
  EXPECT_NEAR(t1.full_kv_bytes_mean, 1000.0, 1e-9);
  EXPECT_NEAR(t1.device_kv_ratio, 0.25, 1e-12);

  const SummaryRow& t2 = s.tasks[1];
  EXPECT_EQ(t2.task, "t2");
  EXPECT_EQ(t2.n, 2);
  EXPECT_NEAR(t2.score, 60.0, 1e-9);
  EXPECT_EQ(t2.ci_method, "normal");
  EXPECT_NEAR(t2.ci_low, 40.4003602, 1e-5);  // 0.6 ± 1.96·√(0.02/2)
  EXPECT_NEAR(t2.ci_high, 79.5996398, 1e-5);
  EXPECT_NEAR(t2.device_kv_bytes_mean, 600.0, 1e-9);
  EXPECT_NEAR(t2.full_kv_bytes_mean, 1500.0, 1e-9);
  EXPECT_NEAR(t2.device_kv_ratio, 0.4, 1e-12);

  const SummaryRow& a = s.averages[0];
  EXPECT_EQ(a.task, "average");
  EXPECT_EQ(a.budget, "10%");
  EXPECT_EQ(a.length, 4096);
  EXPECT_EQ(a.n, 2);  // tasks
  EXPECT_NEAR(a.score, 67.5, 1e-9);
  EXPECT_NEAR(a.ci_low, 41.1131773, 1e-5);  // 0.675 ± 1.96·√(0.25/4 + 0.02/2)/2
  EXPECT_NEAR(a.ci_high, 93.8868227, 1e-5);
  EXPECT_NEAR(a.device_kv_bytes_mean, 425.0, 1e-9);
  EXPECT_EQ(a.device_kv_bytes_peak, 900u);
  EXPECT_NEAR(a.full_kv_bytes_mean, 1250.0, 1e-9);
  EXPECT_NEAR(a.device_kv_ratio, 0.34, 1e-12);

  EXPECT_EQ(s.averages[1].budget, "50%");
  EXPECT_EQ(s.averages[2].budget, "100%");
  EXPECT_EQ(s.averages[2].policy, "recency");
  // A single non-binary sample has no interval.
  EXPECT_EQ(s.tasks[2].budget, "50%");
  EXPECT_EQ(s.tasks[2].ci_method, "normal");
  EXPECT_TRUE(std::isnan(s.tasks[2].ci_low));
  EXPECT_TRUE(std::isnan(s.averages[1].ci_low));
  // 0 of 2: Wilson still gives a non-degenerate upper bound.
  const SummaryRow& f = s.averages[3];
  EXPECT_EQ(f.policy, "full");
  EXPECT_EQ(f.length, 8192);
  EXPECT_NEAR(f.score, 0.0, 1e-12);
  EXPECT_EQ(s.tasks[4].ci_method, "wilson");
  EXPECT_NEAR(s.tasks[4].ci_low, 0.0, 1e-9);
  EXPECT_GT(s.tasks[4].ci_high, 50.0);
  EXPECT_NEAR(f.device_kv_ratio, 1.0, 1e-12);
}

// q8 records: their own rows ("lsa q8"), device KV against the full KV at f16.
TEST(EvalResults, SummaryNamesTheKvPrecisionAndUsesTheF16FullKv) {
  std::vector<EvalRecord> rs;
  rs.push_back(rec("t1", 4096, 0, "lsa", "27%", 1.0, 150, 160, 1000));  // f16: no kv_type
  EvalRecord q = rec("t1", 4096, 0, "lsa", "27%", 0.0, 140, 150, 530);
  q.extra = {{"kv_type", "q8"}, {"full_kv_bytes_f16", 1000}};
  rs.push_back(q);
  q.sample_index = 1;
  q.extra["full_kv_bytes_f16"] = 3000;
  q.device_kv_bytes_mean = 260;
  rs.push_back(q);
  const Summary s = summarize(rs);
  ASSERT_EQ(s.tasks.size(), 2u);
  EXPECT_EQ(s.tasks[0].policy, "lsa");
  EXPECT_EQ(s.tasks[0].n, 1);
  EXPECT_NEAR(s.tasks[0].device_kv_ratio, 0.15, 1e-12);
  EXPECT_EQ(s.tasks[1].policy, "lsa q8");
  EXPECT_EQ(s.tasks[1].n, 2);
  EXPECT_NEAR(s.tasks[1].full_kv_bytes_mean, 2000.0, 1e-9);
  EXPECT_NEAR(s.tasks[1].device_kv_ratio, 200.0 / 2000.0, 1e-12);
}

TEST(EvalResults, SummaryFilesAndMarkdown) {
  TempDir tmp;
  const Summary s = summarize(summary_fixture());
  const std::string md = render_summary_markdown(s);
  EXPECT_NE(md.find("| ruler | recency | 10% | 4096 | t1 | 4 | 75.0 | 30.1–95.4 (wilson) |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| ruler | recency | 10% | 4096 | 2 | 67.5 | 41.1–93.9 |"), std::string::npos)
      << md;
  write_summary(tmp.str(), s);
  EXPECT_EQ(read_file(tmp.sub("summary.md")), md);
  const json j = json::parse(read_file(tmp.sub("summary.json")));
  ASSERT_EQ(j["averages"].size(), 4u);
  EXPECT_NEAR(j["averages"][0]["score"].get<double>(), 67.5, 1e-9);
  EXPECT_EQ(j["tasks"][0]["n"], 4);
  EXPECT_TRUE(j["tasks"][2]["ci_low"].is_null());
}

// ---- compare ---------------------------------------------------------------------------------

TEST(EvalResults, CompareShowsPoliciesSideBySide) {
  TempDir tmp;
  {
    ResultsWriter w(tmp.sub("full"), nullptr);
    w.append(rec("t1", 4096, 0, "full", "100%", 1.0, 1048576, 1048576, 1048576));
    w.append(rec("t2", 4096, 0, "full", "100%", 0.5, 1048576, 1048576, 1048576));
  }
  {
    ResultsWriter w(tmp.sub("rec"), nullptr);
    w.append(rec("t1", 4096, 0, "recency", "10%", 0.0, 104857.6, 110000, 1048576));
    w.append(rec("t1", 8192, 0, "recency", "10%", 1.0, 209715.2, 220000, 2097152));
  }
  const std::string md = render_compare_markdown({tmp.sub("full"), tmp.sub("rec")});
  EXPECT_NE(md.find("| task | full 100% | recency 10% |"), std::string::npos) << md;
  EXPECT_NE(md.find("| t1 | 100.0 · 1.00 MiB (100.0%) | 0.0 · 0.10 MiB (10.0%) |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| t2 | 50.0 · 1.00 MiB (100.0%) |  |"), std::string::npos) << md;
  EXPECT_NE(md.find("| **average** | 75.0 · 1.00 MiB (100.0%) | 0.0 · 0.10 MiB (10.0%) * |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("`recency 10%`: no results for t2"), std::string::npos) << md;
  EXPECT_NE(md.find("length 8192"), std::string::npos) << md;
  EXPECT_NE(md.find("`full 100%`: no results at this length"), std::string::npos) << md;

  // The same configuration in two runs is told apart by directory name.
  const std::string twice = render_compare_markdown({tmp.sub("full"), tmp.sub("full/")});
  EXPECT_NE(twice.find("full 100% (full)"), std::string::npos) << twice;
  expect_error([&] { render_compare_markdown({}); }, ErrorCode::kInvalidArgument, {});
}

// ---- plot ------------------------------------------------------------------------------------

bool have_gnuplot() {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "");
  for (std::string d; std::getline(ss, d, ':');)
    if (!d.empty() && ::access((d + "/gnuplot").c_str(), X_OK) == 0) return true;
  return false;
}

TEST(EvalResults, PlotWritesPng) {
  ASSERT_TRUE(have_gnuplot())
      << "gnuplot is not installed: it is a declared dependency, run scripts/install-deps.sh "
         "(Debian package gnuplot-nox)";
  TempDir tmp;
  std::vector<EvalRecord> rs;
  for (const int64_t len : {4096, 8192}) {
    int64_t i = 0;
    for (const std::string task : {"t1", "t2"}) {
      rs.push_back(rec(task, len, i, "full", "100%", 1.0, 1000, 1000, 1000));
      rs.push_back(rec(task, len, i, "recency", "10%", 0.25, 100, 110, 1000));
      rs.push_back(rec(task, len, i, "recency", "50%", 0.75, 500, 510, 1000));
      rs.push_back(rec(task, len, i, "it's \"odd\" | name", "25%", 0.5, 250, 260, 1000));
      EvalRecord q8 = rec(task, len, i, "lsa", "27%", 0.5, 140, 150, 530);
      q8.extra = {{"kv_type", "q8"}, {"full_kv_bytes_f16", 1000}};
      rs.push_back(q8);
      ++i;
    }
  }
  const std::string png = tmp.sub("plots/acc vs kv's.png");  // space and quote in the path
  write_plot(rs, png);
  const std::string bytes = read_file(png);
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_GT(bytes.size(), 10000u);
  EXPECT_TRUE(fs::exists(tmp.sub("plots/acc vs kv's.gp")));
  const std::string dat = read_file(tmp.sub("plots/acc vs kv's.dat"));
  EXPECT_NE(dat.find("10 25 \"10%\""), std::string::npos) << dat;  // x = 10% of full, y = 25
  EXPECT_NE(dat.find("14 50 \"27%\""), std::string::npos) << dat;  // q8: x = 140 B of 1000 at f16
  // The script names its files relative to its own directory (quotes doubled for gnuplot).
  const std::string gp = read_file(tmp.sub("plots/acc vs kv's.gp"));
  EXPECT_EQ(gp.find(tmp.path.string()), std::string::npos) << gp;
  EXPECT_NE(gp.find("set output 'acc vs kv''s.png'"), std::string::npos) << gp;
  EXPECT_NE(gp.find("'acc vs kv''s.dat' index 0"), std::string::npos) << gp;
  // lsa at q8 keeps lsa's colour, with squares.
  EXPECT_NE(gp.find("pt 5 lc rgb '#d62728' title 'lsa q8'"), std::string::npos) << gp;
}

TEST(EvalResults, PlotDirectoryCanMoveAndBeRedrawn) {
  ASSERT_TRUE(have_gnuplot()) << "gnuplot is a declared dependency (scripts/install-deps.sh)";
  TempDir tmp;
  const std::vector<EvalRecord> rs = {rec("t1", 4096, 0, "full", "100%", 1.0, 1000, 1000, 1000),
                                      rec("t1", 4096, 0, "recency", "10%", 0.5, 100, 110, 1000)};
  write_plot(rs, tmp.sub("a/plot.png"));
  fs::rename(tmp.sub("a"), tmp.sub("b"));
  ASSERT_TRUE(fs::remove(tmp.sub("b/plot.png")));
  const std::string cmd = "cd '" + tmp.sub("b") + "' && gnuplot plot.gp > /dev/null 2>&1";
  ASSERT_EQ(tmp.sub("b").find('\''), std::string::npos);  // the shell quoting above holds
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string bytes = read_file(tmp.sub("b/plot.png"));
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_FALSE(fs::exists(tmp.sub("a")));  // nothing was written back to the old place
}

TEST(EvalResults, PlotWithoutGnuplotIsUnsupported) {
  TempDir tmp;
  PlotOptions opt;
  opt.gnuplot = "/nonexistent/bin/gnuplot";
  const std::vector<EvalRecord> rs = {rec("t1", 4096, 0, "full", "100%", 1.0)};
  expect_error([&] { write_plot(rs, tmp.sub("p.png"), opt); }, ErrorCode::kUnsupported,
               {"install gnuplot-nox (scripts/install-deps.sh)"});
  expect_error([&] { write_plot(std::vector<EvalRecord>{}, tmp.sub("p.png")); },
               ErrorCode::kInvalidArgument, {"nothing to plot"});
}

// ---- progress --------------------------------------------------------------------------------

TEST(Progress, FormatDuration) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(130), "2m10s");
  EXPECT_EQ(format_duration(3725), "1h02m05s");
  EXPECT_EQ(format_duration(100 * 3600 + 1), "100h00m01s");
  EXPECT_EQ(format_duration(-1), "--");
  EXPECT_EQ(format_duration(std::nan("")), "--");
  EXPECT_EQ(format_duration(INFINITY), "--");
}

TEST(Progress, RenderBar) {
  EXPECT_EQ(render_bar(5, 10, 10), "[#####.....]");
  EXPECT_EQ(render_bar(37, 260, 10), "[#.........]");
  EXPECT_EQ(render_bar(0, 0, 5), "[.....]");
  EXPECT_EQ(render_bar(20, 10, 4), "[####]");
  EXPECT_EQ(render_bar(-3, 10, 4), "[....]");
  EXPECT_EQ(format_progress_line("ruler", 37, 260, 130, 220, "niah_single_2 4096 recency", 10),
            "ruler [#.........] 37/260 14% elapsed 2m10s ETA 3m40s  niah_single_2 4096 recency");
}

struct FakeClock {
  double t = 1000.0;
  std::function<double()> fn() {
    return [this] { return t; };
  }
};

std::string read_all(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) s.append(buf, n);
  return s;
}

TEST(Progress, EtaCountsOnlyItemsDoneInThisRun) {
  EXPECT_DOUBLE_EQ(eta_seconds(5, 10.0, 45), 90.0);
  EXPECT_TRUE(std::isnan(eta_seconds(0, 10.0, 45)));
  EXPECT_EQ(eta_seconds(0, 10.0, 0), 0.0);

  FakeClock clock;
  FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  {
    ProgressOptions opt;
    opt.tty = false;
    opt.now = clock.fn();
    Progress p(100, "ruler", out, opt);
    p.skip(50, "resumed");
    EXPECT_EQ(p.done(), 50);
    EXPECT_TRUE(std::isnan(p.eta()));  // skipped items give no rate
    clock.t += 10.0;
    p.tick(5, "vt 4096 full");
    EXPECT_DOUBLE_EQ(p.elapsed(), 10.0);
    EXPECT_DOUBLE_EQ(p.eta(), 90.0);  // 45 left at 0.5 items/s, not 5.5 items/s
    EXPECT_EQ(
        p.line(),
        "ruler [#################.............] 55/100 55% elapsed 10s ETA 1m30s  vt 4096 full");
  }
  const std::string text = read_all(out);
  std::fclose(out);
  EXPECT_NE(text.find("ETA 1m30s"), std::string::npos) << text;
  EXPECT_EQ(text.find('\r'), std::string::npos) << text;
}

TEST(Progress, PlainOutputIsOccasional) {
  FakeClock clock;
  FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  ProgressOptions opt;
  opt.tty = false;
  opt.now = clock.fn();
  Progress p(200, "", out, opt);
  for (int i = 0; i < 200; ++i) {
    clock.t += 0.1;
    p.tick(1, "x");
  }
  p.finish();
  const std::string text = read_all(out);
  std::fclose(out);
  // The first item, then one line per 20 items (10%); nothing extra at finish.
  EXPECT_EQ(count_lines(text), 11u) << text;
  EXPECT_EQ(p.draws(), 11);
  EXPECT_NE(text.find("200/200 100%"), std::string::npos) << text;

  // 30 s without a line: print one even below the 10% step.
  FILE* out2 = std::tmpfile();
  ASSERT_NE(out2, nullptr);
  {
    Progress q(1000, "", out2, opt);
    q.tick(1);
    clock.t += 31.0;
    q.tick(1);
    clock.t += 1.0;
    q.tick(1);
    EXPECT_EQ(q.draws(), 2);
    q.finish();  // the third item was not shown yet: a final line
    EXPECT_EQ(q.draws(), 3);
  }
  EXPECT_EQ(count_lines(read_all(out2)), 3u);
  std::fclose(out2);
}

TEST(Progress, TtyRedrawIsRateLimited) {
  FakeClock clock;
  FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  ProgressOptions opt;
  opt.tty = true;
  opt.now = clock.fn();
  {
    Progress p(100, "run", out, opt);
    for (int i = 0; i < 100; ++i) {
      clock.t += 0.01;  // 100 items in 1 s
      p.tick(1, i % 2 ? "long status text" : "s");
    }
    // 5 Hz over 1 s, plus the final item.
    EXPECT_LE(p.draws(), 7);
    EXPECT_GE(p.draws(), 5);
  }
  const std::string text = read_all(out);
  std::fclose(out);
  EXPECT_EQ(text[0], '\r');
  EXPECT_NE(text.find("100/100 100%"), std::string::npos);
  EXPECT_EQ(text.back(), '\n');
}

TEST(AnswerSpans, MapEveryOccurrenceToTheTokensHoldingIt) {
  // Tokens as byte pieces: "The number is: 2382277. Again 2382277" plus an empty piece.
  const std::vector<std::string> pieces = {"The", " number", " is", ":", " 2", "38", "2", "", "277", ".",
                                           " Again", " 2382277"};
  const auto spans = answer_spans(pieces, {"2382277", "", "missing", "is: 2"});
  ASSERT_EQ(spans.size(), 3u);
  // " 2" holds the first digit (token 4), "277" the last (token 8); the empty piece 7 is inside.
  EXPECT_EQ(spans[0].text, "2382277");
  EXPECT_EQ(spans[0].token_begin, 4);
  EXPECT_EQ(spans[0].token_end, 9);
  // The second occurrence lies in one token.
  EXPECT_EQ(spans[1].token_begin, 11);
  EXPECT_EQ(spans[1].token_end, 12);
  // An answer that starts inside one piece (" is") and ends inside another (" 2").
  EXPECT_EQ(spans[2].text, "is: 2");
  EXPECT_EQ(spans[2].token_begin, 2);
  EXPECT_EQ(spans[2].token_end, 5);
  EXPECT_TRUE(answer_spans({}, {"x"}).empty());
}

}  // namespace
}  // namespace flashmem::eval

// flashmem/eval/results.h — recording and reporting the samples of `flashmem eval`.
//
// One run directory holds `results.jsonl`: one JSON object per finished sample, appended and
// synced line by line so that a crash loses at most the line being written. From it come
// `summary.md` / `summary.json` (scores and KV footprints aggregated per task and length),
// side-by-side comparisons of several run directories, and an accuracy-vs-KV-footprint plot
// drawn by gnuplot.
//
// Format of a line (every key required, no other key accepted; free-form data goes in "extra"):
//   {"suite":"ruler","task":"niah_single_1","length":4096,"sample_index":3,
//    "prompt_id":"ruler/niah_single_1/4096/seed0/3","seed":0,"policy":"recency","budget":"10%",
//    "prompt_tokens":4031,"prediction":"...","answers":["..."],"score":1.0,
//    "device_kv_bytes_mean":1.2e6,"device_kv_bytes_peak":1310720,"full_kv_bytes":12582912,
//    "prefill_seconds":0.8,"decode_seconds":0.3,"generated_tokens":12,
//    "synthetic_substitute":false,"extra":{}}
#pragma once

#include <compare>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace flashmem::eval {

// One evaluated sample.
struct EvalRecord {
  std::string suite;         // "ruler" | "longbench-v2" | "longmemeval"
  std::string task;          // e.g. "niah_single_1"
  int64_t length = 0;        // target context length in tokens, e.g. 4096
  int64_t sample_index = 0;  // index of the sample within (task, length, seed)
  std::string prompt_id;     // unique id of the prompt, e.g. "ruler/niah_single_1/4096/seed0/3"
  uint64_t seed = 0;
  std::string policy;  // KV policy name, e.g. "full", "recency", "h2o"
  std::string budget;  // KV budget as given on the command line: "10%", "100%", "32pages"
  int64_t prompt_tokens = 0;
  std::string prediction;             // generated text
  std::vector<std::string> answers;   // reference answers
  double score = 0.0;                 // in [0, 1]
  double device_kv_bytes_mean = 0.0;  // device-resident KV bytes, mean over the sample's steps
  uint64_t device_kv_bytes_peak = 0;  // device-resident KV bytes, maximum over the steps
  uint64_t full_kv_bytes = 0;         // KV bytes a full cache would hold for this sample
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  int64_t generated_tokens = 0;
  bool synthetic_substitute = false;  // the task uses a labelled synthetic substitute dataset
  nlohmann::json extra = nlohmann::json::object();  // free-form (any JSON value)
};

bool operator==(const EvalRecord& a, const EvalRecord& b);

// Invalid UTF-8 in strings (a generation cut mid-character) is written to results.jsonl as
// U+FFFD by ResultsWriter::append.
nlohmann::json to_json(const EvalRecord& r);
// Strict: a missing, mistyped or unknown key, a negative count or a score outside [0, 1] throws
// Error(kFormat) whose message starts with `where` (e.g. "run/results.jsonl:12") and names the
// key.
EvalRecord from_json(const nlohmann::json& j, const std::string& where = "record");

// The identity of a finished sample for resuming: the same prompt under the same policy and
// budget is not run twice.
struct ResultKey {
  std::string prompt_id;
  std::string policy;
  std::string budget;
  auto operator<=>(const ResultKey&) const = default;
  bool operator==(const ResultKey&) const = default;
};
ResultKey key_of(const EvalRecord& r);

// Appends records to DIR/results.jsonl. Opening creates DIR (and parents) when needed, takes an
// exclusive advisory lock on the file (Error(kIo) when another writer holds it) and reads the
// lines already there:
//  * a last line that is not valid JSON (cut short or garbled by a crash mid-write) is dropped:
//    the file is truncated back to the end of the last good line and a warning is printed to
//    `warn` (when not null) and kept in warnings();
//  * a last line that is valid JSON but lacks its newline is kept and its newline written;
//  * any other malformed line (invalid JSON before the last line, or a JSON line that is not a
//    valid record anywhere) throws Error(kFormat) naming the file and line number, and the file
//    is left byte for byte as it was;
//  * blank lines are ignored.
// Each append() writes one line with a single write() and fsync()s it before returning.
// Not thread-safe: one thread appends (the lock keeps other processes out).
class ResultsWriter {
 public:
  explicit ResultsWriter(const std::string& dir, FILE* warn = stderr);
  ~ResultsWriter();
  ResultsWriter(const ResultsWriter&) = delete;
  ResultsWriter& operator=(const ResultsWriter&) = delete;
  ResultsWriter(ResultsWriter&& other) noexcept;
  ResultsWriter& operator=(ResultsWriter&& other) noexcept;

  // True when a record with this key was loaded or appended.
  bool done(const ResultKey& key) const { return keys_.count(key) != 0; }
  bool done(const EvalRecord& r) const { return done(key_of(r)); }

  // Error(kInvalidArgument) when the key is already done; Error(kIo) when the write fails.
  void append(const EvalRecord& r);

  // Records loaded at open followed by those appended since, in file order.
  const std::vector<EvalRecord>& records() const { return records_; }
  const std::vector<std::string>& warnings() const { return warnings_; }
  const std::string& path() const { return path_; }

 private:
  void close() noexcept;

  std::string path_;
  int fd_ = -1;
  std::vector<EvalRecord> records_;
  std::set<ResultKey> keys_;
  std::vector<std::string> warnings_;
};

// Reads DIR/results.jsonl without modifying it (Error(kIo) when missing). Same rules as the
// writer, except that an invalid last line is only skipped (with a warning to `warn`).
std::vector<EvalRecord> load_results(const std::string& dir, FILE* warn = stderr);

// ---- summary --------------------------------------------------------------------------------
//
// Scores are reported ×100. The 95% interval of a task row is
//  * Wilson's score interval (z = 1.96) when every score in the group is exactly 0 or 1 (string
//    match "all" with one answer, "part", exact match): it stays inside [0, 100] and is not
//    degenerate at 0% or 100% accuracy;
//  * otherwise the normal approximation mean ± 1.96·s/√n with the sample standard deviation s
//    (n − 1 denominator), clipped to [0, 100]; undefined (NaN, shown as "–") when n < 2.
// The KV precision a record ran at: extra "kv_type", "f16" for records from before --kv-type.
std::string kv_type_of(const EvalRecord& r);

// Rows name the policy with its KV precision when that is not f16 ("lsa q8"), and set device
// KV against the full KV at f16 (EvalRecord extra "full_kv_bytes_f16"; records without it ran
// at f16).
// The average row of a (suite, policy, budget, length) is the unweighted mean of its task
// means (RULER's per-length score); its interval is mean ± 1.96·√(Σ s_t²/n_t)/T over the T
// tasks (normal approximation, NaN when a task has n < 2).

struct SummaryRow {
  std::string suite;
  std::string policy;
  std::string budget;
  int64_t length = 0;
  std::string task;     // "average" in Summary::averages
  int64_t n = 0;        // samples (task rows) or tasks (average rows)
  double score = 0.0;   // mean score ×100
  double ci_low = 0.0;  // 95% interval ×100 (NaN when undefined)
  double ci_high = 0.0;
  std::string ci_method;              // "wilson" | "normal"
  double device_kv_bytes_mean = 0.0;  // mean of the per-sample means
  uint64_t device_kv_bytes_peak = 0;  // max over samples
  double full_kv_bytes_mean = 0.0;  // of the sample's full KV at f16, whatever the run's KV type
  double device_kv_ratio = 0.0;  // device_kv_bytes_mean / full_kv_bytes_mean (NaN if 0)
};

struct Summary {
  std::vector<SummaryRow> tasks;     // one per (suite, policy, budget, length, task)
  std::vector<SummaryRow> averages;  // one per (suite, policy, budget, length); task "average"
                                     // and n = number of tasks
};

// Rows are ordered by suite, policy and task in order of first appearance, budget by its
// numeric value within the same unit ("10%" < "50%" < "100%"), length ascending.
Summary summarize(const std::vector<EvalRecord>& records);

std::string render_summary_markdown(const Summary& s);
nlohmann::json summary_to_json(const Summary& s);
// Writes DIR/summary.md and DIR/summary.json (Error(kIo) on failure).
void write_summary(const std::string& dir, const Summary& s);

// ---- comparison ------------------------------------------------------------------------------

// Loads each run directory and puts its (policy, budget) configurations side by side: one table
// per (suite, length), one row per task plus "average", one column per configuration with
// "score · device MiB (percent of the full KV at f16)". Cells a run lacks are left blank and the mismatch
// is listed under the table; an average over fewer tasks than the row set is marked "*".
// Columns with the same (policy, budget) from different directories are labelled with the
// directory name.
std::string render_compare_markdown(const std::vector<std::string>& dirs);

// ---- plot -------------------------------------------------------------------------------------

struct PlotOptions {
  std::string gnuplot = "gnuplot";  // executable, looked up in PATH when it has no '/'
  std::string title = "Accuracy vs device KV footprint";
  int panel_width = 640;  // pixels per panel
  int panel_height = 480;
};

// Draws the average score over tasks (y, ×100) against the mean device KV as a percentage of
// the full KV at f16 (x), one panel per (suite, length), one labelled series per policy with a point
// per budget. Writes OUT.dat and OUT.gp next to the PNG (OUT = the PNG path without ".png") and
// runs gnuplot on them without a shell. Error(kUnsupported) when gnuplot cannot be found,
// Error(kIo) when it fails (its stderr in the message), Error(kInvalidArgument) for an empty
// summary.
void write_plot(const Summary& s, const std::string& out_png, const PlotOptions& opt = {});
void write_plot(const std::vector<EvalRecord>& records, const std::string& out_png,
                const PlotOptions& opt = {});

}  // namespace flashmem::eval

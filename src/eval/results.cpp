// flashmem/eval/results.cpp — results.jsonl records, the crash-tolerant writer, summaries,
// comparisons and the gnuplot plot.
#include "eval/results.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <tuple>
#include <utility>

#include "core/error.h"

extern char** environ;

namespace flashmem::eval {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kResultsFile = "results.jsonl";
constexpr double kZ95 = 1.959963984540054;
constexpr double kMiB = 1024.0 * 1024.0;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- strict field access ---------------------------------------------------------------------

const json& field(const json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  FM_CHECK(it != j.end(), ErrorCode::kFormat, where, ": missing field \"", key, "\"");
  return *it;
}

[[noreturn]] void mistyped(const char* key, const char* want, const json& v,
                           const std::string& where) {
  FM_FAIL(ErrorCode::kFormat, where, ": field \"", key, "\" must be ", want, ", got ",
          v.type_name(), " ", v.dump(-1, ' ', false, json::error_handler_t::replace));
}

std::string get_string(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  if (!v.is_string()) mistyped(key, "a string", v, where);
  return v.get<std::string>();
}

bool get_bool(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  if (!v.is_boolean()) mistyped(key, "a boolean", v, where);
  return v.get<bool>();
}

// A non-negative integer (nlohmann stores non-negative literals as unsigned).
uint64_t get_u64(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  mistyped(key, "a non-negative integer", v, where);
}

int64_t get_count(const json& j, const char* key, const std::string& where) {
  const uint64_t u = get_u64(j, key, where);
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    mistyped(key, "an integer below 2^63", field(j, key, where), where);
  return static_cast<int64_t>(u);
}

// A finite number >= 0 (and <= hi).
double get_number(const json& j, const char* key, const std::string& where,
                  double hi = std::numeric_limits<double>::infinity()) {
  const json& v = field(j, key, where);
  if (!v.is_number()) mistyped(key, "a number", v, where);
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < 0.0 || d > hi)
    mistyped(key, hi == 1.0 ? "a number in [0, 1]" : "a finite non-negative number", v, where);
  return d;
}

const char* const kFields[] = {"suite",
                               "task",
                               "length",
                               "sample_index",
                               "prompt_id",
                               "seed",
                               "policy",
                               "budget",
                               "prompt_tokens",
                               "prediction",
                               "answers",
                               "score",
                               "device_kv_bytes_mean",
                               "device_kv_bytes_peak",
                               "full_kv_bytes",
                               "prefill_seconds",
                               "decode_seconds",
                               "generated_tokens",
                               "synthetic_substitute",
                               "extra"};

std::string dump_line(const json& j) {
  // Generated text may hold invalid UTF-8 (a token cut mid-character): replace, never throw.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// ---- results.jsonl parsing -------------------------------------------------------------------

struct ParsedFile {
  std::vector<EvalRecord> records;
  uint64_t keep_bytes = 0;   // the good prefix of the file
  bool drop_tail = false;    // the last line is not JSON: cut the file at keep_bytes
  bool add_newline = false;  // the last line is good but lacks its '\n'
  std::string warning;
};

bool blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

ParsedFile parse_results(const std::string& text, const std::string& path) {
  struct Line {
    size_t begin, end;  // [begin, end) without the '\n'
    int64_t number;
  };
  std::vector<Line> lines;
  int64_t number = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t nl = text.find('\n', pos);
    const size_t end = nl == std::string::npos ? text.size() : nl;
    ++number;
    if (!blank(std::string_view(text).substr(pos, end - pos))) lines.push_back({pos, end, number});
    pos = nl == std::string::npos ? text.size() : nl + 1;
  }

  ParsedFile out;
  out.keep_bytes = text.size();
  for (size_t i = 0; i < lines.size(); ++i) {
    const Line& l = lines[i];
    const std::string where = path + ":" + std::to_string(l.number);
    json j;
    try {
      j = json::parse(text.begin() + static_cast<std::ptrdiff_t>(l.begin),
                      text.begin() + static_cast<std::ptrdiff_t>(l.end));
    } catch (const json::parse_error& e) {
      if (i + 1 == lines.size()) {
        // A write cut short by a crash: never valid JSON, since a record ends with its '}'.
        out.drop_tail = true;
        out.keep_bytes = l.begin;
        out.warning = where + ": dropping an incomplete last line (" +
                      std::to_string(text.size() - l.begin) +
                      " bytes, probably a run interrupted mid-write)";
        break;
      }
      FM_FAIL(ErrorCode::kFormat, where, ": invalid JSON (", e.what(),
              "); only the last line may be incomplete, fix or remove this line by hand");
    }
    out.records.push_back(from_json(j, where));
  }
  if (!out.drop_tail && !text.empty() && text.back() != '\n') out.add_newline = true;
  return out;
}

std::string sys_error(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

std::string read_fd(int fd, const std::string& path) {
  struct stat st {};
  FM_CHECK(::fstat(fd, &st) == 0, ErrorCode::kIo, sys_error("cannot stat", path));
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::pread(fd, text.data() + got, text.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    FM_CHECK(n >= 0, ErrorCode::kIo, sys_error("cannot read", path));
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  text.resize(got);
  return text;
}

void write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    FM_CHECK(n > 0, ErrorCode::kIo, sys_error("cannot write", path));
    data.remove_prefix(static_cast<size_t>(n));
  }
}

void sync_fd(int fd, const std::string& path) {
  FM_CHECK(::fsync(fd) == 0, ErrorCode::kIo, sys_error("cannot fsync", path));
}

void sync_dir(const std::string& dir) {
  const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0) return;  // best effort: the entry is durable once the file is
  (void)::fsync(d);
  ::close(d);
}

void warn_to(FILE* warn, const std::string& msg) {
  if (warn) std::fprintf(warn, "warning: %s\n", msg.c_str());
}

// Writes `content` to `path` through a temporary file and a rename.
void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    FM_CHECK(f.good(), ErrorCode::kIo, "cannot create ", tmp, ": ", std::strerror(errno));
    f << content;
    f.flush();
    FM_CHECK(f.good(), ErrorCode::kIo, "cannot write ", tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  FM_CHECK(!ec, ErrorCode::kIo, "cannot rename ", tmp, " to ", path, ": ", ec.message());
}

std::string results_path(const std::string& dir) { return (fs::path(dir) / kResultsFile).string(); }

}  // namespace

// ---- EvalRecord ------------------------------------------------------------------------------

bool operator==(const EvalRecord& a, const EvalRecord& b) { return to_json(a) == to_json(b); }

json to_json(const EvalRecord& r) {
  json j = json::object();
  j["suite"] = r.suite;
  j["task"] = r.task;
  j["length"] = r.length;
  j["sample_index"] = r.sample_index;
  j["prompt_id"] = r.prompt_id;
  j["seed"] = r.seed;
  j["policy"] = r.policy;
  j["budget"] = r.budget;
  j["prompt_tokens"] = r.prompt_tokens;
  j["prediction"] = r.prediction;
  j["answers"] = r.answers;
  j["score"] = r.score;
  j["device_kv_bytes_mean"] = r.device_kv_bytes_mean;
  j["device_kv_bytes_peak"] = r.device_kv_bytes_peak;
  j["full_kv_bytes"] = r.full_kv_bytes;
  j["prefill_seconds"] = r.prefill_seconds;
  j["decode_seconds"] = r.decode_seconds;
  j["generated_tokens"] = r.generated_tokens;
  j["synthetic_substitute"] = r.synthetic_substitute;
  j["extra"] = r.extra;
  return j;
}

EvalRecord from_json(const json& j, const std::string& where) {
  FM_CHECK(j.is_object(), ErrorCode::kFormat, where, ": a record must be a JSON object, got ",
           j.type_name());
  for (const auto& [key, value] : j.items()) {
    const bool known = std::any_of(std::begin(kFields), std::end(kFields),
                                   [&](const char* f) { return key == f; });
    FM_CHECK(known, ErrorCode::kFormat, where, ": unknown field \"", key,
             "\" (free-form data belongs in \"extra\")");
  }
  EvalRecord r;
  r.suite = get_string(j, "suite", where);
  r.task = get_string(j, "task", where);
  r.length = get_count(j, "length", where);
  r.sample_index = get_count(j, "sample_index", where);
  r.prompt_id = get_string(j, "prompt_id", where);
  r.seed = get_u64(j, "seed", where);
  r.policy = get_string(j, "policy", where);
  r.budget = get_string(j, "budget", where);
  r.prompt_tokens = get_count(j, "prompt_tokens", where);
  r.prediction = get_string(j, "prediction", where);
  const json& answers = field(j, "answers", where);
  if (!answers.is_array()) mistyped("answers", "an array of strings", answers, where);
  for (const json& a : answers) {
    if (!a.is_string()) mistyped("answers", "an array of strings", answers, where);
    r.answers.push_back(a.get<std::string>());
  }
  r.score = get_number(j, "score", where, 1.0);
  r.device_kv_bytes_mean = get_number(j, "device_kv_bytes_mean", where);
  r.device_kv_bytes_peak = get_u64(j, "device_kv_bytes_peak", where);
  r.full_kv_bytes = get_u64(j, "full_kv_bytes", where);
  r.prefill_seconds = get_number(j, "prefill_seconds", where);
  r.decode_seconds = get_number(j, "decode_seconds", where);
  r.generated_tokens = get_count(j, "generated_tokens", where);
  r.synthetic_substitute = get_bool(j, "synthetic_substitute", where);
  r.extra = field(j, "extra", where);
  FM_CHECK(!r.prompt_id.empty(), ErrorCode::kFormat, where, ": field \"prompt_id\" is empty");
  return r;
}

ResultKey key_of(const EvalRecord& r) { return ResultKey{r.prompt_id, r.policy, r.budget}; }

// ---- ResultsWriter ---------------------------------------------------------------------------

ResultsWriter::ResultsWriter(const std::string& dir, FILE* warn) : path_(results_path(dir)) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  FM_CHECK(!ec, ErrorCode::kIo, "cannot create results directory ", dir, ": ", ec.message());
  const bool existed = fs::exists(path_, ec);
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  FM_CHECK(fd_ >= 0, ErrorCode::kIo, sys_error("cannot open", path_));
  try {
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      FM_CHECK(errno != EWOULDBLOCK, ErrorCode::kIo, path_,
               " is locked by another process writing results there");
      FM_FAIL(ErrorCode::kIo, sys_error("cannot lock", path_));
    }
    if (!existed) sync_dir(dir);
    ParsedFile parsed = parse_results(read_fd(fd_, path_), path_);
    if (parsed.drop_tail) {
      FM_CHECK(::ftruncate(fd_, static_cast<off_t>(parsed.keep_bytes)) == 0, ErrorCode::kIo,
               sys_error("cannot truncate", path_));
      sync_fd(fd_, path_);
      warn_to(warn, parsed.warning);
      warnings_.push_back(parsed.warning);
    } else if (parsed.add_newline) {
      write_all(fd_, "\n", path_);
      sync_fd(fd_, path_);
    }
    records_ = std::move(parsed.records);
    for (const EvalRecord& r : records_) {
      if (!keys_.insert(key_of(r)).second) {
        const std::string w = path_ + ": duplicate result for prompt " + r.prompt_id + " policy " +
                              r.policy + " budget " + r.budget;
        warn_to(warn, w);
        warnings_.push_back(w);
      }
    }
  } catch (...) {
    close();
    throw;
  }
}

ResultsWriter::~ResultsWriter() { close(); }

void ResultsWriter::close() noexcept {
  if (fd_ >= 0) ::close(fd_);  // also releases the lock
  fd_ = -1;
}

ResultsWriter::ResultsWriter(ResultsWriter&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      records_(std::move(other.records_)),
      keys_(std::move(other.keys_)),
      warnings_(std::move(other.warnings_)) {}

ResultsWriter& ResultsWriter::operator=(ResultsWriter&& other) noexcept {
  if (this != &other) {
    close();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    records_ = std::move(other.records_);
    keys_ = std::move(other.keys_);
    warnings_ = std::move(other.warnings_);
  }
  return *this;
}

void ResultsWriter::append(const EvalRecord& r) {
  FM_ICHECK(fd_ >= 0, "append on a moved-from ResultsWriter");
  const ResultKey key = key_of(r);
  FM_CHECK(!keys_.count(key), ErrorCode::kInvalidArgument, "result for prompt ", r.prompt_id,
           " policy ", r.policy, " budget ", r.budget, " is already in ", path_);
  const json j = to_json(r);
  try {
    (void)from_json(j, "record");  // what is written must read back
  } catch (const Error& e) {
    FM_FAIL(ErrorCode::kInvalidArgument, "cannot append to ", path_, ": ", e.what());
  }
  // One write() per line: O_APPEND places it at the end, and a crash can only cut it short.
  write_all(fd_, dump_line(j) + "\n", path_);
  sync_fd(fd_, path_);
  records_.push_back(r);
  keys_.insert(key);
}

std::vector<EvalRecord> load_results(const std::string& dir, FILE* warn) {
  const std::string path = results_path(dir);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FM_CHECK(fd >= 0, ErrorCode::kIo, sys_error("cannot open", path));
  std::string text;
  try {
    text = read_fd(fd, path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  ParsedFile parsed = parse_results(text, path);
  if (parsed.drop_tail) warn_to(warn, parsed.warning);
  return std::move(parsed.records);
}

// ---- summary ---------------------------------------------------------------------------------

namespace {

// Sorts budgets by unit, then value: "10%" < "50%" < "100%", "8pages" < "32pages".
struct BudgetOrder {
  std::string unit;
  double value;
  std::string text;
  auto operator<=>(const BudgetOrder&) const = default;
};

BudgetOrder budget_order(const std::string& b) {
  char* end = nullptr;
  const double v = std::strtod(b.c_str(), &end);
  if (end == b.c_str()) return {b, std::numeric_limits<double>::infinity(), b};
  return {std::string(end), v, b};
}

// First-appearance ranks of strings.
struct Ranks {
  std::map<std::string, size_t> rank;
  size_t of(const std::string& s) { return rank.emplace(s, rank.size()).first->second; }
};

struct TaskStats {
  SummaryRow row;
  double var = kNaN;  // sample variance of the scores (n - 1 denominator), on the [0, 1] scale
};

double ratio(double num, double den) { return den > 0.0 ? num / den : kNaN; }

// The policy as summaries name it: with its KV precision unless f16 ("lsa q8").
std::string policy_label(const EvalRecord& r) {
  const std::string t = kv_type_of(r);
  return t == "f16" ? r.policy : r.policy + " " + t;
}

// What a record's device KV is set against: the sample's full KV at f16 (recorded since
// --kv-type; before, every run was f16 and full_kv_bytes is that).
double full_kv_f16(const EvalRecord& r) {
  if (r.extra.is_object() && r.extra.contains("full_kv_bytes_f16") && r.extra["full_kv_bytes_f16"].is_number())
    return r.extra["full_kv_bytes_f16"].get<double>();
  return static_cast<double>(r.full_kv_bytes);
}

std::pair<double, double> wilson(double k, double n) {
  const double p = k / n, z2 = kZ95 * kZ95;
  const double denom = 1.0 + z2 / n;
  const double center = (p + z2 / (2.0 * n)) / denom;
  const double half = kZ95 * std::sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom;
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

TaskStats task_stats(const std::vector<const EvalRecord*>& rs) {
  TaskStats t;
  SummaryRow& row = t.row;
  const EvalRecord& first = *rs.front();
  row.suite = first.suite;
  row.policy = policy_label(first);
  row.budget = first.budget;
  row.length = first.length;
  row.task = first.task;
  row.n = static_cast<int64_t>(rs.size());
  const double n = static_cast<double>(rs.size());
  double sum = 0.0, dev = 0.0, full = 0.0;
  bool binary = true;
  for (const EvalRecord* r : rs) {
    sum += r->score;
    dev += r->device_kv_bytes_mean;
    full += full_kv_f16(*r);
    row.device_kv_bytes_peak = std::max(row.device_kv_bytes_peak, r->device_kv_bytes_peak);
    binary = binary && (r->score == 0.0 || r->score == 1.0);
  }
  const double mean = sum / n;
  if (rs.size() >= 2) {
    double ss = 0.0;
    for (const EvalRecord* r : rs) ss += (r->score - mean) * (r->score - mean);
    t.var = ss / (n - 1.0);
  }
  row.score = 100.0 * mean;
  if (binary) {
    const auto [lo, hi] = wilson(sum, n);
    row.ci_method = "wilson";
    row.ci_low = 100.0 * lo;
    row.ci_high = 100.0 * hi;
  } else {
    row.ci_method = "normal";
    const double half = kZ95 * std::sqrt(t.var / n);  // NaN when n < 2
    row.ci_low = 100.0 * std::max(0.0, mean - half);
    row.ci_high = 100.0 * std::min(1.0, mean + half);
    if (std::isnan(half)) row.ci_low = row.ci_high = kNaN;
  }
  row.device_kv_bytes_mean = dev / n;
  row.full_kv_bytes_mean = full / n;
  row.device_kv_ratio = ratio(row.device_kv_bytes_mean, row.full_kv_bytes_mean);
  return t;
}

SummaryRow average_row(const std::vector<TaskStats>& ts) {
  SummaryRow a;
  const SummaryRow& first = ts.front().row;
  a.suite = first.suite;
  a.policy = first.policy;
  a.budget = first.budget;
  a.length = first.length;
  a.task = "average";
  a.n = static_cast<int64_t>(ts.size());
  a.ci_method = "normal";
  const double t = static_cast<double>(ts.size());
  double score = 0.0, var = 0.0, dev = 0.0, full = 0.0;
  for (const TaskStats& s : ts) {
    score += s.row.score / 100.0;
    var += s.var / static_cast<double>(s.row.n);
    dev += s.row.device_kv_bytes_mean;
    full += s.row.full_kv_bytes_mean;
    a.device_kv_bytes_peak = std::max(a.device_kv_bytes_peak, s.row.device_kv_bytes_peak);
  }
  const double mean = score / t;
  const double half = kZ95 * std::sqrt(var) / t;
  a.score = 100.0 * mean;
  a.ci_low = std::isnan(half) ? kNaN : 100.0 * std::max(0.0, mean - half);
  a.ci_high = std::isnan(half) ? kNaN : 100.0 * std::min(1.0, mean + half);
  a.device_kv_bytes_mean = dev / t;
  a.full_kv_bytes_mean = full / t;
  a.device_kv_ratio = ratio(a.device_kv_bytes_mean, a.full_kv_bytes_mean);
  return a;
}

std::string fmt(const char* f, double v) {
  if (std::isnan(v)) return "–";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string md_cell(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '|')
      out += "\\|";
    else if (c == '\n' || c == '\r')
      out += ' ';
    else
      out += c;
  }
  return out;
}

std::string mib(double bytes) { return fmt("%.2f", bytes / kMiB); }
std::string percent(double r) { return fmt("%.1f%%", 100.0 * r); }

std::string ci_text(const SummaryRow& r) {
  if (std::isnan(r.ci_low)) return "–";
  return fmt("%.1f", r.ci_low) + "–" + fmt("%.1f", r.ci_high);
}

json num_or_null(double v) { return std::isnan(v) ? json(nullptr) : json(v); }

json row_json(const SummaryRow& r) {
  return json{{"suite", r.suite},
              {"policy", r.policy},
              {"budget", r.budget},
              {"length", r.length},
              {"task", r.task},
              {"n", r.n},
              {"score", r.score},
              {"ci_low", num_or_null(r.ci_low)},
              {"ci_high", num_or_null(r.ci_high)},
              {"ci_method", r.ci_method},
              {"device_kv_bytes_mean", r.device_kv_bytes_mean},
              {"device_kv_bytes_peak", r.device_kv_bytes_peak},
              {"full_kv_bytes_mean", r.full_kv_bytes_mean},
              {"device_kv_ratio", num_or_null(r.device_kv_ratio)}};
}

}  // namespace

std::string kv_type_of(const EvalRecord& r) {
  if (r.extra.is_object() && r.extra.contains("kv_type") && r.extra["kv_type"].is_string())
    return r.extra["kv_type"].get<std::string>();
  return "f16";
}

Summary summarize(const std::vector<EvalRecord>& records) {
  Ranks suites, policies, tasks;
  using Key = std::tuple<size_t, size_t, BudgetOrder, int64_t, size_t>;
  std::map<Key, std::vector<const EvalRecord*>> groups;
  for (const EvalRecord& r : records) {
    const Key k{suites.of(r.suite), policies.of(policy_label(r)), budget_order(r.budget), r.length,
                tasks.of(r.task)};
    groups[k].push_back(&r);
  }
  Summary s;
  std::vector<TaskStats> run;  // task rows of the current (suite, policy, budget, length)
  auto flush = [&] {
    if (!run.empty()) s.averages.push_back(average_row(run));
    run.clear();
  };
  for (const auto& [key, rs] : groups) {
    TaskStats t = task_stats(rs);
    if (!run.empty()) {
      const SummaryRow& prev = run.back().row;
      if (prev.suite != t.row.suite || prev.policy != t.row.policy || prev.budget != t.row.budget ||
          prev.length != t.row.length)
        flush();
    }
    s.tasks.push_back(t.row);
    run.push_back(std::move(t));
  }
  flush();
  return s;
}

std::string render_summary_markdown(const Summary& s) {
  std::ostringstream os;
  os << "## Scores per task\n\n"
     << "| suite | policy | budget | length | task | N | score | 95% CI | device KV mean (MiB) "
        "| device KV peak (MiB) | full KV mean (MiB) | device/full |\n"
     << "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const SummaryRow& r : s.tasks) {
    os << "| " << md_cell(r.suite) << " | " << md_cell(r.policy) << " | " << md_cell(r.budget)
       << " | " << r.length << " | " << md_cell(r.task) << " | " << r.n << " | "
       << fmt("%.1f", r.score) << " | " << ci_text(r) << " (" << r.ci_method << ") | "
       << mib(r.device_kv_bytes_mean) << " | " << mib(static_cast<double>(r.device_kv_bytes_peak))
       << " | " << mib(r.full_kv_bytes_mean) << " | " << percent(r.device_kv_ratio) << " |\n";
  }
  os << "\n## Average over tasks per length\n\n"
     << "| suite | policy | budget | length | tasks | score | 95% CI | device KV mean (MiB) "
        "| device KV peak (MiB) | full KV mean (MiB) | device/full |\n"
     << "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const SummaryRow& r : s.averages) {
    os << "| " << md_cell(r.suite) << " | " << md_cell(r.policy) << " | " << md_cell(r.budget)
       << " | " << r.length << " | " << r.n << " | " << fmt("%.1f", r.score) << " | " << ci_text(r)
       << " | " << mib(r.device_kv_bytes_mean) << " | "
       << mib(static_cast<double>(r.device_kv_bytes_peak)) << " | " << mib(r.full_kv_bytes_mean)
       << " | " << percent(r.device_kv_ratio) << " |\n";
  }
  os << "\nScores ×100. 95% CI: Wilson score interval when every score of the task is 0 or 1, "
        "otherwise mean ± 1.96·s/√N; the per-length average is the unweighted mean of the task "
        "scores, with interval mean ± 1.96·√(Σ s²/N)/tasks. Device KV: mean over samples of "
        "each sample's mean device-resident KV bytes; peak: maximum over samples. Full KV: the "
        "sample's full KV at f16, the model's native KV precision, for every run (a q8 run's own "
        "full KV is 53% of it); a policy that ran with another KV precision is named with it "
        "(`lsa q8`).\n";
  return os.str();
}

json summary_to_json(const Summary& s) {
  json tasks = json::array(), averages = json::array();
  for (const SummaryRow& r : s.tasks) tasks.push_back(row_json(r));
  for (const SummaryRow& r : s.averages) averages.push_back(row_json(r));
  return json{{"tasks", std::move(tasks)}, {"averages", std::move(averages)}};
}

void write_summary(const std::string& dir, const Summary& s) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  FM_CHECK(!ec, ErrorCode::kIo, "cannot create directory ", dir, ": ", ec.message());
  write_file_atomic((fs::path(dir) / "summary.md").string(), render_summary_markdown(s));
  write_file_atomic((fs::path(dir) / "summary.json").string(),
                    summary_to_json(s).dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

// ---- comparison ------------------------------------------------------------------------------

namespace {

std::string dir_name(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

using RowKey = std::tuple<std::string, std::string, std::string, int64_t, std::string>;
RowKey row_key(const SummaryRow& r) { return {r.suite, r.policy, r.budget, r.length, r.task}; }

std::string compare_cell(const SummaryRow& r) {
  return fmt("%.1f", r.score) + " · " + mib(r.device_kv_bytes_mean) + " MiB (" +
         percent(r.device_kv_ratio) + ")";
}

}  // namespace

std::string render_compare_markdown(const std::vector<std::string>& dirs) {
  FM_CHECK(!dirs.empty(), ErrorCode::kInvalidArgument, "compare needs at least one run directory");
  struct Column {
    size_t run;
    std::string policy, budget, label;
  };
  std::vector<Summary> sums;
  std::vector<std::map<RowKey, const SummaryRow*>> index(dirs.size());
  std::vector<Column> cols;
  Ranks suites, tasks;
  std::map<std::pair<size_t, int64_t>, std::vector<std::string>> row_tasks;  // (suite, length)
  std::map<std::pair<size_t, int64_t>, std::pair<std::string, int64_t>> row_names;
  sums.reserve(dirs.size());
  for (const std::string& d : dirs) sums.push_back(summarize(load_results(d)));
  for (size_t i = 0; i < dirs.size(); ++i) {
    for (const SummaryRow& r : sums[i].tasks) {
      index[i][row_key(r)] = &r;
      const std::pair<size_t, int64_t> sl{suites.of(r.suite), r.length};
      row_names[sl] = {r.suite, r.length};
      auto& ts = row_tasks[sl];
      tasks.of(r.task);
      if (std::find(ts.begin(), ts.end(), r.task) == ts.end()) ts.push_back(r.task);
    }
    for (const SummaryRow& r : sums[i].averages) {
      index[i][row_key(r)] = &r;
      const bool seen = std::any_of(cols.begin(), cols.end(), [&](const Column& c) {
        return c.run == i && c.policy == r.policy && c.budget == r.budget;
      });
      if (!seen) cols.push_back({i, r.policy, r.budget, r.policy + " " + r.budget});
    }
  }
  // Same (policy, budget) in several runs: tell them apart by directory name.
  for (Column& c : cols) {
    const auto same = std::count_if(cols.begin(), cols.end(), [&](const Column& o) {
      return o.policy == c.policy && o.budget == c.budget;
    });
    if (same > 1) c.label += " (" + dir_name(dirs[c.run]) + ")";
  }

  std::ostringstream os;
  if (cols.empty()) {
    os << "No results in the given run directories.\n";
    return os.str();
  }
  os << "Cells: score ×100 · mean device KV MiB (percent of the full KV at f16). Runs:";
  for (size_t i = 0; i < dirs.size(); ++i) os << (i ? ", " : " ") << "`" << dirs[i] << "`";
  os << "\n";
  for (const auto& [sl, ts] : row_tasks) {
    const auto& [suite, length] = row_names[sl];
    os << "\n### " << md_cell(suite) << " — length " << length << "\n\n| task |";
    for (const Column& c : cols) os << " " << md_cell(c.label) << " |";
    os << "\n|---|";
    for (size_t i = 0; i < cols.size(); ++i) os << "---:|";
    os << "\n";
    std::vector<std::string> notes;
    std::vector<size_t> have(cols.size(), 0);
    for (const std::string& task : ts) {
      os << "| " << md_cell(task) << " |";
      for (size_t ci = 0; ci < cols.size(); ++ci) {
        const Column& c = cols[ci];
        const auto it = index[c.run].find(RowKey{suite, c.policy, c.budget, length, task});
        if (it == index[c.run].end()) {
          os << "  |";
        } else {
          ++have[ci];
          os << " " << compare_cell(*it->second) << " |";
        }
      }
      os << "\n";
    }
    os << "| **average** |";
    bool partial = false;
    for (size_t ci = 0; ci < cols.size(); ++ci) {
      const Column& c = cols[ci];
      const auto it = index[c.run].find(RowKey{suite, c.policy, c.budget, length, "average"});
      if (it == index[c.run].end()) {
        os << "  |";
        notes.push_back("`" + c.label + "`: no results at this length");
        continue;
      }
      os << " " << compare_cell(*it->second);
      if (have[ci] < ts.size()) {
        partial = true;
        os << " *";
        std::string missing;
        for (const std::string& task : ts)
          if (!index[c.run].count(RowKey{suite, c.policy, c.budget, length, task}))
            missing += (missing.empty() ? "" : ", ") + task;
        notes.push_back("`" + c.label + "`: no results for " + missing);
      }
      os << " |";
    }
    os << "\n";
    if (partial || !notes.empty()) {
      os << "\n";
      if (partial) os << "\\* average over fewer tasks than the rows of this table.\n";
      for (const std::string& n : notes) os << "- " << md_cell(n) << "\n";
    }
  }
  return os.str();
}

// ---- plot ------------------------------------------------------------------------------------

namespace {

// A gnuplot single-quoted string: no escapes inside except '' for a quote.
// One fixed colour per policy, so that every plot reads the same (gnuplot's own cycle repeats
// once labels take line types too); a policy run at another KV precision ("lsa q8") keeps its
// colour and is drawn with squares (policy_point).
std::string policy_color(const std::string& label) {
  const std::string policy = label.substr(0, label.find(' '));
  static const std::pair<const char*, const char*> colors[] = {
      {"full", "#000000"}, {"lsa", "#d62728"}, {"oracle", "#2ca02c"}, {"quest", "#1f77b4"},
      {"recency", "#ff7f0e"}, {"random", "#9467bd"}};
  for (const auto& [name, c] : colors)
    if (policy == name) return c;
  return "#7f7f7f";
}

int policy_point(const std::string& label) { return label.find(' ') == std::string::npos ? 7 : 5; }

std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) {
    if (c == '\'')
      out += "''";
    else if (c == '\n' || c == '\r')
      out += ' ';
    else
      out += c;
  }
  return out + "'";
}

// A token for the whitespace-separated data file, quoted for gnuplot's string columns.
std::string data_label(const std::string& s) {
  std::string out = "\"";
  for (const char c : s)
    out += (c == '"' || c == '\\' || std::isspace(static_cast<unsigned char>(c))) ? '_' : c;
  return out + "\"";
}

std::string find_executable(const std::string& name) {
  if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string d; std::getline(ss, d, ':');) {
    const std::string p = (d.empty() ? std::string(".") : d) + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// Runs `exe script` in directory `dir` with stdout and stderr into `log` (absolute paths);
// returns the exit status.
int run_gnuplot(const std::string& exe, const std::string& script, const std::string& log,
                const std::string& dir) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addchdir_np(&fa, dir.c_str());
  std::vector<char*> argv = {const_cast<char*>(exe.c_str()), const_cast<char*>(script.c_str()),
                             nullptr};
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  FM_CHECK(rc == 0, ErrorCode::kIo, "cannot start ", exe, ": ", std::strerror(rc));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    FM_CHECK(errno == EINTR, ErrorCode::kIo, "waitpid on ", exe, ": ", std::strerror(errno));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

void write_plot(const Summary& s, const std::string& out_png, const PlotOptions& opt) {
  FM_CHECK(!s.averages.empty(), ErrorCode::kInvalidArgument, "nothing to plot: no results");
  FM_CHECK(out_png.find_first_of("\n\r") == std::string::npos, ErrorCode::kInvalidArgument,
           "plot path must not contain a newline");
  const std::string exe = find_executable(opt.gnuplot);
  FM_CHECK(!exe.empty(), ErrorCode::kUnsupported, "plotting needs gnuplot, not found (looked for '",
           opt.gnuplot, "'): install gnuplot-nox (scripts/install-deps.sh)");

  fs::path png = fs::absolute(out_png);
  fs::path stem = png;
  if (stem.extension() == ".png") stem.replace_extension();
  const std::string dat = stem.string() + ".dat", gp = stem.string() + ".gp",
                    log = stem.string() + ".log";
  // The script names its data and image relative to its own directory, where gnuplot runs, so
  // that a results directory can move (`cd DIR && gnuplot plot.gp` redraws it).
  const std::string dat_name = fs::path(dat).filename().string(), gp_name = fs::path(gp).filename().string(),
                    png_name = png.filename().string();
  std::error_code ec;
  fs::create_directories(png.parent_path(), ec);
  FM_CHECK(!ec, ErrorCode::kIo, "cannot create ", png.parent_path().string(), ": ", ec.message());

  // Panels (suite, length) and, in each, one series per policy with a point per budget.
  Ranks suites, policies;
  struct Point {
    double x, y;
    std::string label;
  };
  std::map<std::pair<size_t, int64_t>, std::map<size_t, std::vector<Point>>> panels;
  std::map<std::pair<size_t, int64_t>, std::string> panel_titles;
  std::map<size_t, std::string> policy_names;
  double xmax = 100.0;
  for (const SummaryRow& r : s.averages) {
    if (std::isnan(r.device_kv_ratio)) continue;  // no full-KV size: no x
    const std::pair<size_t, int64_t> pk{suites.of(r.suite), r.length};
    const size_t pol = policies.of(r.policy);
    policy_names[pol] = r.policy;
    panel_titles[pk] = r.suite + ", length " + std::to_string(r.length);
    panels[pk][pol].push_back({100.0 * r.device_kv_ratio, r.score, r.budget});
    xmax = std::max(xmax, 100.0 * r.device_kv_ratio);
  }
  FM_CHECK(!panels.empty(), ErrorCode::kInvalidArgument,
           "nothing to plot: no result has a full-KV size");

  std::ostringstream data, script;
  data << "# device KV % of full, average score x100, budget\n";
  const size_t n_panels = panels.size();
  const size_t cols = std::min<size_t>(n_panels, 3), rows = (n_panels + cols - 1) / cols;
  const int w = opt.panel_width * static_cast<int>(cols),
            h = opt.panel_height * static_cast<int>(rows);
  script << "# generated by flashmem eval (write_plot); run in this directory: gnuplot " << gp_name << "\n"
         << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
         << "  set terminal pngcairo noenhanced size " << w << "," << h << "\n"
         << "} else {\n"
         << "  set terminal png noenhanced size " << w << "," << h << "\n"
         << "}\n"
         << "set output " << gp_quote(png_name) << "\n"
         << "set multiplot layout " << rows << "," << cols << " title " << gp_quote(opt.title)
         << "\n"
         << "set xlabel 'device KV (% of the full KV at f16)'\n"
         << "set ylabel 'score (average over tasks, x100)'\n"
         << "set xrange [0:" << fmt("%.1f", xmax * 1.05) << "]\n"
         << "set yrange [0:105]\n"
         << "set grid\n"
         << "set key bottom right\n";
  int block = 0;
  for (auto& [pk, series] : panels) {
    script << "set title " << gp_quote(panel_titles[pk]) << "\n"
           << "plot ";
    bool first = true;
    for (auto& [pol, points] : series) {
      std::sort(points.begin(), points.end(),
                [](const Point& a, const Point& b) { return a.x < b.x; });
      data << "# " << panel_titles[pk] << " / " << policy_names[pol] << "\n";
      for (const Point& p : points)
        data << fmt("%.6g", p.x) << " " << fmt("%.6g", p.y) << " " << data_label(p.label) << "\n";
      data << "\n\n";
      script << (first ? "" : ", \\\n     ") << gp_quote(dat_name) << " index " << block
             << " using 1:2 with linespoints lw 2 pt " << policy_point(policy_names[pol]) << " lc rgb "
             << gp_quote(policy_color(policy_names[pol]))
             << " title " << gp_quote(policy_names[pol])
             << ", \\\n     " << gp_quote(dat_name) << " index " << block
             << " using 1:2:3 with labels offset 1,1 notitle";
      first = false;
      ++block;
    }
    script << "\n";
  }
  script << "unset multiplot\nset output\n";
  write_file_atomic(dat, data.str());
  write_file_atomic(gp, script.str());

  fs::remove(png, ec);  // so that a stale PNG cannot pass for a new one
  const int status = run_gnuplot(exe, gp, log, png.parent_path().string());
  const std::string out = read_text(log);
  FM_CHECK(status == 0, ErrorCode::kIo, "gnuplot failed (exit ", status, ") on ", gp, ": ",
           out.substr(0, 2000));
  FM_CHECK(fs::exists(png) && fs::file_size(png, ec) > 0, ErrorCode::kIo, "gnuplot wrote no ",
           png.string(), ": ", out.substr(0, 2000));
  fs::remove(log, ec);
}

void write_plot(const std::vector<EvalRecord>& records, const std::string& out_png,
                const PlotOptions& opt) {
  write_plot(summarize(records), out_png, opt);
}

}  // namespace flashmem::eval

// flashmem/eval/progress.h — a progress bar with ETA for long evaluation runs.
//
// On a terminal the line is redrawn in place with '\r' (at most `redraw_hz` times a second):
//   ruler [#########.....................] 37/260 14% elapsed 2m10s ETA 12m44s  niah_single_2 4096
//   recency
// Elsewhere (a log file, a pipe) a plain line is printed each time another `plain_step` of the
// total is done or `plain_every_s` seconds have passed, whichever comes first.
//
// The ETA comes from the items finished in this run only: items counted with skip() (results
// resumed from an earlier run) advance the count but not the rate, so a resumed run does not
// promise an ETA of zero.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>

namespace flashmem::eval {

// "0s", "59s", "2m10s", "1h02m05s"; rounded to whole seconds; "--" for negative, NaN or
// infinite values.
std::string format_duration(double seconds);

// "[" + round(width·done/total) '#' + the rest '.' + "]"; done is clamped to [0, total]; an
// empty bar for total <= 0.
std::string render_bar(int64_t done, int64_t total, int width);

// Seconds left when `done_in_run` items took `elapsed_s` and `remaining` are left; NaN when
// nothing has been done in this run yet (no rate), 0 when nothing remains.
double eta_seconds(int64_t done_in_run, double elapsed_s, int64_t remaining);

// The whole progress line (no '\r' or '\n'): "label [bar] done/total pct% elapsed E ETA T  status".
std::string format_progress_line(const std::string& label, int64_t done, int64_t total,
                                 double elapsed_s, double eta_s, const std::string& status,
                                 int bar_width = 30);

struct ProgressOptions {
  std::optional<bool> tty;      // default: isatty(fileno(out))
  std::function<double()> now;  // seconds on a monotonic clock; default steady_clock
  double redraw_hz = 5.0;       // TTY redraw limit
  double plain_step = 0.10;     // non-TTY: a line per this fraction of the total...
  double plain_every_s = 30.0;  // ...or per this many seconds
  int bar_width = 30;
};

// Not thread-safe: call from the thread that runs the samples.
class Progress {
 public:
  Progress(int64_t total, std::string label, FILE* out = stderr);
  Progress(int64_t total, std::string label, FILE* out, ProgressOptions opt);
  ~Progress();  // finish()
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // `n` items finished in this run; `status` describes the item now running (or just done).
  void tick(int64_t n = 1, const std::string& status = "");
  // `n` items skipped (already done in an earlier run): counted, but not in the rate.
  void skip(int64_t n = 1, const std::string& status = "");
  // Prints the final line (and the newline that ends a TTY bar). Idempotent.
  void finish();

  int64_t done() const { return done_; }
  int64_t total() const { return total_; }
  double elapsed() const;
  double eta() const;                       // seconds; NaN while there is no rate
  std::string line() const;                 // the current line, as it would be drawn
  int64_t draws() const { return draws_; }  // lines drawn so far (for tests)

 private:
  void maybe_draw(bool force);
  void draw();

  int64_t total_;
  std::string label_;
  FILE* out_;
  ProgressOptions opt_;
  bool tty_ = false;
  double start_ = 0.0;
  int64_t done_ = 0;
  int64_t done_in_run_ = 0;
  std::string status_;
  double last_draw_ = -1e300;
  int64_t last_plain_done_ = 0;
  size_t last_len_ = 0;
  int64_t draws_ = 0;
  bool finished_ = false;
};

}  // namespace flashmem::eval

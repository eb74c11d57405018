// flashmem/eval/progress.cpp — progress bar and ETA.
#include "eval/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

namespace flashmem::eval {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0.0) return "--";
  const auto total = static_cast<int64_t>(std::llround(seconds));
  const int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  char buf[64];
  if (h > 0)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm%02llds", static_cast<long long>(h),
                  static_cast<long long>(m), static_cast<long long>(s));
  else if (m > 0)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(m),
                  static_cast<long long>(s));
  else
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  return buf;
}

std::string render_bar(int64_t done, int64_t total, int width) {
  width = std::max(width, 0);
  int64_t filled = 0;
  if (total > 0) {
    const int64_t d = std::clamp<int64_t>(done, 0, total);
    filled = static_cast<int64_t>(std::llround(static_cast<double>(width) * static_cast<double>(d) /
                                               static_cast<double>(total)));
  }
  std::string bar;
  bar.reserve(static_cast<size_t>(width) + 2);
  bar += '[';
  bar.append(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(width - filled), '.');
  bar += ']';
  return bar;
}

double eta_seconds(int64_t done_in_run, double elapsed_s, int64_t remaining) {
  if (remaining <= 0) return 0.0;
  if (done_in_run <= 0 || !(elapsed_s >= 0.0)) return std::numeric_limits<double>::quiet_NaN();
  return elapsed_s / static_cast<double>(done_in_run) * static_cast<double>(remaining);
}

std::string format_progress_line(const std::string& label, int64_t done, int64_t total,
                                 double elapsed_s, double eta_s, const std::string& status,
                                 int bar_width) {
  const int64_t pct =
      total > 0
          ? static_cast<int64_t>(100.0 * static_cast<double>(std::clamp<int64_t>(done, 0, total)) /
                                 static_cast<double>(total))
          : 0;
  std::string s;
  if (!label.empty()) {
    s += label;
    s += ' ';
  }
  s += render_bar(done, total, bar_width);
  s += ' ';
  s += std::to_string(done);
  s += '/';
  s += std::to_string(total);
  s += ' ';
  s += std::to_string(pct);
  s += "% elapsed ";
  s += format_duration(elapsed_s);
  s += " ETA ";
  s += format_duration(eta_s);
  if (!status.empty()) {
    s += "  ";
    s += status;
  }
  return s;
}

namespace {
double steady_now() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

int terminal_width(FILE* out) {
  winsize ws{};
  if (::ioctl(fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 0;
}
}  // namespace

Progress::Progress(int64_t total, std::string label, FILE* out)
    : Progress(total, std::move(label), out, ProgressOptions{}) {}

Progress::Progress(int64_t total, std::string label, FILE* out, ProgressOptions opt)
    : total_(std::max<int64_t>(total, 0)),
      label_(std::move(label)),
      out_(out),
      opt_(std::move(opt)) {
  if (!opt_.now) opt_.now = steady_now;
  tty_ = opt_.tty ? *opt_.tty : (out_ != nullptr && ::isatty(fileno(out_)) == 1);
  start_ = opt_.now();
}

Progress::~Progress() { finish(); }

double Progress::elapsed() const { return opt_.now() - start_; }

double Progress::eta() const { return eta_seconds(done_in_run_, elapsed(), total_ - done_); }

std::string Progress::line() const {
  return format_progress_line(label_, done_, total_, elapsed(), eta(), status_, opt_.bar_width);
}

void Progress::tick(int64_t n, const std::string& status) {
  done_ += n;
  done_in_run_ += n;
  status_ = status;
  maybe_draw(false);
}

void Progress::skip(int64_t n, const std::string& status) {
  done_ += n;
  status_ = status;
  maybe_draw(false);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (!out_) return;
  if (!tty_ && last_plain_done_ == done_ && draws_ > 0) return;  // the last line says it all
  draw();
  if (tty_) std::fputc('\n', out_);
  std::fflush(out_);
}

void Progress::maybe_draw(bool force) {
  if (!out_ || finished_) return;
  const double t = opt_.now();
  const bool complete = done_ >= total_;
  bool due;
  if (tty_) {
    due = opt_.redraw_hz <= 0.0 || t - last_draw_ >= 1.0 / opt_.redraw_hz;
  } else {
    const auto step = std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil(opt_.plain_step * static_cast<double>(total_))));
    due = done_ - last_plain_done_ >= step || t - last_draw_ >= opt_.plain_every_s;
  }
  if (force || complete || due) draw();
}

void Progress::draw() {
  const double t = opt_.now();
  std::string s = line();
  if (tty_) {
    const int cols = terminal_width(out_);
    if (cols > 1 && s.size() >= static_cast<size_t>(cols)) s.resize(static_cast<size_t>(cols - 1));
    const size_t len = s.size();
    if (len < last_len_) s.append(last_len_ - len, ' ');  // wipe the tail of a longer line
    last_len_ = len;
    std::fprintf(out_, "\r%s", s.c_str());
  } else {
    std::fprintf(out_, "%s\n", s.c_str());
  }
  std::fflush(out_);
  last_draw_ = t;
  last_plain_done_ = done_;
  ++draws_;
}

}  // namespace flashmem::eval

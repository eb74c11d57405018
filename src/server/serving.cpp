#include "server/serving.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace flashmem::server {

void Job::push(std::string_view text) {
  {
    std::lock_guard<std::mutex> lk(m_);
    pending_.append(text);
  }
  cv_.notify_all();
}

void Job::finish(const GenerateResult& r) {
  {
    std::lock_guard<std::mutex> lk(m_);
    result_ = r;
    done_ = true;
  }
  cv_.notify_all();
}

bool Job::next_text(std::string& out) {
  std::unique_lock<std::mutex> lk(m_);
  cv_.wait(lk, [&] { return done_ || !pending_.empty(); });
  out.clear();
  if (pending_.empty()) return false;  // done and drained
  out.swap(pending_);
  return true;
}

Job::Next Job::next_text_for(std::string& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(m_);
  out.clear();
  if (!cv_.wait_for(lk, timeout, [&] { return done_ || !pending_.empty(); })) return Next::kTimeout;
  if (pending_.empty()) return Next::kDone;
  out.swap(pending_);
  return Next::kText;
}

bool Job::wait_for(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(m_);
  return cv_.wait_for(lk, timeout, [&] { return done_; });
}

void Job::wait() {
  std::unique_lock<std::mutex> lk(m_);
  cv_.wait(lk, [&] { return done_; });
}

ServingLoop::ServingLoop(Engine& eng, ServeOptions o) : eng_(eng), o_(o) {
  FM_CHECK(o_.max_running >= 1 && o_.max_queue >= 0, ErrorCode::kInvalidArgument,
           "a server needs ≥ 1 running request and a queue of ≥ 0");
  thread_ = std::thread([this] { loop(); });
}

ServingLoop::~ServingLoop() {
  {
    std::lock_guard<std::mutex> lk(m_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Admission ServingLoop::admission(const std::vector<int32_t>& prompt, const GenerateOptions& opts) const {
  eng_.check_prompt(prompt);
  FM_CHECK(opts.max_new_tokens >= 0, ErrorCode::kInvalidArgument, "max_tokens must be ≥ 0");
  opts.memory.validate();
  opts.sampling.validate();
  const PolicyTraits t = policy_traits(opts.memory.policy);
  FM_CHECK(!t.replays_trace, ErrorCode::kInvalidArgument, "policy ", opts.memory.policy,
           " needs a recorded pass of the same request and is not served (it is an evaluation bound)");
  FM_CHECK(!t.needs_indexer || eng_.indexer() != nullptr, ErrorCode::kInvalidArgument, "policy ",
           opts.memory.policy, " needs a Memory Indexer, and this server has none loaded");
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  const int64_t final_tokens = std::min<int64_t>(eng_.n_ctx(), n_prompt + std::max(opts.max_new_tokens, 1));
  return eng_.request_memory(opts.memory, final_tokens);
}

bool ServingLoop::fits(const Admission& a) const {
  if (running_ >= o_.max_running) return false;
  if (o_.device_kv_bytes && device_admitted_ + a.device_bytes > o_.device_kv_bytes) return false;
  if (o_.host_kv_bytes && host_admitted_ + a.host_bytes > o_.host_kv_bytes) return false;
  return true;
}

std::shared_ptr<Job> ServingLoop::submit(std::vector<int32_t> prompt, GenerateOptions opts) {
  // A served request's device share is fixed when it is admitted: lsa's needle fallback, which
  // would grow it to every page part-way, is off.
  opts.memory.lsa.widen = false;
  const Admission a = admission(prompt, opts);
  auto mib = [](uint64_t b) { return static_cast<double>(b) / double(1 << 20); };
  FM_CHECK(!o_.device_kv_bytes || a.device_bytes <= o_.device_kv_bytes, ErrorCode::kOutOfMemory,
           "this request's KV reserve needs ", mib(a.device_bytes), " MiB (", a.budget_pages, " pages × ",
           eng_.kv_config().n_layers, " layers × ", eng_.kv_config().page_bytes(), " B) but the server's device KV cap is ",
           mib(o_.device_kv_bytes), " MiB: lower kv_budget or max_tokens");
  FM_CHECK(!o_.host_kv_bytes || a.host_bytes <= o_.host_kv_bytes, ErrorCode::kOutOfMemory, "this request's host mirror needs ",
           mib(a.host_bytes), " MiB but the server's host KV cap is ", mib(o_.host_kv_bytes), " MiB: shorten the prompt or max_tokens");
  auto job = std::make_shared<Job>();
  job->admission_ = a;
  job->prompt_ = std::move(prompt);
  job->opts_ = std::move(opts);
  {
    std::lock_guard<std::mutex> lk(m_);
    if (queue_.empty() && fits(a)) {
      admit(job);
    } else if (static_cast<int64_t>(queue_.size()) < o_.max_queue) {
      queue_.push_back(job);
    } else {
      busy();
    }
  }
  cv_.notify_all();
  return job;
}

bool ServingLoop::saturated() const {
  std::lock_guard<std::mutex> lk(m_);
  return static_cast<int64_t>(queue_.size()) >= o_.max_queue && (!queue_.empty() || running_ >= o_.max_running);
}

void ServingLoop::busy() {
  ++metrics_.rejected;
  FM_FAIL(ErrorCode::kBusy, "the server is at capacity (", running_, " running, ", queue_.size(),
          " waiting); try again shortly");
}

void ServingLoop::reject_busy() {
  std::lock_guard<std::mutex> lk(m_);
  busy();
}

void ServingLoop::admit(std::shared_ptr<Job> job) {
  ++running_;
  device_admitted_ += job->admission_.device_bytes;
  host_admitted_ += job->admission_.host_bytes;
  ++metrics_.admitted;
  metrics_.prompt_tokens += static_cast<int64_t>(job->prompt_.size());
  ready_.push_back(std::move(job));
}

ServeMetrics ServingLoop::metrics() const {
  std::lock_guard<std::mutex> lk(m_);
  ServeMetrics m = metrics_;
  m.running = running_;
  m.queued = static_cast<int64_t>(queue_.size());
  m.host_kv_bytes = host_admitted_;
  return m;
}

void ServingLoop::loop() {
  SchedulerOptions so;
  so.max_decode = o_.max_running;
  so.prefill_chunk = o_.prefill_chunk;
  Scheduler sched(eng_, so);
  std::vector<std::pair<Request*, std::shared_ptr<Job>>> live;
  auto end_job = [&](Request* r, const std::shared_ptr<Job>& job) {
    // The counters first: a client that sees its job end sees the server without it.
    const GenerateResult& g = r->result();
    {
      std::lock_guard<std::mutex> lk(m_);
      --running_;
      device_admitted_ -= job->admission_.device_bytes;
      host_admitted_ -= job->admission_.host_bytes;
      metrics_.device_kv_bytes = sched.reserve_bytes();
      metrics_.generated_tokens += static_cast<int64_t>(g.tokens.size());
      metrics_.pages_recalled += g.kv.recall.pages;
      metrics_.widenings += g.kv.widened_at_step >= 0;
      if (g.stop_reason == "cancelled") ++metrics_.cancelled;
      else if (g.stop_reason == "error") ++metrics_.failed;
      else ++metrics_.completed;
    }
    job->finish(g);
  };
  for (;;) {
    std::vector<std::shared_ptr<Job>> admit_now;
    {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || !ready_.empty() || !queue_.empty() || !sched.idle(); });
      if (stop_) break;
      // In arrival order: the first request that does not fit waits, and so do those behind it
      // (no overtaking, so a large request is not starved by small ones).
      while (!queue_.empty() && fits(queue_.front()->admission_)) {
        auto job = queue_.front();
        queue_.pop_front();
        if (job->cancelled()) {  // its client left while it waited
          GenerateResult g;
          g.stop_reason = "cancelled";
          job->finish(g);
          ++metrics_.cancelled;
          continue;
        }
        admit(std::move(job));
      }
      admit_now.swap(ready_);
    }
    for (auto& job : admit_now) {
      Job* jp = job.get();
      try {
        auto r = std::make_unique<Request>(eng_, jp->prompt_, jp->opts_, [jp](std::string_view t) { jp->push(t); });
        live.emplace_back(r.get(), job);
        sched.add(std::move(r));
      } catch (const std::exception& e) {
        GenerateResult g;
        g.stop_reason = "error";
        g.error = e.what();
        g.n_prompt = static_cast<int64_t>(jp->prompt_.size());
        {
          std::lock_guard<std::mutex> lk(m_);
          --running_;
          device_admitted_ -= jp->admission_.device_bytes;
          host_admitted_ -= jp->admission_.host_bytes;
          ++metrics_.failed;
        }
        jp->finish(g);
      }
    }
    for (auto& [r, job] : live)
      if (job->cancelled()) r->cancel();
    if (sched.idle()) continue;
    const int64_t rows_before = sched.stats().decode_rows;
    const auto t0 = std::chrono::steady_clock::now();
    auto done = sched.step();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (auto& r : done) {
      const auto it = std::find_if(live.begin(), live.end(), [&](const auto& e) { return e.first == r.get(); });
      end_job(r.get(), it->second);
      live.erase(it);
    }
    std::lock_guard<std::mutex> lk(m_);
    metrics_.decode_passes = sched.stats().decode_passes;
    metrics_.decode_rows = sched.stats().decode_rows;
    if (sched.stats().decode_rows > rows_before) metrics_.decode_seconds += secs;
    metrics_.device_kv_bytes = sched.reserve_bytes();
  }
  // Stopping: whatever runs or waits ends as cancelled.
  for (auto& [r, job] : live) {
    r->cancel();
    job->finish(r->result());
  }
  std::lock_guard<std::mutex> lk(m_);
  auto cancel_all = [](auto& jobs) {
    for (auto& job : jobs) {
      GenerateResult g;
      g.stop_reason = "cancelled";
      job->finish(g);
    }
  };
  cancel_all(ready_);
  cancel_all(queue_);
  queue_.clear();
  ready_.clear();
}

}  // namespace flashmem::server

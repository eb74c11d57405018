// flashmem/server/serving.h — the serving loop: requests from many client threads, admitted by
// memory, decoded together by one Scheduler on one thread that owns the model.
//
//   ServingLoop loop(eng, opts);                  // starts its thread
//   auto job = loop.submit(prompt, go);           // Error(kOutOfRange / kInvalidArgument / kBusy ...)
//   std::string piece;
//   while (job->next_text(piece)) send(piece);    // streamed text, as it is decoded
//   const GenerateResult& r = job->result();      // after next_text returned false
//
// Admission is by memory, never by masking: a request's device share (its KV reserve: budget
// pages × layers × page bytes) and its host mirror (every page of its prompt plus its tokens)
// are known before it runs. It starts when both fit under the caps next to the requests already
// running, and at most max_running run at once; otherwise it waits in a bounded queue, and past
// that submit() refuses it (Error kBusy: the HTTP layer answers 429 with Retry-After). A request
// that could never fit, even alone, is refused at once with the arithmetic. An admitted request
// runs to its end or until its client cancels it; a cancelled or finished one frees its pages at
// the next step.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/scheduler.h"

namespace flashmem::server {

struct ServeOptions {
  int max_running = 16;           // requests decoding at once
  int max_queue = 64;             // requests waiting beyond those; more are refused (HTTP 429)
  uint64_t device_kv_bytes = 0;   // cap on the running requests' KV reserves (0: none)
  uint64_t host_kv_bytes = 0;     // cap on their host mirrors (0: none)
  int64_t prefill_chunk = 512;    // prompt tokens per prefill pass
};

// What a request needs, decided before it runs.
using Admission = RequestMemory;

// One submitted request as its client sees it. Thread-safe.
class Job {
 public:
  // Waits for more text; false once the request has ended and all its text was taken.
  bool next_text(std::string& out);
  // The same, waiting at most `timeout`: kTimeout when nothing came (out is empty).
  enum class Next { kText, kDone, kTimeout };
  Next next_text_for(std::string& out, std::chrono::milliseconds timeout);
  // Waits for the end (at most `timeout`); true when it has ended.
  void wait();
  bool wait_for(std::chrono::milliseconds timeout);
  // Asks the loop to end the request (client gone); its pages are freed at the next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  // Complete after next_text returned false or wait() returned.
  const GenerateResult& result() const { return result_; }
  const Admission& admission() const { return admission_; }

 private:
  friend class ServingLoop;
  void push(std::string_view text);
  void finish(const GenerateResult& r);

  std::mutex m_;
  std::condition_variable cv_;
  std::string pending_;
  bool done_ = false;
  std::atomic<bool> cancelled_{false};
  GenerateResult result_;
  Admission admission_;
  std::vector<int32_t> prompt_;
  GenerateOptions opts_;
};

// Counters for GET /metrics (a consistent snapshot).
struct ServeMetrics {
  int64_t running = 0, queued = 0;
  int64_t admitted = 0, completed = 0, cancelled = 0, failed = 0, rejected = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t decode_passes = 0, decode_rows = 0;
  double decode_seconds = 0;         // time spent in steps with decode rows
  uint64_t device_kv_bytes = 0;      // the running requests' reserves, as allocated
  uint64_t host_kv_bytes = 0;        // their host mirrors (admission's figure)
  int64_t pages_recalled = 0;
  int64_t widenings = 0;
};

class ServingLoop {
 public:
  ServingLoop(Engine& eng, ServeOptions o);
  ~ServingLoop();  // cancels what is running and waiting, then stops the thread
  ServingLoop(const ServingLoop&) = delete;
  ServingLoop& operator=(const ServingLoop&) = delete;

  // What `prompt` under `opts` needs; Error(kInvalidArgument / kOutOfRange) when it cannot run
  // at all (bad options, a prompt longer than the context, a budget that cannot hold a cycle).
  Admission admission(const std::vector<int32_t>& prompt, const GenerateOptions& opts) const;
  // Queues a request. Error(kOutOfMemory) when it can never fit under the caps,
  // Error(kBusy) when the queue is full; the admission errors above.
  std::shared_ptr<Job> submit(std::vector<int32_t> prompt, GenerateOptions opts);
  // True when a request submitted now would surely be refused as busy (the queue is full): lets
  // the HTTP layer answer 429 before it tokenizes a long prompt.
  bool saturated() const;
  // Counts a refusal and throws Error(kBusy) (what submit() does when the queue is full).
  [[noreturn]] void reject_busy();
  ServeMetrics metrics() const;
  const ServeOptions& options() const { return o_; }

 private:
  void loop();
  bool fits(const Admission& a) const;  // under m_
  void admit(std::shared_ptr<Job> job);  // under m_: counted as running, handed to the loop
  [[noreturn]] void busy();              // under m_: counts the refusal, throws Error(kBusy)

  Engine& eng_;
  ServeOptions o_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;   // waiting for memory or a slot
  std::vector<std::shared_ptr<Job>> ready_;  // admitted, not yet taken by the loop
  bool stop_ = false;
  ServeMetrics metrics_;                      // under m_
  uint64_t device_admitted_ = 0, host_admitted_ = 0;  // under m_
  int64_t running_ = 0;                       // under m_
  std::thread thread_;
};

}  // namespace flashmem::server

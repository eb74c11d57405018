// flashmem/engine/scheduler.h — many requests on one model, a forward pass at a time.
//
//   Scheduler s(eng);
//   s.add(std::make_unique<Request>(eng, prompt_a, opts));
//   s.add(std::make_unique<Request>(eng, prompt_b, opts));
//   while (!s.idle()) for (auto& done : s.step()) use(done->result());
//
// Each step forms one batch, as servers do: one token of every decoding request (at most
// max_decode of them, oldest first), in one Model::forward_batch, so every weight matrix is read
// once for all of them; then one prefill chunk of the oldest request still prefilling, in a pass
// of its own, so a long prompt joins gradually and never stalls the running decodes for its whole
// length. Decode passes hold decode rows only: on the CPU a request decoded among others gets bit
// for bit the tokens it gets alone (Model::forward_batch). Requests join at any step and leave
// when they finish or are cancelled, their device pages released at once.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/request.h"

namespace flashmem {

struct SchedulerOptions {
  int max_decode = 16;          // decode rows per pass (on the CPU, kDecodeMaxRows keeps them exact)
  int64_t prefill_chunk = 512;  // prompt tokens per prefill pass (≤ 0: a whole prompt at once)
  // No decode pass while any request is still prefilling: they then all decode together from
  // the same step (bench --concurrency measures that steady state).
  bool decodes_wait_for_prefills = false;
};

struct SchedulerStats {
  int64_t steps = 0;
  int64_t decode_passes = 0;
  int64_t decode_rows = 0;     // tokens decoded (Σ batch sizes)
  int64_t prefill_passes = 0;
  int64_t prefill_tokens = 0;
  int64_t failed = 0;          // requests ended by an error of their own
};

class Scheduler {
 public:
  explicit Scheduler(Engine& eng, SchedulerOptions o = {});

  // Takes a request (made with prefill chunk 0: the scheduler chunks its prompt). It runs from
  // the next step on.
  void add(std::unique_ptr<Request> r);
  // One pass of decodes and one prefill chunk; returns the requests that finished in it
  // (result() final). An Error raised by one request's own work (its policy's selection, say)
  // ends that request with stop_reason "error" and the others go on; an Error in the shared
  // forward pass ends every request of that pass the same way.
  std::vector<std::unique_ptr<Request>> step();
  // Runs until every request has finished; returns them in the order they finished.
  std::vector<std::unique_ptr<Request>> run();

  bool idle() const { return running_.empty(); }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t prefilling() const;
  // The device reserve bytes of the requests running now.
  uint64_t reserve_bytes() const;
  const SchedulerStats& stats() const { return stats_; }

 private:
  Engine& eng_;
  SchedulerOptions o_;
  std::vector<std::unique_ptr<Request>> running_;  // in arrival order
  SchedulerStats stats_;
};

}  // namespace flashmem

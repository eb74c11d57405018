#include "engine/scheduler.h"

#include <exception>

#include "core/error.h"

namespace flashmem {

Scheduler::Scheduler(Engine& eng, SchedulerOptions o) : eng_(eng), o_(o) {
  FM_CHECK(o_.max_decode >= 1, ErrorCode::kInvalidArgument, "a scheduler needs ≥ 1 decode row per pass");
}

void Scheduler::add(std::unique_ptr<Request> r) {
  FM_CHECK(r != nullptr, ErrorCode::kInvalidArgument, "no request to add");
  r->set_prefill_chunk(o_.prefill_chunk);
  running_.push_back(std::move(r));
}

int64_t Scheduler::prefilling() const {
  int64_t n = 0;
  for (const auto& r : running_) n += r->prefilling();
  return n;
}

uint64_t Scheduler::reserve_bytes() const {
  uint64_t b = 0;
  for (const auto& r : running_) b += r->reserve_bytes();
  return b;
}

namespace {

// Runs one forward pass over `rows`' inputs; if it throws, every request in it ends with the
// error (their KV is part-way through the pass).
void run_pass(Model& m, const std::vector<SequenceInput>& batch, const std::vector<Request*>& rows,
              int64_t& failed) {
  if (batch.empty()) return;
  try {
    m.forward_batch(batch);
  } catch (const std::exception& e) {
    for (Request* r : rows) r->fail(e.what());
    failed += static_cast<int64_t>(rows.size());
    return;
  }
  for (Request* r : rows) r->consume();
}

// A request's own work before a pass (sampling, its policy's selection): an error ends it alone.
std::optional<SequenceInput> next_of(Request& r, int64_t& failed) {
  try {
    return r.next_input();
  } catch (const std::exception& e) {
    r.fail(e.what());
    ++failed;
    return std::nullopt;
  }
}

}  // namespace

std::vector<std::unique_ptr<Request>> Scheduler::step() {
  ++stats_.steps;
  std::vector<SequenceInput> batch;
  std::vector<Request*> rows;
  const bool hold = o_.decodes_wait_for_prefills && prefilling() > 0;
  for (auto& r : running_) {
    if (hold || static_cast<int>(batch.size()) >= o_.max_decode) break;
    if (r->finished() || r->prefilling()) continue;
    if (auto in = next_of(*r, stats_.failed)) {
      batch.push_back(*in);
      rows.push_back(r.get());
    }
  }
  if (!batch.empty()) {
    ++stats_.decode_passes;
    stats_.decode_rows += static_cast<int64_t>(batch.size());
    run_pass(eng_.model(), batch, rows, stats_.failed);
  }
  for (auto& r : running_) {
    if (r->finished() || !r->prefilling()) continue;
    if (auto in = next_of(*r, stats_.failed)) {
      ++stats_.prefill_passes;
      stats_.prefill_tokens += static_cast<int64_t>(in->tokens.size());
      run_pass(eng_.model(), {*in}, {r.get()}, stats_.failed);
    }
    break;  // one prefill chunk per step
  }
  std::vector<std::unique_ptr<Request>> done;
  std::vector<std::unique_ptr<Request>> still;
  for (auto& r : running_) (r->finished() ? done : still).push_back(std::move(r));
  running_ = std::move(still);
  return done;
}

std::vector<std::unique_ptr<Request>> Scheduler::run() {
  std::vector<std::unique_ptr<Request>> all;
  while (!idle())
    for (auto& r : step()) all.push_back(std::move(r));
  return all;
}

}  // namespace flashmem

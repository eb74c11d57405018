// flashmem/memory/recall.h — moving KV pages between the host mirror and the device reserve.
//
// Recall is one batched operation per cycle (DESIGN.md §6: scattered page copies issued one by
// one waste the link). The copies go through the backend's copy_pages: memcpy on the thread
// pool for the CPU backend, async copies on one stream with a single wait for CUDA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "ops/backend.h"

namespace flashmem {

struct RecallStats {
  int64_t batches = 0;    // gather calls with at least one page
  int64_t pages = 0;      // pages recalled host → device
  int64_t written = 0;    // pages written through device → host
  uint64_t bytes = 0;     // recalled bytes
  double seconds = 0.0;   // time spent in gathers

  RecallStats& operator+=(const RecallStats& o) {
    batches += o.batches;
    pages += o.pages;
    written += o.written;
    bytes += o.bytes;
    seconds += o.seconds;
    return *this;
  }
  // What happened since `earlier` (a snapshot of the same counters).
  RecallStats since(const RecallStats& earlier) const {
    return {batches - earlier.batches, pages - earlier.pages, written - earlier.written, bytes - earlier.bytes,
            seconds - earlier.seconds};
  }
};

class RecallEngine {
 public:
  explicit RecallEngine(Backend& be) : be_(be) {}
  // Copies every page (page_bytes each) mirror → reserve as one batch, in order with the ops (a
  // later op sees the pages; see Backend::copy_pages).
  void gather(std::span<const PageCopy> copies, size_t page_bytes);
  // Writes completed pages reserve → mirror (write-through).
  void write_back(std::span<const PageCopy> copies, size_t page_bytes);
  Backend& backend() const { return be_; }
  // The counters; `seconds` is the device's time in the gathers. CUDA's copies run on after
  // gather() returns: their time is read from marks around them once they are done, without
  // waiting for them here (a gather's time shows once the ops after it have run, e.g. after the
  // next forward pass that read logits).
  const RecallStats& stats() const;
  // The same with every gather's time in, waiting for the device if it must (a final report).
  const RecallStats& settled_stats() const;

 private:
  // Adds the time of the gathers done (all of them if `wait`) to stats_.seconds.
  void settle(bool wait) const;

  Backend& be_;
  mutable RecallStats stats_;
  mutable std::vector<std::pair<uint64_t, uint64_t>> pending_;  // marks around gathers not yet read
};

}  // namespace flashmem

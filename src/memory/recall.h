// flashmem/memory/recall.h — moving KV pages between the host mirror and the device reserve.
//
// Recall is one batched operation per cycle (DESIGN.md §6: scattered page copies issued one by
// one waste the link). The copies go through the backend's copy_pages: memcpy on the thread
// pool for the CPU backend, async copies on one stream with a single wait for CUDA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

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
  // Copies every page (page_bytes each) mirror → reserve as one batch; returns when done.
  void gather(std::span<const PageCopy> copies, size_t page_bytes);
  // Writes completed pages reserve → mirror (write-through).
  void write_back(std::span<const PageCopy> copies, size_t page_bytes);
  Backend& backend() const { return be_; }
  const RecallStats& stats() const { return stats_; }

 private:
  Backend& be_;
  RecallStats stats_;
};

}  // namespace flashmem

// flashmem/memory/recall.h — moving KV pages between the host mirror and the device reserve.
//
// Recall is one batched operation per cycle (DESIGN.md §6: scattered page copies issued one by
// one waste the link; one gather reads pinned host memory at full speed). The CPU engine does
// the copies with memcpy on the thread pool; the CUDA engine implements the same interface
// with a gather kernel on a copy stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace flashmem {

class ThreadPool;

struct PageCopy {
  const uint8_t* src = nullptr;
  uint8_t* dst = nullptr;
};

struct RecallStats {
  int64_t batches = 0;    // gather calls with at least one page
  int64_t pages = 0;      // pages recalled host → device
  int64_t written = 0;    // pages written through device → host
  uint64_t bytes = 0;     // recalled bytes
  double seconds = 0.0;   // time spent in gathers
};

class RecallEngine {
 public:
  virtual ~RecallEngine() = default;
  // Copies every page (page_bytes each) mirror → reserve as one batch; returns when done.
  virtual void gather(std::span<const PageCopy> copies, size_t page_bytes) = 0;
  // Writes completed pages reserve → mirror (write-through).
  virtual void write_back(std::span<const PageCopy> copies, size_t page_bytes) = 0;
  const RecallStats& stats() const { return stats_; }

 protected:
  RecallStats stats_;
};

class CpuRecall final : public RecallEngine {
 public:
  // pool may be null (copies run on the calling thread).
  explicit CpuRecall(ThreadPool* pool = nullptr) : pool_(pool) {}
  void gather(std::span<const PageCopy> copies, size_t page_bytes) override;
  void write_back(std::span<const PageCopy> copies, size_t page_bytes) override;

 private:
  void copy(std::span<const PageCopy> copies, size_t page_bytes);
  ThreadPool* pool_;
};

}  // namespace flashmem

#include "memory/recall.h"

namespace flashmem {

void RecallEngine::gather(std::span<const PageCopy> copies, size_t page_bytes) {
  if (copies.empty()) return;
  const uint64_t a = be_.mark();
  be_.copy_pages(CopyDir::kHostToBackend, copies, page_bytes);
  pending_.emplace_back(a, be_.mark());
  if (pending_.size() * 2 >= Backend::kMarks / 2) settle(true);  // before the backend reuses the marks
  stats_.batches += 1;
  stats_.pages += static_cast<int64_t>(copies.size());
  stats_.bytes += copies.size() * page_bytes;
}

const RecallStats& RecallEngine::stats() const {
  settle(false);
  return stats_;
}

const RecallStats& RecallEngine::settled_stats() const {
  settle(true);
  return stats_;
}

void RecallEngine::settle(bool wait) const {
  size_t done = 0;
  for (; done < pending_.size(); ++done) {
    const std::optional<double> s = be_.seconds_between(pending_[done].first, pending_[done].second, wait);
    if (!s) break;
    stats_.seconds += *s;
  }
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(done));
}

void RecallEngine::write_back(std::span<const PageCopy> copies, size_t page_bytes) {
  if (copies.empty()) return;
  be_.copy_pages(CopyDir::kBackendToHost, copies, page_bytes);
  stats_.written += static_cast<int64_t>(copies.size());
}

}  // namespace flashmem

#include "memory/recall.h"

#include <chrono>

namespace flashmem {

void RecallEngine::gather(std::span<const PageCopy> copies, size_t page_bytes) {
  if (copies.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  be_.copy_pages(CopyDir::kHostToBackend, copies, page_bytes);
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stats_.batches += 1;
  stats_.pages += static_cast<int64_t>(copies.size());
  stats_.bytes += copies.size() * page_bytes;
}

void RecallEngine::write_back(std::span<const PageCopy> copies, size_t page_bytes) {
  if (copies.empty()) return;
  be_.copy_pages(CopyDir::kBackendToHost, copies, page_bytes);
  stats_.written += static_cast<int64_t>(copies.size());
}

}  // namespace flashmem

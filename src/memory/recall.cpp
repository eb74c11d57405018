#include "memory/recall.h"

#include <chrono>
#include <cstring>

#include "core/thread_pool.h"

namespace flashmem {

void CpuRecall::copy(std::span<const PageCopy> copies, size_t page_bytes) {
  // Small batches are not worth waking the pool for.
  if (pool_ == nullptr || copies.size() * page_bytes < (size_t{1} << 20)) {
    for (const PageCopy& c : copies) std::memcpy(c.dst, c.src, page_bytes);
    return;
  }
  pool_->run(static_cast<int64_t>(copies.size()), [&](int64_t i, int) {
    std::memcpy(copies[i].dst, copies[i].src, page_bytes);
  });
}

void CpuRecall::gather(std::span<const PageCopy> copies, size_t page_bytes) {
  if (copies.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  copy(copies, page_bytes);
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stats_.batches += 1;
  stats_.pages += static_cast<int64_t>(copies.size());
  stats_.bytes += copies.size() * page_bytes;
}

void CpuRecall::write_back(std::span<const PageCopy> copies, size_t page_bytes) {
  copy(copies, page_bytes);
  stats_.written += static_cast<int64_t>(copies.size());
}

}  // namespace flashmem

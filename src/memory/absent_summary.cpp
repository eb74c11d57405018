#include "memory/absent_summary.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cpu/attention.h"

namespace flashmem {

AbsentSummary::AbsentSummary(Backend& be, int n_layers, int host_threads)
    : be_(be), pool_(std::make_unique<ThreadPool>(std::max(1, host_threads))),
      layers_(static_cast<size_t>(n_layers)) {
  FM_CHECK(n_layers > 0, ErrorCode::kInvalidArgument, "an absent summary needs layers");
}

AbsentSummary::~AbsentSummary() = default;

bool AbsentSummary::stale(int layer, std::span<const int32_t> selected, int32_t completed, int64_t rows) const {
  const Layer& L = layers_.at(static_cast<size_t>(layer));
  if (L.completed < 0 || L.rows != rows || completed < L.completed) return true;
  // The selection restricted to the pages completed at the refresh must be unchanged ...
  const auto mid = std::lower_bound(selected.begin(), selected.end(), L.completed);
  if (!std::equal(selected.begin(), mid, L.selected.begin(), L.selected.end())) return true;
  // ... and every page completed since must be selected (sorted and distinct: count them).
  const auto end = std::lower_bound(mid, selected.end(), completed);
  return end - mid != completed - L.completed;
}

void AbsentSummary::refresh(int layer, const AttentionParams& p, const float* q, const int32_t* pos,
                            int64_t m, std::span<const KvPageRef> absent,
                            std::span<const int32_t> selected, int32_t completed) {
  const auto t0 = std::chrono::steady_clock::now();
  Layer& L = layers_.at(static_cast<size_t>(layer));
  const int64_t rows = m * p.n_heads;
  host_o_.assign(static_cast<size_t>(rows * p.head_dim), 0.0f);
  host_lse_.assign(static_cast<size_t>(rows), -INFINITY);
  // No absent page: lse −inf, which the merge leaves out.
  if (!absent.empty()) cpu::attention(*pool_, p, q, pos, m, absent, host_o_.data(), host_lse_.data());
  const size_t o_bytes = host_o_.size() * sizeof(float), lse_bytes = host_lse_.size() * sizeof(float);
  if (L.o.bytes() != o_bytes) L.o = BackendBuffer(be_, o_bytes);
  if (L.lse.bytes() != lse_bytes) L.lse = BackendBuffer(be_, lse_bytes);
  be_.upload(L.o.get(), host_o_.data(), o_bytes);
  be_.upload(L.lse.get(), host_lse_.data(), lse_bytes);
  L.selected.assign(selected.begin(), std::lower_bound(selected.begin(), selected.end(), completed));
  L.completed = completed;
  L.rows = rows;
  ++refreshes_;
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void AbsentSummary::fold(int layer, int64_t rows, int head_dim, float* out, float* lse) {
  const Layer& L = layers_.at(static_cast<size_t>(layer));
  FM_ICHECK(L.rows == rows && L.completed >= 0, "absent summary of layer ", layer, " not made for ", rows, " rows");
  be_.merge_attention(rows, head_dim, out, lse, L.o.as<float>(), L.lse.as<float>());
}

uint64_t AbsentSummary::device_bytes() const {
  uint64_t b = 0;
  for (const Layer& L : layers_) b += L.o.bytes() + L.lse.bytes();
  return b;
}

}  // namespace flashmem

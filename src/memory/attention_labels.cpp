#include "memory/attention_labels.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace flashmem {

void ChunkHitRecorder::set_step(int64_t step) {
  FM_ICHECK(step >= step_, "chunk hits: step ", step, " after ", step_);
  step_ = step;
}

void ChunkMassReader::read(Backend& be, const AttentionParams& p, const float* q, int32_t pos,
                           std::span<const KvPageRef> pages, int chunk_tokens, int64_t n_chunks) {
  const size_t n = static_cast<size_t>(p.n_heads) * n_chunks;
  if (be_ != &be || dev_.bytes() < n * sizeof(float)) {
    dev_.reset();
    be_ = &be;
    dev_ = BackendBuffer(be, std::max<size_t>(n, 1024) * sizeof(float));
  }
  be.chunk_mass(p, q, pos, pages, chunk_tokens, n_chunks, dev_.as<float>());
  host_.resize(n);
  be.download(host_.data(), dev_.get(), n * sizeof(float));
}

void ChunkHitRecorder::after_attend(Backend& be, int /*layer*/, const AttentionParams& p, const float* q,
                                    const int32_t* pos, int64_t m, std::span<const KvPageRef> pages,
                                    std::span<const int32_t> /*ids*/) {
  if (m != 1) return;
  const int64_t n_chunks = pos[0] / chunk_tokens_ + 1;
  if (static_cast<int64_t>(hits_.size()) <= step_) {
    hits_.resize(step_ + 1);
    mass_sum_.resize(step_ + 1);
    pairs_.resize(step_ + 1, 0);
  }
  auto& hits = hits_[step_];
  auto& msum = mass_sum_[step_];
  if (static_cast<int64_t>(hits.size()) < n_chunks) hits.resize(n_chunks, 0);
  if (static_cast<int64_t>(msum.size()) < n_chunks) msum.resize(n_chunks, 0.0);
  pairs_[step_] += p.n_heads;
  mass_.read(be, p, q, pos[0], pages, chunk_tokens_, n_chunks);
  for (int h = 0; h < p.n_heads; ++h) {
    const float* mass = mass_.mass().data() + static_cast<size_t>(h) * n_chunks;
    for (int64_t c = 0; c < n_chunks; ++c) msum[c] += mass[c];
    order_.clear();
    for (int64_t c = 0; c < n_chunks; ++c)
      if (mass[c] > 0.0f) order_.emplace_back(mass[c], static_cast<int32_t>(c));
    std::sort(order_.begin(), order_.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    double cum = 0.0;
    for (const auto& [w, c] : order_) {  // shortest prefix reaching top_p (at least one)
      ++hits[c];
      cum += w;
      if (cum >= top_p_) break;
    }
  }
}

std::vector<std::pair<int32_t, int32_t>> ChunkHitRecorder::step_hits(int64_t s) const {
  std::vector<std::pair<int32_t, int32_t>> out;
  if (s < 0 || s >= steps()) return out;
  for (size_t c = 0; c < hits_[s].size(); ++c)
    if (hits_[s][c] > 0) out.emplace_back(static_cast<int32_t>(c), hits_[s][c]);
  return out;
}

std::vector<std::pair<int32_t, float>> ChunkHitRecorder::step_mass(int64_t s) const {
  std::vector<std::pair<int32_t, float>> out;
  if (s < 0 || s >= steps() || pairs_[s] == 0) return out;
  const double inv = 1.0 / static_cast<double>(pairs_[s]);
  for (size_t c = 0; c < mass_sum_[s].size(); ++c)
    if (mass_sum_[s][c] > 0.0) out.emplace_back(static_cast<int32_t>(c), static_cast<float>(mass_sum_[s][c] * inv));
  return out;
}

}  // namespace flashmem

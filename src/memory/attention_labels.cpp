#include "memory/attention_labels.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace flashmem {

void ChunkHitRecorder::set_step(int64_t step) {
  FM_ICHECK(step >= step_, "chunk hits: step ", step, " after ", step_);
  step_ = step;
}

void ChunkHitRecorder::after_attend(TieredKvStore& /*s*/, int /*layer*/, const AttentionParams& p,
                                    const float* q, const int32_t* pos, int64_t m,
                                    std::span<const KvPageRef> pages, std::span<const int32_t> /*ids*/) {
  if (m != 1) return;
  const int d = p.head_dim, rep = p.n_heads / p.n_kv_heads, pt = p.page_tokens;
  const int64_t n_chunks = pos[0] / chunk_tokens_ + 1;
  if (static_cast<int64_t>(hits_.size()) <= step_) hits_.resize(step_ + 1);
  auto& hits = hits_[step_];
  if (static_cast<int64_t>(hits.size()) < n_chunks) hits.resize(n_chunks, 0);
  std::vector<double> chunk_mass(static_cast<size_t>(n_chunks));
  for (int h = 0; h < p.n_heads; ++h) {
    const float* qh = q + static_cast<size_t>(h) * d;
    const int64_t off = static_cast<int64_t>(h / rep) * p.head_stride;
    scores_.clear();
    double mx = -INFINITY;
    for (const KvPageRef& pg : pages)
      for (int j = 0; j < pg.n_tokens; ++j) {
        double s = -INFINITY;
        if (pg.pos0 + j <= pos[0]) {
          float dot = 0.0f;
          for (int c = 0; c < d; ++c) dot += qh[c] * kv_load(pg.k, p.kv_type, off + int64_t{c} * pt + j);
          s = static_cast<double>(dot) * p.scale;
        }
        scores_.push_back(s);
        mx = std::max(mx, s);
      }
    std::fill(chunk_mass.begin(), chunk_mass.end(), 0.0);
    double sum = 0.0;
    size_t k = 0;
    for (const KvPageRef& pg : pages)
      for (int j = 0; j < pg.n_tokens; ++j, ++k) {
        if (!(scores_[k] > -INFINITY)) continue;
        const double e = std::exp(scores_[k] - mx);
        sum += e;
        chunk_mass[(pg.pos0 + j) / chunk_tokens_] += e;
      }
    if (!(sum > 0.0)) continue;
    mass_.clear();
    for (int64_t c = 0; c < n_chunks; ++c)
      if (chunk_mass[c] > 0.0) mass_.emplace_back(chunk_mass[c] / sum, static_cast<int32_t>(c));
    std::sort(mass_.begin(), mass_.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    double cum = 0.0;
    for (const auto& [mass, c] : mass_) {  // shortest prefix reaching top_p (at least one)
      ++hits[c];
      cum += mass;
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

}  // namespace flashmem

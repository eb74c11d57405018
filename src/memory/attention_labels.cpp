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
  int64_t n_tok = 0;
  for (const KvPageRef& pg : pages) n_tok += pg.n_tokens;
  dots_.assign(static_cast<size_t>(p.n_heads) * n_tok, 0.0f);
  keys_.resize(static_cast<size_t>(d) * pt);
  for (int g = 0; g < p.n_kv_heads; ++g) {
    const int64_t off = static_cast<int64_t>(g) * p.head_stride;
    int64_t tok0 = 0;
    for (const KvPageRef& pg : pages) {
      const int vis = static_cast<int>(std::clamp<int64_t>(pos[0] - pg.pos0 + 1, 0, pg.n_tokens));
      for (int c = 0; c < d; ++c)
        for (int j = 0; j < vis; ++j) keys_[static_cast<size_t>(c) * pt + j] = kv_load(pg.k, p.kv_type, off + int64_t{c} * pt + j);
      for (int h = g * rep; h < (g + 1) * rep; ++h) {
        const float* qh = q + static_cast<size_t>(h) * d;
        float* dot = dots_.data() + static_cast<size_t>(h) * n_tok + tok0;
        for (int c = 0; c < d; ++c) {
          const float qc = qh[c];
          const float* kr = keys_.data() + static_cast<size_t>(c) * pt;
          for (int j = 0; j < vis; ++j) dot[j] += qc * kr[j];
        }
      }
      tok0 += pg.n_tokens;
    }
  }
  for (int h = 0; h < p.n_heads; ++h) {
    const float* dot = dots_.data() + static_cast<size_t>(h) * n_tok;
    scores_.clear();
    double mx = -INFINITY;
    int64_t k = 0;
    for (const KvPageRef& pg : pages)
      for (int j = 0; j < pg.n_tokens; ++j, ++k) {
        const double s = pg.pos0 + j <= pos[0] ? static_cast<double>(dot[k]) * p.scale : -INFINITY;
        scores_.push_back(s);
        mx = std::max(mx, s);
      }
    std::fill(chunk_mass.begin(), chunk_mass.end(), 0.0);
    double sum = 0.0;
    k = 0;
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

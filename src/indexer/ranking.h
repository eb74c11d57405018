// flashmem/indexer/ranking.h — how Memory Indexer scores are ranked, shared by the lsa policy
// (memory/lsa.h) and the trainer's metrics (train/metrics.h), below both.
#pragma once

#include <cstdint>
#include <vector>

namespace flashmem {

// The contrast window lsa ranks with by default (LsaOptions::contrast), which the trainer's
// metrics also rank with ("mean, lsa order").
inline constexpr int kContrastWindow = 16;

// Positional contrast: rise[ch] = max(0, score[ch] − the lower quartile of score over
// [ch − window, ch + window] ∩ [lo, hi)) for ch in [lo, hi); rise is score.size() long, 0
// elsewhere. `sorted` is scratch. O((hi − lo) · window) moves, no allocation once warm.
void contrast_rise(const std::vector<float>& score, int64_t lo, int64_t hi, int window, std::vector<float>& rise,
                   std::vector<float>& sorted);

}  // namespace flashmem

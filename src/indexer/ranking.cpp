#include "indexer/ranking.h"

#include <algorithm>

namespace flashmem {

void contrast_rise(const std::vector<float>& score, int64_t lo, int64_t hi, int window, std::vector<float>& rise,
                   std::vector<float>& sorted) {
  // The window slides one chunk at a time, kept sorted, so the quartile is one lookup.
  rise.assign(score.size(), 0.0f);
  sorted.clear();
  const int64_t w = window;
  for (int64_t ch = lo; ch < std::min(hi, lo + w); ++ch)
    sorted.insert(std::upper_bound(sorted.begin(), sorted.end(), score[ch]), score[ch]);
  for (int64_t ch = lo; ch < hi; ++ch) {
    if (ch + w < hi) sorted.insert(std::upper_bound(sorted.begin(), sorted.end(), score[ch + w]), score[ch + w]);
    if (ch - w - 1 >= lo) sorted.erase(std::lower_bound(sorted.begin(), sorted.end(), score[ch - w - 1]));
    rise[ch] = std::max(0.0f, score[ch] - sorted[sorted.size() / 4]);
  }
}

}  // namespace flashmem

#include "memory/observation.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace flashmem {

PromptObserver::PromptObserver(int32_t from, int chunk_tokens) : from_(from), chunk_tokens_(chunk_tokens) {
  FM_CHECK(chunk_tokens >= 1, ErrorCode::kInvalidArgument, "observation chunks must hold ≥ 1 token");
}

void PromptObserver::on_part(Backend& be, int layer, const AttentionParams& p, const float* q,
                             const int32_t* pos, int64_t m, std::span<const KvPageRef> pages, const float* lse) {
  int64_t r0 = 0;
  while (r0 < m && pos[r0] < from_) ++r0;
  if (r0 == m) return;  // no observed row in this call
  FM_ICHECK(p.page_tokens % chunk_tokens_ == 0, "observation chunk ", chunk_tokens_, " must divide the page ",
            p.page_tokens);
  if (layer != layer_) {
    FM_ICHECK(layer_ < 0, "layer ", layer_, " was not ended before layer ", layer);
    layer_ = layer;
    n_heads_ = p.n_heads;
    rows_.clear();
    run_lse_.clear();
    acc_.clear();
  }
  const int nh = p.n_heads;
  if (lse) {
    lse_host_.resize(static_cast<size_t>(m - r0) * nh);
    be.download(lse_host_.data(), lse + r0 * nh, lse_host_.size() * sizeof(float));
  }
  for (int64_t i = r0; i < m; ++i) {
    // Rows of one layer arrive in every part in the same order (the same ubatch), or later
    // ubatches bring new positions: find or add this position's row.
    const auto it = std::find(rows_.begin(), rows_.end(), pos[i]);
    const size_t row = static_cast<size_t>(it - rows_.begin());
    if (it == rows_.end()) {
      rows_.push_back(pos[i]);
      run_lse_.resize(rows_.size() * nh, -INFINITY);
      acc_.resize(rows_.size() * nh);
    }
    const int64_t n_chunks = pos[i] / chunk_tokens_ + 1;
    n_chunks_ = std::max(n_chunks_, n_chunks);
    reader_.read(be, p, q + static_cast<size_t>(i) * nh * p.head_dim, pos[i], pages, chunk_tokens_, n_chunks);
    for (int h = 0; h < nh; ++h) {
      // This part's scale: its own lse, or 0 for a single part holding everything (mass as is).
      const double part = lse ? lse_host_[static_cast<size_t>(i - r0) * nh + h] : 0.0;
      if (!(part > -INFINITY)) continue;  // nothing visible in this part
      double& run = run_lse_[row * nh + h];
      std::vector<double>& acc = acc_[row * nh + h];
      acc.resize(static_cast<size_t>(n_chunks), 0.0);
      // Invariant: acc = Σ_parts mass_part · exp(lse_part − run), run = log Σ_parts exp(lse_part):
      // each part's mass sums to 1, so acc is the softmax over every key seen so far.
      const double hi = std::max(run, part);
      const double joint = hi + std::log((run > -INFINITY ? std::exp(run - hi) : 0.0) + std::exp(part - hi));
      const double keep = run > -INFINITY ? std::exp(run - joint) : 0.0, add = std::exp(part - joint);
      const float* mass = reader_.mass().data() + static_cast<size_t>(h) * n_chunks;
      for (int64_t c = 0; c < n_chunks; ++c) acc[c] = acc[c] * keep + mass[c] * add;
      run = joint;
    }
  }
}

void PromptObserver::end_layer(int layer) {
  if (layer_ != layer) return;  // nothing observed
  if (static_cast<int>(total_.size()) <= layer) {
    total_.resize(static_cast<size_t>(layer) + 1);
    pairs_.resize(static_cast<size_t>(layer) + 1, 0);
  }
  std::vector<double>& total = total_[layer];
  total.resize(std::max<size_t>(total.size(), static_cast<size_t>(n_chunks_)), 0.0);
  for (size_t k = 0; k < acc_.size(); ++k) {
    if (!(run_lse_[k] > -INFINITY)) continue;
    // acc sums to 1 up to rounding; renormalise so every (head, row) weighs the same.
    double sum = 0.0;
    for (double v : acc_[k]) sum += v;
    if (!(sum > 0.0) || !std::isfinite(sum)) continue;
    for (size_t c = 0; c < acc_[k].size(); ++c) total[c] += acc_[k][c] / sum;
    ++pairs_[layer];
  }
  layer_ = -1;
}

std::vector<std::vector<float>> PromptObserver::layer_mass() const {
  std::vector<std::vector<float>> out(total_.size());
  for (size_t l = 0; l < total_.size(); ++l) {
    if (pairs_[l] == 0) continue;
    out[l].assign(static_cast<size_t>(n_chunks_), 0.0f);
    for (size_t c = 0; c < total_[l].size(); ++c)
      out[l][c] = static_cast<float>(total_[l][c] / static_cast<double>(pairs_[l]));
  }
  return out;
}

std::vector<float> PromptObserver::mass() const {
  std::vector<double> sum(static_cast<size_t>(n_chunks_), 0.0);
  int64_t pairs = 0;
  for (size_t l = 0; l < total_.size(); ++l) {
    for (size_t c = 0; c < total_[l].size(); ++c) sum[c] += total_[l][c];
    pairs += pairs_[l];
  }
  std::vector<float> out;
  if (pairs == 0) return out;
  out.resize(sum.size());
  for (size_t c = 0; c < sum.size(); ++c) out[c] = static_cast<float>(sum[c] / static_cast<double>(pairs));
  return out;
}

}  // namespace flashmem

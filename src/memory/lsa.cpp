#include "memory/lsa.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <sstream>

#include "core/error.h"

namespace flashmem {

void LsaOptions::validate() const {
  FM_CHECK(threshold > 0.0f && threshold < 1.0f, ErrorCode::kInvalidArgument,
           "the lsa threshold must be in (0, 1), got ", threshold);
  FM_CHECK(widen_kept > 0.0f && widen_kept <= 1.0f && widen_flat >= 0.0f, ErrorCode::kInvalidArgument,
           "bad needle-fallback thresholds");
  FM_CHECK(spread >= 0 && spread <= 64, ErrorCode::kInvalidArgument, "the lsa spread must be in [0, 64] chunks, got ",
           spread);
  FM_CHECK(contrast >= 0 && contrast <= 4096, ErrorCode::kInvalidArgument,
           "the lsa contrast window must be in [0, 4096] chunks, got ", contrast);
  FM_CHECK(observe >= 0 && observe <= 4096, ErrorCode::kInvalidArgument,
           "the lsa observation window must be in [0, 4096] tokens, got ", observe);
  FM_CHECK(observe_top_p > 0.0f && observe_top_p <= 1.0f, ErrorCode::kInvalidArgument,
           "the lsa observation top-p must be in (0, 1], got ", observe_top_p);
  FM_CHECK(observe_spread >= 0 && observe_spread <= 64, ErrorCode::kInvalidArgument,
           "the lsa observation spread must be in [0, 64] pages, got ", observe_spread);
  FM_CHECK(widen_absent > 0.0f && widen_absent <= 1.0f, ErrorCode::kInvalidArgument,
           "the lsa absent-mass fallback threshold must be in (0, 1], got ", widen_absent);
}

LsaPolicy::LsaPolicy(const KvCacheConfig& kv, std::shared_ptr<LsaScorer> scorer,
                     const IndexerQuery& query, Backend* device, LsaOptions o)
    : kv_(kv), scorer_(std::move(scorer)), query_(query), keys_(kv, scorer_->keys_config(), device),
      opts_(std::move(o)) {
  opts_.validate();
  FM_CHECK(query_.layers == scorer_->keys_config().layers, ErrorCode::kInvalidArgument,
           "the indexer query does not observe the indexer's target layers");
}

uint64_t LsaPolicy::scratch_bytes() const {
  size_t floats = prob_.capacity() + ens_.capacity() + rank_.capacity() + key_.capacity() +
                  rise_.capacity() + window_.capacity() + page_obs_.capacity() + layer_score_.capacity();
  floats += page_score_.capacity();
  const size_t ints = pick_.capacity() + layer_pick_.capacity() + order_.capacity();
  return scorer_->device_bytes() + floats * sizeof(float) + ints * sizeof(int32_t);
}

namespace {
// out[ch] = max(in[ch], 0.9^d · in[ch ± d]) for d ≤ spread, within [lo, hi).
void spread_scores(const std::vector<float>& in, int64_t lo, int64_t hi, int spread, std::vector<float>& out) {
  out = in;
  for (int64_t ch = lo; ch < hi; ++ch) {
    float w = 1.0f;
    for (int d = 1; d <= spread; ++d) {
      w *= 0.9f;
      if (ch - d >= lo) out[ch] = std::max(out[ch], w * in[ch - d]);
      if (ch + d < hi) out[ch] = std::max(out[ch], w * in[ch + d]);
    }
  }
}
}  // namespace

void LsaPolicy::rank_pages(const SelectContext& c, const std::vector<float>& chunk, std::vector<float>& page) {
  const int cpp = keys_.chunks_per_page();
  const int64_t lo = c.middle_begin * cpp, hi = c.middle_end * cpp;
  // Which chunks pass θ (a chosen chunk's neighbours with it, by spread) ...
  spread_scores(chunk, lo, hi, opts_.spread, rank_);
  // ... and the order among pages with as many: their best chunk, or its rise above its
  // surroundings' lower quartile.
  const std::vector<float>* key = &rank_;
  if (opts_.contrast > 0) {
    contrast_rise(chunk, lo, hi, opts_.contrast, rise_, window_);
    spread_scores(rise_, lo, hi, opts_.spread, key_);
    key = &key_;
  }
  page.assign(static_cast<size_t>(c.n_pages), 0.0f);
  for (int64_t pg = c.middle_begin; pg < c.middle_end; ++pg) {
    float best = 0.0f;
    int ranked = 0;
    for (int64_t ch = pg * cpp; ch < (pg + 1) * cpp; ++ch) {
      ranked += rank_[ch] > opts_.threshold;
      best = std::max(best, (*key)[ch]);
    }
    page[pg] = static_cast<float>(ranked) + best;  // count first, best chunk breaks ties
  }
}

double LsaPolicy::observed_pages(const SelectContext& c) {
  const std::vector<float>& obs = query_.prompt_mass[c.layer];
  page_obs_.assign(static_cast<size_t>(c.n_pages), 0.0f);
  const int cpp = keys_.chunks_per_page();
  double middle = 0.0;
  for (int64_t pg = c.middle_begin; pg < c.middle_end; ++pg) {
    float m = 0.0f;
    for (int64_t ch = pg * cpp; ch < (pg + 1) * cpp && ch < static_cast<int64_t>(obs.size()); ++ch) m += obs[ch];
    page_obs_[pg] = m;
    middle += m;
  }
  return middle;
}

void LsaPolicy::level1(const SelectContext& c) {
  FM_CHECK(query_.position >= 0, ErrorCode::kInternal, "lsa: no decode hidden state to score from");
  const int cpp = keys_.chunks_per_page();
  const int64_t n_chunks = c.n_pages * cpp;
  const int nt = keys_.n_targets();
  ens_.assign(static_cast<size_t>(n_chunks), 0.0f);
  for (int t = 0; t < nt; ++t) {
    FM_ICHECK(keys_.n_chunks(t) >= n_chunks, "lsa: index keys cover ", keys_.n_chunks(t),
              " chunks, the layer has ", n_chunks);
    scorer_->score(t, query_.rows.data() + static_cast<size_t>(t) * query_.d_model, query_.position, keys_, prob_);
    for (int64_t ch = 0; ch < n_chunks; ++ch) ens_[ch] += prob_[ch] / nt;
  }
  // Statistics for the fallback, on the ensemble's own chunk scores over the middle.
  int64_t kept = 0, total = 0;
  double sum = 0.0, sum2 = 0.0;
  for (int64_t ch = c.middle_begin * cpp; ch < c.middle_end * cpp; ++ch) {
    const float p = ens_[ch];
    kept += p > opts_.threshold;
    sum += p;
    sum2 += static_cast<double>(p) * p;
    ++total;
  }
  rank_pages(c, ens_, page_score_);  // one ranking for every layer
  kept_fraction_ = total ? static_cast<double>(kept) / total : 0.0;
  score_std_ = total ? std::sqrt(std::max(0.0, sum2 / total - (sum / total) * (sum / total))) : 0.0;
  if (opts_.widen && !widen_ && total > 0) {
    std::ostringstream why;
    if (kept_fraction_ > opts_.widen_kept)
      why << "kept " << kept << " of " << total << " middle chunks (> " << opts_.widen_kept << ")";
    else if (score_std_ <= opts_.widen_flat)
      why << "flat scores (std " << score_std_ << " ≤ " << opts_.widen_flat << ")";
    if (!why.str().empty()) {
      widen_ = true;
      widen_reason_ = why.str();
    }
  }
}

void LsaPolicy::select(const SelectContext& c, int64_t n, std::vector<int32_t>& out) {
  const bool fresh = c.cycle != scored_cycle_;
  if (fresh) {  // once per cycle, shared by every layer
    level1(c);
    scored_cycle_ = c.cycle;
  }
  // The layers share the indexer's pick while the middle and the count are the same.
  const std::array<int64_t, 4> key{c.cycle, c.middle_begin, c.middle_end, n};
  if (key != pick_key_) {
    pick_.clear();
    top_pages(c, n, page_score_, pick_);
    pick_key_ = key;
  }
  const std::vector<int32_t>* pick = &pick_;
  if (fresh) {
    absent_sum_ = 0.0;
    absent_layers_ = 0;
    absent_mass_ = -1.0;
  }
  if (observed(c.layer)) {
    // This layer's observed pages first, most mass first, then the shared ranking.
    const double middle = observed_pages(c);
    layer_score_ = page_score_;
    order_.clear();
    for (int64_t pg = c.middle_begin; pg < c.middle_end; ++pg)
      if (page_obs_[pg] > 0.0f) order_.push_back(static_cast<int32_t>(pg));
    std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) { return page_obs_[a] > page_obs_[b]; });
    const float top = static_cast<float>(keys_.chunks_per_page() + 2);  // above any ranked page
    double held = 0.0;
    for (int32_t pg : order_) {
      if (held >= opts_.observe_top_p * middle) break;
      held += page_obs_[pg];
      const float share = static_cast<float>(page_obs_[pg] / middle);
      layer_score_[pg] = std::max(layer_score_[pg], top + share);
      float w = 1.0f;
      for (int d = 1; d <= opts_.observe_spread; ++d) {
        w *= 0.9f;
        for (const int64_t nb : {int64_t{pg} - d, int64_t{pg} + d})
          if (nb >= c.middle_begin && nb < c.middle_end) layer_score_[nb] = std::max(layer_score_[nb], top + w * share);
      }
    }
    layer_pick_.clear();
    top_pages(c, n, layer_score_, layer_pick_);
    pick = &layer_pick_;
    // Needle fallback on the observation: the observed attention the chosen pages miss,
    // averaged over the layers once the last one is chosen.
    double kept = 0.0;
    for (int32_t pg : layer_pick_) kept += page_obs_[pg];
    absent_sum_ += std::max(0.0, middle - kept);
    ++absent_layers_;
    absent_mass_ = absent_sum_ / absent_layers_;
    if (opts_.widen && !widen_ && c.layer == kv_.n_layers - 1 && absent_mass_ > opts_.widen_absent) {
      std::ostringstream why;
      why << "the chosen pages miss " << absent_mass_ << " of the prompt's observed attention (> "
          << opts_.widen_absent << ")";
      widen_ = true;
      widen_reason_ = why.str();
    }
  }
  out.insert(out.end(), pick->begin(), pick->end());
  if (fresh && trace_) {
    LsaSelection t;
    t.cycle = c.cycle;
    t.step = c.step;
    t.middle_begin = c.middle_begin;
    t.middle_end = c.middle_end;
    t.slots = n;
    t.kept_fraction = kept_fraction_;
    t.score_std = score_std_;
    t.chunk_scores.assign(ens_.begin(), ens_.begin() + c.n_pages * keys_.chunks_per_page());
    t.pages = *pick;
    trace_->push_back(std::move(t));
  }
}

}  // namespace flashmem

#include "memory/lsa.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"

namespace flashmem {

void LsaOptions::validate() const {
  FM_CHECK(threshold > 0.0f && threshold < 1.0f, ErrorCode::kInvalidArgument,
           "the lsa threshold must be in (0, 1), got ", threshold);
  FM_CHECK(ensemble == "max" || ensemble == "mean", ErrorCode::kInvalidArgument,
           "unknown lsa ensemble '", ensemble, "' (known: max, mean)");
  FM_CHECK(widen_kept > 0.0f && widen_kept <= 1.0f && widen_flat >= 0.0f, ErrorCode::kInvalidArgument,
           "bad needle-fallback thresholds");
  FM_CHECK(spread >= 0 && spread <= 64, ErrorCode::kInvalidArgument, "the lsa spread must be in [0, 64] chunks, got ",
           spread);
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
  return scorer_->device_bytes() +
         (prob_.capacity() + ens_.capacity() + rank_.capacity() + page_score_.capacity()) * sizeof(float);
}

void LsaPolicy::level1(const SelectContext& c) {
  FM_CHECK(query_.position >= 0, ErrorCode::kInternal, "lsa: no decode hidden state to score from");
  const int cpp = keys_.chunks_per_page();
  const int64_t n_chunks = c.n_pages * cpp;
  const int nt = keys_.n_targets();
  ens_.assign(static_cast<size_t>(n_chunks), opts_.ensemble == "max" ? 0.0f : 0.0f);
  for (int t = 0; t < nt; ++t) {
    FM_ICHECK(keys_.n_chunks(t) >= n_chunks, "lsa: index keys cover ", keys_.n_chunks(t),
              " chunks, the layer has ", n_chunks);
    scorer_->score(t, query_.rows.data() + static_cast<size_t>(t) * query_.d_model, query_.position, keys_, prob_);
    for (int64_t ch = 0; ch < n_chunks; ++ch)
      ens_[ch] = opts_.ensemble == "max" ? std::max(ens_[ch], prob_[ch]) : ens_[ch] + prob_[ch] / nt;
  }
  // Ranking score: the chunk's own, or (spread) a decayed neighbour's when that is higher.
  if (opts_.spread > 0) {
    rank_ = ens_;
    const int64_t lo = c.middle_begin * cpp, hi = c.middle_end * cpp;
    for (int64_t ch = lo; ch < hi; ++ch) {
      float w = 1.0f;
      for (int d = 1; d <= opts_.spread; ++d) {
        w *= 0.9f;
        if (ch - d >= lo) rank_[ch] = std::max(rank_[ch], w * ens_[ch - d]);
        if (ch + d < hi) rank_[ch] = std::max(rank_[ch], w * ens_[ch + d]);
      }
    }
  }
  const std::vector<float>& rank = opts_.spread > 0 ? rank_ : ens_;
  // Page density over the middle pages; statistics for the fallback (on the chunks' own scores).
  page_score_.assign(static_cast<size_t>(c.n_pages), 0.0f);
  int64_t kept = 0, total = 0;
  double sum = 0.0, sum2 = 0.0;
  for (int64_t pg = c.middle_begin; pg < c.middle_end; ++pg) {
    float best = 0.0f;
    int passed = 0;
    int ranked = 0;
    for (int64_t ch = pg * cpp; ch < (pg + 1) * cpp; ++ch) {
      const float p = ens_[ch];
      passed += p > opts_.threshold;
      ranked += rank[ch] > opts_.threshold;
      best = std::max(best, rank[ch]);
      sum += p;
      sum2 += static_cast<double>(p) * p;
    }
    kept += passed;
    total += cpp;
    page_score_[pg] = static_cast<float>(ranked) + best;  // count first, best chunk breaks ties
  }
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
  if (c.cycle != scored_cycle_) {  // once per cycle, shared by every layer
    level1(c);
    scored_cycle_ = c.cycle;
  }
  top_pages(c, n, page_score_, out);
}

}  // namespace flashmem

// flashmem/memory/lsa.h — the `lsa` residency policy: Level-1 selection by the Memory Indexer
// (DESIGN.md §4, lsa-spec §4.2, §4.6).
//
// Every τ steps (first right after prefill) the indexer scores every indexed chunk of the
// middle pages from the latest decode token's target-layer inputs, one probability per chunk
// and target layer; their mean per chunk is thresholded at θ, pages are ranked by how many of
// their chunks pass (ties: by their best chunk's rise above its surroundings, `contrast`), and
// the top pages within the budget join sink and tail. The indexer's pages are the same in every
// layer; the prompt observation puts each layer's own observed pages first.
//
// Needle fallback (unreleased by the paper's authors): when the indexer keeps more than
// `widen_kept` of the middle chunks, or its scores are flat (standard deviation below
// `widen_flat`), it cannot tell the budget's worth of pages apart; the policy then asks for
// the whole KV (wants_widen()), and the engine moves the request to a full budget for the rest
// of the request — counted in its footprint and reported.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "indexer/ranking.h"
#include "memory/index_keys.h"
#include "memory/policy.h"

namespace flashmem {

// The latest decode token's target-layer inputs (the engine's model tap fills it).
struct IndexerQuery {
  std::vector<int> layers;   // target layers, ascending
  int d_model = 0;
  std::vector<float> rows;   // [layers × d_model]
  int32_t position = -1;     // of the token those inputs belong to; −1 before any forward
  // What the prompt's last tokens attended in prefill (memory/observation.h): per layer, the
  // mass per chunk of the indexer's size, summing to 1; empty when not observed.
  std::vector<std::vector<float>> prompt_mass;
};

// Scores chunks: prob[c] for every chunk of target t's keys, from the query row of that target.
class LsaScorer {
 public:
  virtual ~LsaScorer() = default;
  virtual const IndexKeyConfig& keys_config() const = 0;  // layers, chunk size, pooling
  virtual void score(int t, const float* row, int32_t position, IndexKeys& keys,
                     std::vector<float>& prob) = 0;
  // Device bytes of the scorer's own buffers (weights, q/w/logits scratch).
  virtual uint64_t device_bytes() const { return 0; }
};

struct LsaOptions {
  float threshold = 0.5f;         // θ, on the mean of the target layers' scores (the max measured worse)
  bool widen = true;              // needle fallback on/off
  float widen_kept = 0.5f;        // kept fraction of the middle chunks that triggers it
  float widen_flat = 0.0f;        // score standard deviation at or below which it triggers
  // Text runs across chunk borders: a chunk ranks at least as high as 0.9^d × the score of a
  // chunk d ≤ spread chunks away, so the neighbours of a chosen chunk come next (0: off).
  // 1 measured better than 0 on RULER 4K/8K at 16-token pages (docs/accuracy.md).
  int spread = 1;
  // Positional contrast: among pages with as many chunks above θ, the order is how far a chunk's
  // score rises above the lower quartile of the scores within `contrast` chunks either side
  // (0: off: the score itself), so a chunk that stands out from its surroundings outranks a
  // stretch of uniformly high ones. The indexer, trained on attention mass, scores the text
  // just before the tail high everywhere (local attention); on RULER 4K/8K at 16-token pages,
  // 16 measured +3.9 / +3.3 points over 0 (docs/accuracy.md, fifth run).
  int contrast = kContrastWindow;
  // Prompt observation (memory/observation.h): the attention of the prompt's last `observe`
  // tokens, measured per layer in prefill, is a prior next to the indexer: in each layer, the
  // middle pages holding the top `observe_top_p` of that layer's observed middle mass are chosen
  // first, most mass first, at every cycle (the prompt's question stays the task); the indexer's
  // ranking, one for all layers, fills the rest. 0: off.
  int observe = 32;
  float observe_top_p = 0.5f;
  // The neighbours of an observed page, d ≤ observe_spread pages either side, rank as if they held
  // 0.9^d of its mass (a needle's answer often sits on the page after the words the question
  // matches; 0: off).
  // 1 measured +10.4 ± 7.4 points over 0 on the needle suite at 4K, 2 no better
  // (docs/accuracy.md).
  int observe_spread = 1;
  // Needle fallback on the observation: the request widens to full KV when the chosen pages miss
  // more than this share of the observed attention (all of it, sink and tail included, is 1).
  float widen_absent = 1.0f;
  // Error(kInvalidArgument) for values out of range.
  void validate() const;
};

// One Level-1 pass as it happened (`flashmem eval --lsa-trace`): the ensemble's chunk scores and
// the middle pages the first layer asking in that cycle was given, best first.
struct LsaSelection {
  int64_t cycle = 0;
  int64_t step = 0;           // decode steps done before it
  int64_t middle_begin = 0;   // first non-sink page
  int64_t middle_end = 0;     // first tail page
  int64_t slots = 0;          // middle pages the budget allowed
  double kept_fraction = 0;   // middle chunks above θ
  double score_std = 0;
  std::vector<float> chunk_scores;  // per chunk of the layer's completed pages
  std::vector<int32_t> pages;       // chosen, best first
};

class LsaPolicy final : public ResidencyPolicy {
 public:
  LsaPolicy(const KvCacheConfig& kv, std::shared_ptr<LsaScorer> scorer, const IndexerQuery& query,
            Backend* device, LsaOptions o);
  const char* name() const override { return "lsa"; }
  void select(const SelectContext& c, int64_t n, std::vector<int32_t>& out) override;
  void on_page(int layer, int32_t page, const uint8_t* data) override { keys_.on_page(layer, page, data); }
  uint64_t index_bytes() const override { return keys_.device_bytes(); }
  uint64_t scratch_bytes() const override;

  // The needle fallback asked for the whole KV (sticky).
  bool wants_widen() const { return widen_; }
  std::string widen_reason() const { return widen_reason_; }
  // Statistics of the last Level-1 pass.
  double last_kept_fraction() const { return kept_fraction_; }
  double last_score_std() const { return score_std_; }
  // Share of the prompt's observed attention outside the pages chosen at the last Level-1 pass,
  // averaged over the layers (−1: no observation).
  double last_absent_mass() const { return absent_mass_; }
  // Appends every Level-1 pass from now on to `out` (nullptr: stop). `out` must outlive its use.
  void trace_into(std::vector<LsaSelection>* out) { trace_ = out; }

 private:
  void level1(const SelectContext& c);
  // Page scores over the middle from per-chunk scores (threshold count, spread, contrast).
  void rank_pages(const SelectContext& c, const std::vector<float>& chunk, std::vector<float>& page);

  KvCacheConfig kv_;
  std::shared_ptr<LsaScorer> scorer_;
  const IndexerQuery& query_;
  IndexKeys keys_;
  LsaOptions opts_;
  int64_t scored_cycle_ = -1;
  std::vector<float> prob_, ens_, rank_, rise_, key_, window_;  // per chunk
  // The indexer's page scores, and the pick every layer shares while (cycle, middle_begin,
  // middle_end, n) stay the same.
  std::vector<float> page_score_;
  std::vector<int32_t> pick_;
  std::array<int64_t, 4> pick_key_{-1, -1, -1, -1};
  bool widen_ = false;
  std::string widen_reason_;
  std::vector<LsaSelection>* trace_ = nullptr;
  double kept_fraction_ = 0.0, score_std_ = 0.0, absent_mass_ = -1.0;
  std::vector<float> page_obs_;  // observed mass per page of the layer being selected
  std::vector<float> layer_score_;
  std::vector<int32_t> layer_pick_, order_;
  double absent_sum_ = 0.0;      // over the layers selected so far this cycle
  int absent_layers_ = 0;
  // The layer's observed prompt mass per page over the middle (page_obs_); returns its total.
  double observed_pages(const SelectContext& c);
  bool observed(int layer) const {
    return opts_.observe > 0 && layer < static_cast<int>(query_.prompt_mass.size()) &&
           !query_.prompt_mass[layer].empty();
  }
};

}  // namespace flashmem

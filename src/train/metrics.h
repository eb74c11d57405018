// flashmem/train/metrics.h — how well a Memory Indexer finds the golden chunks of held-out
// documents: per target layer and for the max/mean ensembles of the sigmoid scores,
//   AUC           per decision point over its candidates (ties count ½), averaged over points
//                 with ≥ 1 golden and ≥ 1 other candidate;
//   recall@b      |top ⌈b·candidates⌉ ∩ golden| / |golden|, averaged over points (b = 5, 10, 15%);
//   P/R at θ=0.5  micro precision and recall of score > 0.5.
// A last row ranks the mean as the lsa policy does by default: chunks above θ first, then by
// their rise above the lower quartile of the scores within LsaOptions' default contrast window
// either side, so recall@b there is what the policy's order keeps.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/dataset.h"
#include "indexer/indexer_model.h"

namespace flashmem::train {

struct ScorerMetrics {
  std::string name;  // "layer 14", "max", "mean", "mean, lsa order (contrast 16)"
  double auc = 0, recall5 = 0, recall10 = 0, recall15 = 0, precision = 0, recall = 0;
};

struct IndexerMetrics {
  std::vector<ScorerMetrics> rows;
  int64_t points = 0;          // decision points with ≥ 1 golden chunk
  double candidates = 0;       // mean candidates per point
  double positive_rate = 0;    // golden / candidates
};

double auc(const std::vector<float>& score, const std::vector<uint8_t>& golden);
double recall_at(const std::vector<float>& score, const std::vector<uint8_t>& golden, int64_t k);

// Logits of target t for every candidate of point s of doc (n = cand_end − cand_begin).
void score_candidates(const IndexerModel& m, int t, const IndexerDataset& ds, const IndexerDoc& doc,
                      int64_t s, std::vector<float>& logits);

IndexerMetrics evaluate_indexer(const IndexerModel& m, const IndexerDataset& ds, int threads = 0);
std::string render_metrics(const IndexerMetrics& r);  // a markdown table

}  // namespace flashmem::train

// flashmem/train/trainer.h — backbone-free training of the Memory Indexer (DESIGN.md §4,
// lsa-spec §3): from dump files only, no model weights.
//
// Samples are decision points with ≥ 1 golden chunk: its golden chunks (at most max_pos) are
// positives, negatives are drawn uniformly from the other candidates, neg_ratio per positive.
// Loss: focal BCE on sigmoid(logit) (γ), positives weighted by hit count, mean over the batch's
// elements and the target layers (one independent weight set per layer). AdamW, cosine
// schedule, global gradient-norm clipping. Forward and backward are written here and checked
// against finite differences (tests/test_indexer_train.cpp). Work is split into a fixed number
// of gradient shards reduced in order, so a seed gives the same losses for any thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "train/dataset.h"
#include "indexer/indexer_model.h"

namespace flashmem::train {

struct TrainOptions {
  int n_heads = 12;        // indexer query heads (a multiple of the model's kv heads)
  int rank = 128;          // wq_a output
  int epochs = 20;
  int batch = 16;          // decision points per step
  float lr = 2e-3f;
  float weight_decay = 0.01f;
  float beta1 = 0.9f, beta2 = 0.999f, adam_eps = 1e-8f;
  int warmup_steps = 0;
  float clip = 1.0f;       // global gradient-norm clip (0: off)
  float gamma = 2.0f;      // focal loss
  int neg_ratio = 3;
  int max_pos = 512;
  bool hit_weighting = true;  // positive weight 0.5 … 2 by hit count
  uint64_t seed = 0;
  int threads = 0;         // 0: all cores
  std::string pooling = "post_rope_mean";  // recorded in the checkpoint
};

struct TrainProgress {
  int epoch = 0;
  int64_t step = 0, total_steps = 0;
  double loss = 0;  // running mean of this epoch
  double lr = 0;
};

struct EpochLog {
  int epoch = 0;
  double train_loss = 0;
  double val_auc = -1;   // mean-ensemble AUC on the validation set (−1 without one)
};

struct TrainResult {
  IndexerModel model;      // the best epoch by validation AUC (the last without validation)
  int best_epoch = 0;
  std::vector<EpochLog> log;
  std::vector<double> step_losses;
  std::map<std::string, std::string> metadata;  // the options, for the checkpoint
};

// A fresh model for the dataset's shapes, initialised from the seed.
IndexerModel init_model(const IndexerDataset& ds, const TrainOptions& o);

// Loss and gradients of one decision point's chunks for target t (the building block the
// trainer sums; exposed for the finite-difference test). keys: dequantised [n × key_dim];
// labels 0/1; weights per chunk. Adds d(loss_sum)/d(params) into grad (same shape as the
// layer) and returns the weighted focal loss summed over the chunks.
double point_loss_grad(const IndexerModel& m, int t, const float* h, int32_t position,
                       const float* keys, const float* labels, const float* weights, int64_t n,
                       float gamma, IndexerLayer* grad);

// Focal BCE of one logit and its derivative (w·(1−p_t)^γ·BCE; the focal factor is not detached).
double focal_loss(double logit, double label, double gamma, double* dlogit);

TrainResult train_indexer(const IndexerDataset& train, const IndexerDataset* val, const TrainOptions& o,
                          const std::function<void(const TrainProgress&)>& progress = {});

}  // namespace flashmem::train

// flashmem/indexer/indexer_model.h — the Memory Indexer's query side at inference (DESIGN.md §4):
//
//   a = wq_a·h;  â = a / rms(a) ⊙ q_norm;  q = wq_b·â  (n_heads × head_dim);
//   q_h ← Hadamard(RoPE(q_h, position));   w = weights_proj·h / √(n_heads·head_dim);
//   logit_c = bias + Σ_h w_h · ReLU(q_h · k_{c, g(h)}),   p_c = sigmoid(logit_c)
//
// with one independent set of weights per target layer, keys from memory/index_keys.h, and
// g(h) = h / (n_heads / n_kv_heads). The trainer (train/) writes the checkpoints this reads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ops/backend.h"

namespace flashmem {

// Which keys an indexer scores (memory/index_keys.h builds them).
struct IndexerKeys {
  std::vector<int> layers;               // target layers, ascending
  int chunk_tokens = 16;
  std::string pooling = "post_rope_mean";  // or "pre_rope_mean"
};

struct IndexerShape {
  int d_model = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, rank = 0;
  float eps = 1e-6f;
  RopeParams rope;
};

struct IndexerLayer {
  std::vector<float> wq_a;          // [rank × d_model]
  std::vector<float> q_norm;        // [rank]
  std::vector<float> wq_b;          // [(n_heads·head_dim) × rank]
  std::vector<float> weights_proj;  // [n_heads × d_model]
  float bias = 0.0f;
};

struct IndexerModel {
  IndexerShape shape;
  IndexerKeys keys;
  std::vector<IndexerLayer> layers; // one per target layer

  // What backward needs from the query encoder (the trainer).
  struct Activations {
    std::vector<float> a_hat;  // wq_a·h / rms
    std::vector<float> an;     // a_hat ⊙ q_norm
    float inv_rms = 0.0f;
  };
  // q [n_heads × head_dim] and w [n_heads] of target t for the input row h at `position` — the
  // one forward pass of inference and training (keep: the activations backward needs).
  void encode_query(int t, const float* h, int32_t position, float* q, float* w,
                    Activations* keep = nullptr) const;
  // Error(kFormat) when the weights do not have the shape's sizes.
  void check() const;
};

// Checkpoints (safetensors): tensors layers.<L>.{wq_a,q_norm,wq_b,weights_proj,bias} (F32) for
// each target layer L, metadata format = "flashmem-memory-indexer", version = "1", every shape
// and key setting, plus `extra` (training options). load_indexer validates everything:
// Error(kFormat) for a file that is not a consistent indexer, Error(kIo) when unreadable.
void save_indexer(const std::string& path, const IndexerModel& m,
                  const std::map<std::string, std::string>& extra = {});
std::shared_ptr<IndexerModel> load_indexer(const std::string& path);
// The same from a safetensors file already read; errors name it `path`.
struct SafeTensorsFile;
std::shared_ptr<IndexerModel> indexer_from_safetensors(const SafeTensorsFile& f, const std::string& path);
// The indexer restricted to some of its target layers (any order, no repeats; empty: all of
// them): the same weights, fewer scorers and fewer index keys. Error(kInvalidArgument) for a
// layer the indexer has no scorer for, or a repeated one.
IndexerModel select_targets(const IndexerModel& m, std::vector<int> layers);
// An indexer of this shape and these keys with weights drawn from `seed` (uniform, variance
// 1/fan-in; q_norm 1, bias 0): what lsa costs on a model built from its shape alone (bench
// --synthetic), not what it would choose.
IndexerModel random_indexer(const IndexerShape& shape, const IndexerKeys& keys, uint64_t seed);
// The metadata of a checkpoint (for reports).
std::map<std::string, std::string> indexer_metadata(const std::string& path);

// Host reference of the backend's index_scores op (tests, and the trainer's forward check).
void index_logits_reference(const IndexerShape& s, const float* q, const float* w, float bias,
                            const uint8_t* keys, const float* scales, int64_t n, float* logits);

}  // namespace flashmem

// flashmem/train/dataset.h — what the Memory Indexer trainer and its metrics consume: decision
// points (one decode step of one document each) with the target layers' hidden states, the
// document's index keys, the candidate chunks and the golden (attended) chunks of the next τ
// steps. Built from `flashmem dump` files by load_dataset (train/dump.h); the trainer never
// sees model weights (backbone-free training, DESIGN.md §4).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/backend.h"  // RopeParams

namespace flashmem::train {

struct IndexerDoc {
  std::string name;  // e.g. "ruler/niah_single_1/s12" (for reports)
  int64_t n_chunks = 0;
  // Index keys per target layer: n_chunks × key_dim fp8 e4m3 bytes (key_dim = n_kv_heads ×
  // head_dim; kv head g at [g·head_dim, (g+1)·head_dim)), already Hadamard-rotated per kv head,
  // and one fp32 scale per chunk: key = fp8_e4m3_to_fp32(byte) × scale.
  std::vector<std::vector<uint8_t>> keys;   // [target][n_chunks × key_dim]
  std::vector<std::vector<float>> scales;   // [target][n_chunks]
  // Decision points (S of them).
  std::vector<int32_t> position;            // [S] position of the query token
  std::vector<float> hidden;                // [S × n_targets × d_model] target-layer inputs
  std::vector<int32_t> cand_begin, cand_end;  // [S] candidates are chunks [begin, end)
  // Golden chunks of each decision point (CSR: point s owns [ptr[s], ptr[s+1])), each inside
  // [cand_begin, cand_end), distinct, with the largest hit count it had over the window.
  std::vector<int32_t> label_ptr;           // [S+1]
  std::vector<int32_t> label_idx;
  std::vector<float> label_hits;

  int64_t n_points() const { return static_cast<int64_t>(position.size()); }
};

struct IndexerDataset {
  int d_model = 0;       // hidden width of the backbone
  int n_kv_heads = 0;    // key groups
  int head_dim = 0;      // per kv head (a power of two)
  int n_targets = 0;     // target layers
  std::vector<int> target_layers;  // backbone layer numbers, for reports and checkpoints
  RopeParams rope;       // the backbone's RoPE (keys were rotated with it)
  int chunk_tokens = 16;
  float max_hits = 1.0f; // the largest hit count a label can have (for hit weighting)
  std::vector<IndexerDoc> docs;

  int key_dim() const { return n_kv_heads * head_dim; }
};

}  // namespace flashmem::train

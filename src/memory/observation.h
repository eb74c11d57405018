// flashmem/memory/observation.h — what the prompt's last tokens attended during prefill.
//
// Prefill computes exact attention over the whole prompt anyway (streamed through the reserve,
// memory/tiered_kv.h). For the queries of the last `window` prompt tokens (the question, in a
// retrieval prompt, and the chat template's turn change) the store hands every part of that
// attention to a PromptObserver, which sums the exact attention probabilities per chunk
// (Backend::chunk_mass on the backend the part ran on) and combines the parts of a layer by their
// log-sum-exp, so the result is the softmax over all of the layer's keys, as if every page had been
// resident at once. The mass is averaged over (layer, query head, observed token): one
// distribution over the prompt's chunks, the same quantity the indexer's mass labels are made of
// (train/dump.h), measured for the prompt's end instead of predicted.
//
// lsa uses it as a prior next to the Memory Indexer (memory/lsa.h): the chunks that hold the top
// of the observed mass are chosen first, and the share of the observed mass its pages cover tells
// the needle fallback when the budget cannot hold what attention reads.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "memory/attention_labels.h"

namespace flashmem {

class PromptObserver {
 public:
  // Observes the queries at positions ≥ from, per chunk of chunk_tokens (which must divide the
  // page size).
  PromptObserver(int32_t from, int chunk_tokens);

  // One part of a streamed prefill attention of `layer`: q [m × n_heads × head_dim] and lse
  // [m × n_heads] (the part's log-sum-exp, as Backend::attention writes it) are backend memory,
  // pos host memory. lse = nullptr: the part is every key the layer has (one call).
  void on_part(Backend& be, int layer, const AttentionParams& p, const float* q, const int32_t* pos,
               int64_t m, std::span<const KvPageRef> pages, const float* lse);
  // The layer's parts are all seen: its combined mass joins the total.
  void end_layer(int layer);

  int32_t from() const { return from_; }
  int chunk_tokens() const { return chunk_tokens_; }
  // Per layer: the attention mass per chunk averaged over the layer's observed (head, token)
  // pairs, summing to 1 (empty for a layer nothing was observed in).
  std::vector<std::vector<float>> layer_mass() const;
  // The same averaged over every observed (layer, head, token).
  std::vector<float> mass() const;

 private:
  int32_t from_;
  int chunk_tokens_;
  int64_t n_chunks_ = 0;
  // The layer in progress, per observed row (position) and head: the running log-sum-exp of the
  // parts seen and the mass accumulated at that scale.
  int layer_ = -1;
  int n_heads_ = 0;
  std::vector<int32_t> rows_;         // observed positions of the layer, in order of arrival
  std::vector<double> run_lse_;       // [rows × heads]
  std::vector<std::vector<double>> acc_;  // [rows × heads][chunk]
  std::vector<std::vector<double>> total_;  // [layer][chunk], summed over finished (head, row)
  std::vector<int64_t> pairs_;              // [layer]: (head, row) pairs in total_
  ChunkMassReader reader_;
  std::vector<float> lse_host_;
};

}  // namespace flashmem

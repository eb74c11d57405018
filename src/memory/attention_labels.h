// flashmem/memory/attention_labels.h — golden labels for the Memory Indexer: which chunks the
// model's own attention really uses at each decode step (DESIGN.md §4, lsa-spec §2.1).
//
// At every decode-mode attention (one query token) of every layer, for every query head, the
// exact attention probabilities are summed per chunk (Backend::chunk_mass, on the backend that
// attention ran on); the head "hits" the shortest set of chunks that, taken by decreasing mass,
// reaches top_p of its attention (always at least its top chunk). A step's hit count of a chunk
// is the number of (layer, head) pairs that hit it. The recorder also keeps each chunk's
// attention mass averaged over all (layer, head) pairs of the step: the labels by mass
// (train/dump.h) rank chunks by it.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "memory/tiered_kv.h"

namespace flashmem {

// Backend::chunk_mass of one query token into host memory (through a scratch buffer kept on the
// backend it last ran on, so a reader, and a recorder holding one, must not outlive that
// backend): mass()[h·n_chunks + c].
class ChunkMassReader {
 public:
  void read(Backend& be, const AttentionParams& p, const float* q, int32_t pos, std::span<const KvPageRef> pages,
            int chunk_tokens, int64_t n_chunks);
  const std::vector<float>& mass() const { return host_; }

 private:
  Backend* be_ = nullptr;
  BackendBuffer dev_;
  std::vector<float> host_;
};

class ChunkHitRecorder final : public AttendHook {
 public:
  ChunkHitRecorder(int chunk_tokens, float top_p) : chunk_tokens_(chunk_tokens), top_p_(top_p) {}
  // Attention from now on belongs to decode step `step` (steps must not go backwards).
  void set_step(int64_t step);
  void after_attend(Backend& be, int layer, const AttentionParams& p, const float* q,
                    const int32_t* pos, int64_t m, std::span<const KvPageRef> pages,
                    std::span<const int32_t> ids) override;

  int64_t steps() const { return static_cast<int64_t>(hits_.size()); }
  // (chunk, hits) of step s, chunks ascending, hits ≥ 1.
  std::vector<std::pair<int32_t, int32_t>> step_hits(int64_t s) const;
  // (chunk, mass) of step s, chunks ascending, mass > 0: the chunk's attention probability
  // summed over its tokens and averaged over every (layer, head) pair of the step (so a
  // step's masses sum to 1).
  std::vector<std::pair<int32_t, float>> step_mass(int64_t s) const;

 private:
  int chunk_tokens_;
  float top_p_;
  int64_t step_ = 0;
  std::vector<std::vector<int32_t>> hits_;  // [step][chunk]
  std::vector<std::vector<double>> mass_sum_;  // [step][chunk], summed over (layer, head)
  std::vector<int64_t> pairs_;               // [step] (layer, head) pairs recorded
  ChunkMassReader mass_;
  std::vector<std::pair<float, int32_t>> order_;
};

}  // namespace flashmem

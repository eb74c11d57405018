// flashmem/memory/attention_labels.h — golden labels for the Memory Indexer: which chunks the
// model's own attention really uses at each decode step (DESIGN.md §4, lsa-spec §2.1).
//
// At every decode-mode attention (one query token) of every layer, for every query head, the
// exact attention probabilities are summed per chunk; the head "hits" the shortest set of chunks
// that, taken by decreasing mass, reaches top_p of its attention (always at least its top
// chunk). A step's hit count of a chunk is the number of (layer, head) pairs that hit it.
// Plain loops over host copies of the pages (each page's keys decoded once per KV head and shared
// by the head group, dot products along the dim-major rows): this runs only while dumping.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "memory/tiered_kv.h"

namespace flashmem {

class ChunkHitRecorder final : public AttendHook {
 public:
  ChunkHitRecorder(int chunk_tokens, float top_p) : chunk_tokens_(chunk_tokens), top_p_(top_p) {}
  // Attention from now on belongs to decode step `step` (steps must not go backwards).
  void set_step(int64_t step);
  void after_attend(TieredKvStore& s, int layer, const AttentionParams& p, const float* q,
                    const int32_t* pos, int64_t m, std::span<const KvPageRef> pages,
                    std::span<const int32_t> ids) override;

  int64_t steps() const { return static_cast<int64_t>(hits_.size()); }
  // (chunk, hits) of step s, chunks ascending, hits ≥ 1.
  std::vector<std::pair<int32_t, int32_t>> step_hits(int64_t s) const;

 private:
  int chunk_tokens_;
  float top_p_;
  int64_t step_ = 0;
  std::vector<std::vector<int32_t>> hits_;  // [step][chunk]
  std::vector<float> keys_;    // one page's keys of one KV head, decoded [dim][token]
  std::vector<float> dots_;    // [head][token] q·k of every token of the pages
  std::vector<double> scores_;
  std::vector<std::pair<double, int32_t>> mass_;
};

}  // namespace flashmem

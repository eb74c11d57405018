// flashmem/ops/cpu/attention.h — causal GQA attention over paged KV on the CPU.
//
// Two schedules with the same math:
//  * decode (few queries): pages are split into ranges; each (kv head, range) task keeps an
//    online-softmax state per query head, and the partial states are merged (AttnState::merge).
//    This split-and-merge is also how attention over several memory tiers combines.
//  * prefill (many queries): a kv head's pages are gathered into contiguous f32 K/V, and
//    blocks of queries are processed with two sgemms and a masked softmax.
#pragma once

#include <cstdint>
#include <span>

#include "ops/backend.h"

namespace flashmem {
class ThreadPool;
namespace cpu {

// Partial attention result over a subset of keys for one query head:
// m = max score seen, l = Σ exp(s − m), o = Σ exp(s − m)·v (unnormalised).
struct AttnState {
  float m;
  float l;
  float* o;  // head_dim values, owned by the caller
  // Folds `other` into this state.
  void merge(const AttnState& other, int head_dim);
};

// When lse is given, also writes lse[i·n_heads + h] = log Σ_j exp(score_ij) over the keys
// query i can see (−inf, with a zero output, when it sees none), so that results over
// disjoint key sets can be combined with merge_attention.
void attention(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* pos,
               int64_t m, std::span<const KvPageRef> pages, float* out, float* lse = nullptr);

// Folds a second normalised partial result (out2, lse2) over a disjoint key set into
// (out, lse), for `rows` rows of head_dim values.
void merge_attention(int64_t rows, int head_dim, float* out, float* lse, const float* out2,
                     const float* lse2);

// q8 (KvType::kQ8) of one head vector x[n]: q[i·stride] = round(x[i]·127 / max|x|), returns
// the scale max|x| / 127 (0 for an all-zero vector, NaN when x holds a NaN or inf).
float quantize_q8(const float* x, int n, int8_t* q, int64_t stride);

// Writes n tokens of K/V into token slots slot0 … of one page (Backend::write_kv).
void write_kv(const AttentionParams& p, void* k_page, void* v_page, int slot0, int64_t n,
              const float* k, const float* v);

// Backend::chunk_mass: exact per-chunk attention mass of one query token (scores in f32 like
// attention, softmax and sums in double), one task per kv head.
void chunk_mass(ThreadPool& pool, const AttentionParams& p, const float* q, int32_t pos,
                std::span<const KvPageRef> pages, int chunk_tokens, int64_t n_chunks, float* mass);

// Plain reference: per query and head, scores over every visible key in double precision.
void attention_ref(const AttentionParams& p, const float* q, const int32_t* pos, int64_t m,
                   std::span<const KvPageRef> pages, float* out);

}  // namespace cpu
}  // namespace flashmem

// flashmem/memory/kv_store.h — what a model sees of the KV memory.
//
// A model hands over each layer's new K/V (`append`) and asks the store to attend its queries
// to "every key this layer may attend to now" (`attend`). Where those keys live — one flat
// arena (PagedKvCache, the full-KV path) or a bounded device reserve in front of a host mirror
// (TieredKvStore) — is the store's business; models never see memory tiers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ops/backend.h"

namespace flashmem {

struct KvCacheConfig {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int page_tokens = 64;    // tokens per page
  int64_t max_tokens = 0;  // context capacity
  KvType type = KvType::kF32;

  size_t page_bytes() const {  // K+V of one page of one layer
    return 2 * kv_half_bytes(type, n_kv_heads, page_tokens, head_dim);
  }
  int64_t pages_for(int64_t tokens) const { return (tokens + page_tokens - 1) / page_tokens; }
  // Every page of `tokens` tokens over all layers: a request's host mirror at that length.
  uint64_t mirror_bytes(int64_t tokens) const {
    return static_cast<uint64_t>(pages_for(tokens)) * n_layers * page_bytes();
  }
  size_t bytes_per_token() const {  // K+V of one token over all layers (q8: with its scales)
    return 2 * static_cast<size_t>(n_layers) * n_kv_heads * kv_vector_bytes(type, head_dim);
  }
  // The page layout as the attention ops take it (n_heads and scale left 0).
  AttentionParams layout() const {
    AttentionParams p;
    p.n_kv_heads = n_kv_heads;
    p.head_dim = head_dim;
    p.page_tokens = page_tokens;
    p.head_stride = static_cast<int64_t>(page_tokens) * head_dim;
    p.kv_type = type;
    return p;
  }
  // Throws Error(kInvalidArgument) for non-positive sizes or page_tokens outside [1, 4096].
  void validate() const;
};

class KvStore {
 public:
  virtual ~KvStore() = default;
  virtual const KvCacheConfig& config() const = 0;

  // Writes n tokens of K and V (each [n × n_kv_heads × head_dim] f32) for `layer` at positions
  // [n_tokens(layer), n_tokens(layer) + n). Throws Error(kOutOfRange) past max_tokens.
  virtual void append(int layer, int64_t n, const float* k, const float* v) = 0;

  // Causal attention of q[m × n_heads × head_dim] (query i at position pos[i]) over the keys
  // `layer` may attend to now, through the backend's attention op; out has the shape of q.
  virtual void attend(Backend& be, int layer, const AttentionParams& p, const float* q,
                      const int32_t* pos, int64_t m, float* out) = 0;

  // ---- decode in a batch (Model::forward_batch) --------------------------------------------
  // The model writes one new token of several sequences in one launch (Backend::write_kv_rows)
  // and attends their queries in one (Backend::attention_rows): each store says where its token
  // goes and which pages its query reads, and hears when the launch was issued. The two halves
  // give the numbers append and attend give. A store that cannot serve a layer so right now
  // answers false, and the model uses append / attend for it.
  //
  // Takes the slot of `layer`'s next token (position n_tokens(layer)) into `slot`; the caller
  // writes it, then calls commit_token. Error(kOutOfRange) past max_tokens.
  virtual bool begin_token(int /*layer*/, KvSlotRef& /*slot*/) { return false; }
  // The token written: it counts from now on (and its page completes when full).
  virtual void commit_token(int /*layer*/) {}
  // Appends to `pages` the pages (position order) that one query of `layer` at position pos
  // reads now (q: that query, backend memory, for query-aware selection); false: use attend.
  virtual bool decode_pages(Backend& /*be*/, int /*layer*/, const AttentionParams& /*p*/, const float* /*q*/,
                            int32_t /*pos*/, std::vector<KvPageRef>& /*pages*/) {
    return false;
  }
  // After the attention over decode_pages' pages was issued: what attend does afterwards
  // (observers, hooks).
  virtual void after_decode_attend(Backend& /*be*/, int /*layer*/, const AttentionParams& /*p*/, const float* /*q*/,
                                   int32_t /*pos*/) {}

  virtual int64_t n_tokens(int layer) const = 0;
  // Tokens held by the last layer (= by every layer between forward passes).
  int64_t n_tokens() const { return n_tokens(config().n_layers - 1); }

  AttentionParams attention_params(int n_heads, float scale) const {
    AttentionParams p = config().layout();
    p.n_heads = n_heads;
    p.scale = scale;
    return p;
  }
};

// Writes tokens [0, n) of k/v ([n × n_kv_heads × head_dim] f32, host memory) into slots
// slot0 … slot0+n−1 of one host page laid out as KvPageRef describes (K dim-major, V
// token-major), converting to the page's type (the CPU write_kv op). The caller guarantees
// slot0 + n ≤ page_tokens.
void write_page_tokens(const KvCacheConfig& c, uint8_t* page, int slot0, int64_t n,
                       const float* k, const float* v);

}  // namespace flashmem

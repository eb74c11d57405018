// flashmem/memory/kv_cache.h — the paged KV cache.
//
// KV is stored in pages of `page_tokens` tokens. A page holds K and V for every KV head of
// one layer: K dim-major [kv_head][head_dim][token], V token-major [kv_head][token][head_dim]
// (see KvPageRef). Pages come from one arena sized when the cache is created (no allocation
// while decoding); the footprint reported is exactly the bytes of that arena that are in use.
//
// Models talk to the cache through two calls only: `append` hands over the new tokens' K/V
// for a layer, and `pages` answers "which keys/values may this layer attend to now".
// This is the full-KV path: every page stays resident. TieredKvStore is the LSA path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "memory/kv_store.h"
#include "ops/backend.h"

namespace flashmem {

class PagedKvCache final : public KvStore {
 public:
  // Throws Error(kInvalidArgument) for a bad configuration and Error(kOutOfMemory) when the
  // arena cannot be allocated.
  explicit PagedKvCache(const KvCacheConfig& cfg);

  const KvCacheConfig& config() const override { return cfg_; }

  void append(int layer, int64_t n, const float* k, const float* v) override;
  // One attention call over every page of the layer.
  void attend(Backend& be, int layer, const AttentionParams& p, const float* q,
              const int32_t* pos, int64_t m, float* out) override;

  // Pages visible to `layer`, in position order (the last one may be partial).
  std::span<const KvPageRef> pages(int layer) const { return views_[layer]; }

  int64_t n_tokens(int layer) const override { return layer_tokens_[layer]; }
  using KvStore::n_tokens;

  // Drops tokens at positions ≥ n in every layer (n = 0 clears the cache).
  void truncate(int64_t n);

  size_t bytes_per_token() const { return cfg_.bytes_per_token(); }
  size_t page_bytes() const { return cfg_.page_bytes(); }
  size_t bytes_in_use() const;        // pages currently holding tokens × page_bytes
  size_t bytes_reserved() const { return arena_bytes_; }  // the arena
  int64_t pages_in_use() const;

 private:
  uint8_t* page_ptr(int64_t page) { return arena_.get() + static_cast<size_t>(page) * page_bytes(); }
  int64_t alloc_page();

  KvCacheConfig cfg_;
  // Not zero-filled: the OS maps arena pages on first write, so untouched capacity costs no RAM.
  std::unique_ptr<uint8_t[]> arena_;
  size_t arena_bytes_ = 0;
  std::vector<int64_t> free_pages_;
  std::vector<std::vector<int64_t>> page_ids_;   // per layer, in position order
  std::vector<std::vector<KvPageRef>> views_;    // per layer, mirrors page_ids_
  std::vector<int64_t> layer_tokens_;
};

}  // namespace flashmem

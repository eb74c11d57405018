#include "memory/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/cpu/attention.h"

namespace flashmem {

void KvCacheConfig::validate() const {
  FM_CHECK(n_layers > 0 && n_kv_heads > 0 && head_dim > 0, ErrorCode::kInvalidArgument,
           "KV cache needs positive layer, head and head_dim counts");
  FM_CHECK(page_tokens >= 1 && page_tokens <= 4096, ErrorCode::kInvalidArgument,
           "page_tokens must be in [1, 4096], got ", page_tokens);
  FM_CHECK(max_tokens >= 1, ErrorCode::kInvalidArgument, "KV cache capacity must be ≥ 1 token");
}

void write_page_tokens(const KvCacheConfig& c, uint8_t* page, int slot0, int64_t n,
                       const float* k, const float* v) {
  cpu::write_kv(c.layout(), page, page + c.page_bytes() / 2, slot0, n, k, v);
}

PagedKvCache::PagedKvCache(const KvCacheConfig& cfg) : cfg_(cfg) {
  cfg.validate();
  const int64_t pages_per_layer = (cfg.max_tokens + cfg.page_tokens - 1) / cfg.page_tokens;
  const int64_t n_pages = pages_per_layer * cfg.n_layers;
  const double bytes = static_cast<double>(n_pages) * static_cast<double>(page_bytes());
  FM_CHECK(bytes < 0.9 * static_cast<double>(SIZE_MAX), ErrorCode::kOutOfMemory, "KV arena too large");
  try {
    arena_bytes_ = static_cast<size_t>(n_pages) * page_bytes();
    arena_.reset(new uint8_t[arena_bytes_]);
  } catch (const std::bad_alloc&) {
    FM_FAIL(ErrorCode::kOutOfMemory, "cannot allocate the KV arena of ", bytes / (1 << 20),
            " MiB for ", cfg.max_tokens, " tokens; lower the context (-c)");
  }
  free_pages_.reserve(n_pages);
  for (int64_t p = n_pages - 1; p >= 0; --p) free_pages_.push_back(p);
  page_ids_.resize(cfg.n_layers);
  views_.resize(cfg.n_layers);
  layer_tokens_.assign(cfg.n_layers, 0);
}

int64_t PagedKvCache::pages_in_use() const {
  int64_t n = 0;
  for (const auto& ids : page_ids_) n += static_cast<int64_t>(ids.size());
  return n;
}

size_t PagedKvCache::bytes_in_use() const { return static_cast<size_t>(pages_in_use()) * page_bytes(); }

void PagedKvCache::attend(Backend& be, int layer, const AttentionParams& p, const float* q,
                          const int32_t* pos, int64_t m, float* out) {
  FM_ICHECK(layer >= 0 && layer < cfg_.n_layers, "layer ", layer, " out of range");
  be.attention(p, q, pos, m, views_[layer], out);
}

int64_t PagedKvCache::alloc_page() {
  FM_ICHECK(!free_pages_.empty(), "KV arena exhausted below its token capacity");
  const int64_t p = free_pages_.back();
  free_pages_.pop_back();
  return p;
}

void PagedKvCache::append(int layer, int64_t n, const float* k, const float* v) {
  FM_ICHECK(layer >= 0 && layer < cfg_.n_layers, "layer ", layer, " out of range");
  int64_t& count = layer_tokens_[layer];
  FM_CHECK(count + n <= cfg_.max_tokens, ErrorCode::kOutOfRange, "context full: ", count, " + ", n,
           " tokens exceed the KV capacity of ", cfg_.max_tokens);
  const int pt = cfg_.page_tokens;
  const size_t half = page_bytes() / 2;  // K part, then V part
  const int64_t row = int64_t{cfg_.n_kv_heads} * cfg_.head_dim;
  auto& ids = page_ids_[layer];
  auto& views = views_[layer];
  for (int64_t t = 0; t < n;) {
    const int slot = static_cast<int>(count % pt);
    if (slot == 0) {
      ids.push_back(alloc_page());
      uint8_t* base = page_ptr(ids.back());
      views.push_back(KvPageRef{base, base + half, static_cast<int32_t>(count), 0});
    }
    const int64_t take = std::min<int64_t>(n - t, pt - slot);
    write_page_tokens(cfg_, page_ptr(ids.back()), slot, take, k + t * row, v + t * row);
    t += take;
    count += take;
    views.back().n_tokens = static_cast<int32_t>(slot + take);
  }
}

void PagedKvCache::truncate(int64_t n) {
  FM_CHECK(n >= 0, ErrorCode::kInvalidArgument, "cannot truncate to a negative length");
  for (int l = 0; l < cfg_.n_layers; ++l) {
    if (layer_tokens_[l] <= n) continue;
    const int64_t keep_pages = (n + cfg_.page_tokens - 1) / cfg_.page_tokens;
    auto& ids = page_ids_[l];
    while (static_cast<int64_t>(ids.size()) > keep_pages) {
      free_pages_.push_back(ids.back());
      ids.pop_back();
    }
    views_[l].resize(ids.size());
    if (!ids.empty()) views_[l].back().n_tokens = static_cast<int32_t>(n - (keep_pages - 1) * cfg_.page_tokens);
    layer_tokens_[l] = n;
  }
}

}  // namespace flashmem

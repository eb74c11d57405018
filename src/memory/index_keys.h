// flashmem/memory/index_keys.h — Memory Indexer keys for GQA models (DESIGN.md §4).
//
// Per chunk of `chunk_tokens` tokens and per target layer, the chunk's keys are pooled per KV
// head into one head_dim vector, each head's vector is Hadamard-rotated, and the chunk's
// n_kv_heads × head_dim values are stored as fp8 e4m3 with one fp32 scale (amax / 448):
// key_dim + 4 bytes per chunk and target layer. Two poolings, to measure which indexes better:
//   post_rope_mean  the mean of the keys as cached (RoPE'd at each token's own position);
//   pre_rope_mean   the keys are un-rotated to position 0, averaged, and rotated at the chunk's
//                   first position (what DeepSeek-V4's compressor does with its pooled keys).
// Keys are built when a page completes (the open page is always resident, so its chunks never
// need scoring) and live in backend memory: on a GPU they are device bytes, counted in the
// request's footprint.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "memory/kv_store.h"

namespace flashmem {

enum class KeyPooling { kPostRopeMean, kPreRopeMean };
const char* pooling_name(KeyPooling p);
// "post_rope_mean" or "pre_rope_mean"; Error(kInvalidArgument) otherwise.
KeyPooling parse_pooling(const std::string& s);

struct IndexKeyConfig {
  int chunk_tokens = 16;
  std::vector<int> layers;  // target layers, ascending
  KeyPooling pooling = KeyPooling::kPostRopeMean;
  RopeParams rope;          // the model's RoPE (pre_rope_mean un-rotates with it)
};

// Pools tokens [j0, j0 + n) of one page (K part laid out as KvPageRef describes, kv.type) whose
// first token is at position pos0 into one index key: key_dim fp8 bytes and a scale.
void pool_chunk_key(const KvCacheConfig& kv, const IndexKeyConfig& c, const uint8_t* page, int j0,
                    int n, int32_t pos0, uint8_t* key, float* scale);

class IndexKeys {
 public:
  // device: where the keys live (nullptr: host only, e.g. for dumps). Error(kInvalidArgument)
  // when page_tokens is not a multiple of chunk_tokens, a layer is out of range, or head_dim
  // is not a power of two.
  IndexKeys(const KvCacheConfig& kv, IndexKeyConfig c, Backend* device);

  const IndexKeyConfig& config() const { return cfg_; }
  int key_dim() const { return kv_.n_kv_heads * kv_.head_dim; }
  int n_targets() const { return static_cast<int>(cfg_.layers.size()); }
  int chunks_per_page() const { return kv_.page_tokens / cfg_.chunk_tokens; }
  // Index of `layer` among the targets, or −1.
  int target_of(int layer) const;

  // A completed page of `layer` (no-op for non-target layers). Pages arrive in order per layer;
  // a page seen again (a fork replaying its prefill) is ignored.
  void on_page(int layer, int32_t page, const uint8_t* data);
  // Chunks with keys for target t (all of its completed pages).
  int64_t n_chunks(int t) const { return static_cast<int64_t>(scales_[t].size()); }
  std::span<const uint8_t> host_keys(int t) const { return keys_[t]; }
  std::span<const float> host_scales(int t) const { return scales_[t]; }
  // Backend copies (valid until the next on_page).
  const uint8_t* device_keys(int t);
  const float* device_scales(int t);
  // Backend bytes allocated for keys and scales.
  uint64_t device_bytes() const;

 private:
  void sync(int t);
  KvCacheConfig kv_;
  IndexKeyConfig cfg_;
  Backend* dev_;
  std::vector<std::vector<uint8_t>> keys_;
  std::vector<std::vector<float>> scales_;
  struct Dev {
    BackendBuffer keys, scales;
    int64_t capacity = 0, synced = 0;
  };
  std::vector<Dev> dev_bufs_;
};

}  // namespace flashmem

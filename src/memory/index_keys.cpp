#include "memory/index_keys.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/fp8.h"
#include "core/hadamard.h"
#include "ops/cpu/elementwise.h"

namespace flashmem {

const char* pooling_name(KeyPooling p) {
  return p == KeyPooling::kPreRopeMean ? "pre_rope_mean" : "post_rope_mean";
}

KeyPooling parse_pooling(const std::string& s) {
  if (s == "post_rope_mean") return KeyPooling::kPostRopeMean;
  if (s == "pre_rope_mean") return KeyPooling::kPreRopeMean;
  FM_FAIL(ErrorCode::kInvalidArgument, "unknown key pooling '", s,
          "' (known: post_rope_mean, pre_rope_mean)");
}

void pool_chunk_key(const KvCacheConfig& kv, const IndexKeyConfig& c, const uint8_t* page, int j0,
                    int n, int32_t pos0, uint8_t* key, float* scale) {
  const int d = kv.head_dim, g_n = kv.n_kv_heads;
  const AttentionParams lay = kv.layout();
  std::vector<float> acc(static_cast<size_t>(g_n) * d, 0.0f), tok(static_cast<size_t>(g_n) * d);
  for (int j = j0; j < j0 + n; ++j) {
    for (int g = 0; g < g_n; ++g)
      for (int i = 0; i < d; ++i) tok[static_cast<size_t>(g) * d + i] = kv_load_k(page, lay, g, i, j);
    if (c.pooling == KeyPooling::kPreRopeMean)  // back to position 0: rotate by −position
      cpu::rope(tok.data(), g_n, d, -(pos0 + (j - j0)), c.rope);
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += tok[i];
  }
  for (float& a : acc) a /= static_cast<float>(n);
  if (c.pooling == KeyPooling::kPreRopeMean) cpu::rope(acc.data(), g_n, d, pos0, c.rope);
  float amax = 0.0f;
  for (int g = 0; g < g_n; ++g) hadamard_inplace(acc.data() + static_cast<size_t>(g) * d, d);
  for (float a : acc) amax = std::max(amax, std::fabs(a));
  const float s = amax > 0.0f ? amax / kFp8E4m3Max : 1.0f;
  for (size_t i = 0; i < acc.size(); ++i) key[i] = fp32_to_fp8_e4m3(acc[i] / s);
  *scale = s;
}

IndexKeys::IndexKeys(const KvCacheConfig& kv, IndexKeyConfig c, Backend* device)
    : kv_(kv), cfg_(std::move(c)), dev_(device) {
  FM_CHECK(cfg_.chunk_tokens >= 1 && kv_.page_tokens % cfg_.chunk_tokens == 0,
           ErrorCode::kInvalidArgument, "--chunk-tokens ", cfg_.chunk_tokens,
           " must divide the page size ", kv_.page_tokens);
  FM_CHECK(is_pow2(kv_.head_dim), ErrorCode::kInvalidArgument,
           "index keys need a power-of-two head_dim (Hadamard), got ", kv_.head_dim);
  FM_CHECK(!cfg_.layers.empty(), ErrorCode::kInvalidArgument, "no indexer target layers");
  FM_CHECK(std::is_sorted(cfg_.layers.begin(), cfg_.layers.end()) &&
               std::adjacent_find(cfg_.layers.begin(), cfg_.layers.end()) == cfg_.layers.end(),
           ErrorCode::kInvalidArgument, "indexer target layers must be distinct and ascending");
  for (int l : cfg_.layers)
    FM_CHECK(l >= 0 && l < kv_.n_layers, ErrorCode::kInvalidArgument, "indexer target layer ", l,
             " is outside the model's ", kv_.n_layers, " layers");
  keys_.resize(cfg_.layers.size());
  scales_.resize(cfg_.layers.size());
  dev_bufs_.resize(cfg_.layers.size());
}

int IndexKeys::target_of(int layer) const {
  const auto it = std::lower_bound(cfg_.layers.begin(), cfg_.layers.end(), layer);
  return it != cfg_.layers.end() && *it == layer ? static_cast<int>(it - cfg_.layers.begin()) : -1;
}

void IndexKeys::on_page(int layer, int32_t page, const uint8_t* data) {
  const int t = target_of(layer);
  if (t < 0) return;
  const int cpp = chunks_per_page();
  const int64_t have = n_chunks(t);
  if (static_cast<int64_t>(page) * cpp < have) return;  // already seen
  FM_ICHECK(static_cast<int64_t>(page) * cpp == have, "index keys: page ", page, " of layer ", layer,
            " arrived out of order");
  const size_t kd = static_cast<size_t>(key_dim());
  keys_[t].resize((have + cpp) * kd);
  scales_[t].resize(have + cpp);
  for (int c = 0; c < cpp; ++c) {
    const int j0 = c * cfg_.chunk_tokens;
    pool_chunk_key(kv_, cfg_, data, j0, cfg_.chunk_tokens, page * kv_.page_tokens + j0,
                   keys_[t].data() + (have + c) * kd, &scales_[t][have + c]);
  }
  if (dev_) sync(t);  // the keys live on the device from the moment their page completes
}

void IndexKeys::sync(int t) {
  FM_ICHECK(dev_ != nullptr, "index keys have no backend");
  Dev& b = dev_bufs_[t];
  const int64_t n = n_chunks(t);
  const size_t kd = static_cast<size_t>(key_dim());
  if (n > b.capacity) {  // grow in steps of 64 pages' chunks; re-upload everything
    const int64_t cap = std::max<int64_t>(n, b.capacity + 64 * chunks_per_page());
    b.keys = BackendBuffer(*dev_, cap * kd);
    b.scales = BackendBuffer(*dev_, cap * sizeof(float));
    b.capacity = cap;
    b.synced = 0;
  }
  if (b.synced < n) {
    dev_->upload(b.keys.as<uint8_t>() + b.synced * kd, keys_[t].data() + b.synced * kd, (n - b.synced) * kd);
    dev_->upload(b.scales.as<float>() + b.synced, scales_[t].data() + b.synced, (n - b.synced) * sizeof(float));
    b.synced = n;
  }
}

const uint8_t* IndexKeys::device_keys(int t) {
  sync(t);
  return dev_bufs_[t].keys.as<uint8_t>();
}

const float* IndexKeys::device_scales(int t) {
  sync(t);
  return dev_bufs_[t].scales.as<float>();
}

uint64_t IndexKeys::device_bytes() const {
  uint64_t n = 0;
  for (const Dev& b : dev_bufs_) n += b.keys.bytes() + b.scales.bytes();
  return n;
}

}  // namespace flashmem

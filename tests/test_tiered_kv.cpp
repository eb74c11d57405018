// The tiered KV store (device reserve ⇄ host mirror), residency policies and budgets.
// References: the full-KV PagedKvCache path (bit-identical at a 100% budget) and the float64
// attention reference; the reserve arena is inspected byte by byte.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "memory/kv_cache.h"
#include "memory/observation.h"
#include "memory/residency.h"
#include "memory/tiered_kv.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/cpu_backend.h"
#include "test_util.h"

namespace flashmem {
namespace {

// The backend the stores keep their reserve on (host memory).
CpuBackend& host_backend() {
  static CpuBackend be(1);
  return be;
}

KvCacheConfig small_config(KvType t = KvType::kF32, int layers = 2) {
  KvCacheConfig c;
  c.n_layers = layers;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.page_tokens = 8;
  c.max_tokens = 256;
  c.type = t;
  return c;
}

// K/V whose every value is unique to (layer, position, element): a page's bytes can only be
// found where that page was written.
struct Kv {
  std::vector<float> k, v;
};
Kv make_kv(const KvCacheConfig& c, int layer, int64_t pos0, int64_t n, uint64_t seed = 1) {
  const int64_t row = int64_t{c.n_kv_heads} * c.head_dim;
  Kv kv{std::vector<float>(n * row), std::vector<float>(n * row)};
  std::mt19937 rng(static_cast<uint32_t>(seed * 7919 + layer * 104729 + pos0));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t e = 0; e < row; ++e) {
      const float tag = static_cast<float>((layer * 1000 + pos0 + t) * 1e-3);
      kv.k[t * row + e] = u(rng) + tag;
      kv.v[t * row + e] = u(rng) - tag;
    }
  return kv;
}

void append_all(KvStore& s, const KvCacheConfig& c, int64_t pos0, int64_t n) {
  for (int l = 0; l < c.n_layers; ++l) {
    const Kv kv = make_kv(c, l, pos0, n);
    s.append(l, n, kv.k.data(), kv.v.data());
  }
}

std::vector<float> random_q(int64_t m, int n_heads, int d, uint32_t seed) {
  std::vector<float> q(m * n_heads * d);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (float& x : q) x = nd(rng);
  return q;
}

bool contains(const uint8_t* hay, size_t hay_bytes, const uint8_t* needle, size_t n, size_t stride) {
  for (size_t off = 0; off + n <= hay_bytes; off += stride)
    if (std::memcmp(hay + off, needle, n) == 0) return true;
  return false;
}

TEST(KvBudget, ParsesPercentAndPagesAndRejectsTheRest) {
  EXPECT_EQ(KvBudget::parse("10%").kind, KvBudget::Kind::kPercent);
  EXPECT_DOUBLE_EQ(KvBudget::parse("12.5%").value, 12.5);
  EXPECT_EQ(KvBudget::parse("32pages").kind, KvBudget::Kind::kPages);
  EXPECT_DOUBLE_EQ(KvBudget::parse("7p").value, 7.0);
  EXPECT_TRUE(KvBudget::parse("100%").is_full());
  EXPECT_EQ(KvBudget::parse("10%").str(), "10%");
  EXPECT_EQ(KvBudget::parse("32pages").str(), "32pages");
  for (const char* bad : {"", "abc", "0%", "-5%", "150%", "0pages", "2.5pages", "10", "10 %", "nan%", "5kb"}) {
    try {
      KvBudget::parse(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << bad;
    }
  }
}

TEST(KvBudget, ResolvesToPagesPerLayerWithAClearMinimum) {
  KvCacheConfig c = small_config();
  c.page_tokens = 64;
  c.max_tokens = 8192;
  ResidencyOptions o;
  EXPECT_EQ(resolve_budget_pages(o, c, 8192), 128);  // full: every page
  o.policy = "recency";
  o.budget = KvBudget::parse("10%");
  EXPECT_EQ(resolve_budget_pages(o, c, 8192), 12);   // ⌊0.1 · 128⌋
  o.budget = KvBudget::parse("25%");
  EXPECT_EQ(resolve_budget_pages(o, c, 8192 + 64), 32);  // ⌊0.25 · 129⌋
  o.budget = KvBudget::parse("20pages");
  EXPECT_EQ(resolve_budget_pages(o, c, 8192), 20);
  o.budget = KvBudget::parse("1%");  // 1 page < sink 1 + tail 1 + 2 per cycle
  try {
    resolve_budget_pages(o, c, 8192);
    ADD_FAILURE() << "a 1% budget was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("minimum of 4"), std::string::npos) << e.what();
  }
  o.budget = KvBudget::parse("1%");
  EXPECT_EQ(resolve_budget_pages(o, c, 100), 2);  // a request that fits the minimum anyway
  ResidencyOptions bad;
  bad.budget = KvBudget::parse("10%");  // policy full at 10%
  EXPECT_THROW(resolve_budget_pages(bad, c, 8192), Error);
  bad = ResidencyOptions{};
  bad.policy = "lru";
  EXPECT_THROW(bad.validate(), Error);
  bad = ResidencyOptions{};
  bad.cycle = 0;
  EXPECT_THROW(bad.validate(), Error);
  EXPECT_THROW(make_policy("lsa", c, 0), Error);
  EXPECT_THROW(make_policy("oracle", c, 0, nullptr), Error);
}

TEST(MergeAttention, CombinesDisjointKeySetsLikeOneCall) {
  const KvCacheConfig c = small_config(KvType::kF32, 1);
  PagedKvCache all(c);
  append_all(all, c, 0, 60);
  const AttentionParams p = all.attention_params(4, 0.25f);
  const auto pages = all.pages(0);
  const int64_t m = 3;
  const auto q = random_q(m, 4, c.head_dim, 5);
  const int32_t pos[3] = {40, 55, 59};
  std::vector<float> ref(q.size()), a(q.size()), b(q.size()), la(m * 4), lb(m * 4);
  cpu::attention_ref(p, q.data(), pos, m, pages, ref.data());
  CpuBackend be(2);
  be.attention(p, q.data(), pos, m, pages.subspan(0, 3), a.data(), la.data());
  be.attention(p, q.data(), pos, m, pages.subspan(3), b.data(), lb.data());
  be.merge_attention(m * 4, c.head_dim, a.data(), la.data(), b.data(), lb.data());
  ASSERT_TRUE(test::all_finite(a.data(), a.size()));
  EXPECT_LE(test::rel_l2(a.data(), ref.data(), a.size()), 1e-5);
  // A set no query can see contributes nothing: lse −inf, and the merge leaves the result.
  std::vector<float> e(q.size()), le(m * 4);
  const int32_t early[3] = {2, 3, 4};
  be.attention(p, q.data(), early, m, pages.subspan(3), e.data(), le.data());
  for (float x : le) EXPECT_EQ(x, -INFINITY);
}

// Prefill through a reserve far smaller than the prompt: every page streams through windows
// of at most budget − 1 pages and the result matches full attention.
TEST(TieredKvStore, StreamingPrefillMatchesFullAttentionWithinTheBudget) {
  for (KvType t : {KvType::kF32, KvType::kF16, KvType::kQ8}) {
    const KvCacheConfig c = small_config(t);
    const int64_t budget = 3;
    KvReserve reserve(host_backend(), c.page_bytes(), budget * c.n_layers);
    RecallEngine recall(host_backend());
    TieredKvStore tiered(c, budget, reserve, recall);
    PagedKvCache full(c);
    CpuBackend be(2);
    const AttentionParams p = full.attention_params(4, 0.25f);
    int64_t pos0 = 0;
    for (int64_t n : {13, 29, 1, 40}) {  // ragged chunks: pages fill mid-chunk
      append_all(tiered, c, pos0, n);
      append_all(full, c, pos0, n);
      std::vector<int32_t> pos(n);
      for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(pos0 + i);
      const auto q = random_q(n, 4, c.head_dim, static_cast<uint32_t>(n));
      for (int l = 0; l < c.n_layers; ++l) {
        std::vector<float> got(q.size()), want(q.size());
        tiered.attend(be, l, p, q.data(), pos.data(), n, got.data());
        cpu::attention_ref(p, q.data(), pos.data(), n, full.pages(l), want.data());
        ASSERT_TRUE(test::all_finite(got.data(), got.size()));
        EXPECT_LE(test::rel_l2(got.data(), want.data(), got.size()), 2e-5) << "layer " << l << " n " << n;
        EXPECT_LE(tiered.footprint().reserve + tiered.footprint().open, budget * c.n_layers * c.page_bytes());
      }
      pos0 += n;
    }
    EXPECT_EQ(tiered.peak().reserve + tiered.peak().open, reserve.bytes_allocated());
    EXPECT_GT(recall.stats().pages, 0);
    // The mirror holds every completed page, byte for byte what the full path holds.
    for (int l = 0; l < c.n_layers; ++l)
      for (int32_t pg = 0; pg < tiered.completed_pages(l); ++pg)
        EXPECT_EQ(std::memcmp(tiered.mirror_page(l, pg), full.pages(l)[pg].k, c.page_bytes()), 0);
  }
}

// What the prompt's last tokens attended (memory/observation.h), measured while the prompt
// streams through a small reserve, equals the float64 softmax over all of each layer's keys,
// summed per chunk and averaged over (layer, head, observed token); the same with every page
// resident (one attention call, no log-sum-exp to combine). Per layer, the same averaged over
// that layer's (head, token) pairs.
TEST(PromptObserver, StreamedPartsCombineToTheWholeSoftmax) {
  for (const int64_t budget : {int64_t{3}, int64_t{40}})
    for (const int32_t from : {60, 40}) {  // 40: the observed tokens straddle two forward calls
      const KvCacheConfig c = small_config(KvType::kF16);
      KvReserve reserve(host_backend(), c.page_bytes(), budget * c.n_layers);
      RecallEngine recall(host_backend());
      TieredKvStore tiered(c, budget, reserve, recall);
      PagedKvCache full(c);
      CpuBackend be(2);
      const int n_heads = 4, ct = 4;
      const AttentionParams p = full.attention_params(n_heads, 0.25f);
      PromptObserver obs(from, ct);
      tiered.set_prompt_observer(&obs);
      int64_t pos0 = 0;
      std::vector<std::vector<float>> qs;  // per call
      std::vector<int64_t> starts;
      for (int64_t n : {13, 29, 1, 40}) {
        append_all(tiered, c, pos0, n);
        append_all(full, c, pos0, n);
        std::vector<int32_t> pos(n);
        for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(pos0 + i);
        qs.push_back(random_q(n, n_heads, c.head_dim, static_cast<uint32_t>(n + 7)));
        starts.push_back(pos0);
        for (int l = 0; l < c.n_layers; ++l) {
          std::vector<float> out(qs.back().size());
          tiered.attend(be, l, p, qs.back().data(), pos.data(), n, out.data());
        }
        pos0 += n;
      }
      tiered.set_prompt_observer(nullptr);
      // float64 reference from the full path's stored keys: per (layer, head), the mass per chunk
      // summed over the observed tokens, and how many tokens that is.
      const int64_t n_tok = pos0, n_chunks = (n_tok - 1) / ct + 1;
      std::vector<std::vector<std::vector<double>>> want(
          c.n_layers, std::vector<std::vector<double>>(n_heads, std::vector<double>(n_chunks, 0.0)));
      int64_t rows = 0;
      for (size_t call = 0; call < qs.size(); ++call)
        for (int64_t i = 0; i < static_cast<int64_t>(qs[call].size()) / (n_heads * c.head_dim); ++i) {
          const int64_t t = starts[call] + i;
          if (t < from) continue;
          ++rows;
          for (int l = 0; l < c.n_layers; ++l)
            for (int h = 0; h < n_heads; ++h) {
              const int g = h / (n_heads / c.n_kv_heads);
              std::vector<double> sc(static_cast<size_t>(t + 1));
              double mx = -INFINITY;
              for (int64_t j = 0; j <= t; ++j) {
                const KvPageRef& pg = full.pages(l)[j / c.page_tokens];
                double dot = 0.0;
                for (int e = 0; e < c.head_dim; ++e)
                  dot += static_cast<double>(qs[call][(i * n_heads + h) * c.head_dim + e]) *
                         kv_load_k(pg.k, p, g, e, static_cast<int>(j % c.page_tokens));
                sc[j] = dot * p.scale;
                mx = std::max(mx, sc[j]);
              }
              double sum = 0.0;
              for (double& v : sc) sum += (v = std::exp(v - mx));
              for (int64_t j = 0; j <= t; ++j) want[l][h][j / ct] += sc[j] / sum;
            }
        }
      ASSERT_GT(rows, 0);
      const std::string where = "budget " + std::to_string(budget) + " from " + std::to_string(from);
      const std::vector<float> got = obs.mass();
      ASSERT_EQ(got.size(), static_cast<size_t>(n_chunks)) << where;
      double total = 0.0, worst = 0.0;
      for (int64_t k = 0; k < n_chunks; ++k) {
        ASSERT_TRUE(std::isfinite(got[k]));
        total += got[k];
        double w = 0.0;
        for (int l = 0; l < c.n_layers; ++l)
          for (int h = 0; h < n_heads; ++h) w += want[l][h][k];
        worst = std::max(worst, std::abs(got[k] - w / static_cast<double>(rows * n_heads * c.n_layers)));
      }
      EXPECT_NEAR(total, 1.0, 1e-5) << where;
      EXPECT_LE(worst, 2e-6) << where;
      const auto per_layer = obs.layer_mass();
      ASSERT_EQ(per_layer.size(), static_cast<size_t>(c.n_layers));
      for (int l = 0; l < c.n_layers; ++l) {
        std::vector<double> w(static_cast<size_t>(n_chunks), 0.0);
        for (int64_t k = 0; k < n_chunks; ++k)
          for (int h = 0; h < n_heads; ++h) w[k] += want[l][h][k] / static_cast<double>(rows * n_heads);
        double sum = 0.0, t = 0.0, worst_l = 0.0;
        for (double v : w) sum += v;
        ASSERT_EQ(per_layer[l].size(), static_cast<size_t>(n_chunks)) << where;
        for (int64_t k = 0; k < n_chunks; ++k) {
          ASSERT_TRUE(std::isfinite(per_layer[l][k])) << where;
          t += per_layer[l][k];
          worst_l = std::max(worst_l, std::abs(per_layer[l][k] - w[k] / sum));
        }
        EXPECT_NEAR(t, 1.0, 1e-5) << where;
        EXPECT_LE(worst_l, 4e-6) << where << " layer " << l;
      }
      if (budget == 3) {
        EXPECT_GT(recall.stats().pages, 0);  // the prompt did stream
      }
    }
}

// A CPU backend whose copies into alloc_host() memory arrive only at synchronize(), as a GPU's
// page-locked write-backs do: the source is read when the copy is issued (stream order) and
// the bytes land later. Fresh alloc_host memory is filled with 0xA5, so a store that reads its
// mirror without waiting sees bytes no page holds.
class LateHostBackend : public CpuBackend {
 public:
  LateHostBackend() : CpuBackend(1) {}
  void* alloc_host(size_t bytes) override {
    void* p = CpuBackend::alloc_host(bytes);
    std::memset(p, 0xA5, bytes);
    blocks_[reinterpret_cast<uintptr_t>(p)] = bytes;
    host_bytes += bytes;
    return p;
  }
  void free_host(void* p) noexcept override {
    deliver();
    host_bytes -= blocks_[reinterpret_cast<uintptr_t>(p)];
    blocks_.erase(reinterpret_cast<uintptr_t>(p));
    CpuBackend::free_host(p);
  }
  void copy_pages(CopyDir dir, std::span<const PageCopy> copies, size_t bytes) override {
    if (dir == CopyDir::kBackendToHost) {
      for (const PageCopy& c : copies) {
        if (!in_host_block(c.dst)) ADD_FAILURE() << "a write-back outside the mirror";
        late_.push_back({c.dst, std::vector<uint8_t>(c.src, c.src + bytes)});
      }
      return;
    }
    deliver();  // stream order: earlier write-backs land before a later copy reads the mirror
    CpuBackend::copy_pages(dir, copies, bytes);
  }
  void synchronize() override {
    deliver();
    ++syncs;
  }
  int64_t syncs = 0;
  size_t host_bytes = 0;

 private:
  bool in_host_block(const void* p) const {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = blocks_.upper_bound(a);
    return it != blocks_.begin() && a < std::prev(it)->first + std::prev(it)->second;
  }
  void deliver() {
    for (auto& [dst, bytes] : late_) std::memcpy(dst, bytes.data(), bytes.size());
    late_.clear();
  }
  std::map<uintptr_t, size_t> blocks_;
  std::vector<std::pair<uint8_t*, std::vector<uint8_t>>> late_;
};

// With write-backs in flight (LateHostBackend), the store still hands the page listener, the
// mirror readers, streamed attention and a fork the right bytes, and waits once per append
// (only when a listener reads the pages), never once per page.
TEST(TieredKvStore, WriteBacksInFlightAreWaitedForOncePerAppend) {
  for (KvType t : {KvType::kF32, KvType::kF16, KvType::kQ8}) {
    LateHostBackend late;
    const KvCacheConfig c = small_config(t);
    const int64_t budget = 3;
    KvReserve reserve(late, c.page_bytes(), 2 * budget * c.n_layers);
    RecallEngine recall(late);
    TieredKvStore s(c, budget, reserve, recall);
    PagedKvCache full(c);
    CpuBackend be(1);
    const AttentionParams p = full.attention_params(4, 0.25f);
    int64_t pos0 = 0;
    // No listener: appends never wait.
    for (int l = 0; l < c.n_layers; ++l) {
      const Kv kv = make_kv(c, l, pos0, 37);
      full.append(l, 37, kv.k.data(), kv.v.data());
      s.append(l, 37, kv.k.data(), kv.v.data());
    }
    pos0 += 37;
    EXPECT_EQ(late.syncs, 0);
    int listened = 0;
    s.set_page_listener([&](int l, int32_t pg, const uint8_t* data) {
      ++listened;
      EXPECT_EQ(std::memcmp(data, full.pages(l)[pg].k, c.page_bytes()), 0) << "layer " << l << " page " << pg;
    });
    for (int64_t n : {29, 3, 40}) {
      for (int l = 0; l < c.n_layers; ++l) {
        const Kv kv = make_kv(c, l, pos0, n);
        full.append(l, n, kv.k.data(), kv.v.data());
        const int64_t before = late.syncs, pages_before = s.completed_pages(l);
        s.append(l, n, kv.k.data(), kv.v.data());
        EXPECT_EQ(late.syncs - before, s.completed_pages(l) > pages_before ? 1 : 0) << "n " << n;
      }
      std::vector<int32_t> pos(n);
      for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(pos0 + i);
      const auto q = random_q(n, 4, c.head_dim, static_cast<uint32_t>(n));
      for (int l = 0; l < c.n_layers; ++l) {  // streamed windows recall pages just written back
        std::vector<float> got(q.size()), want(q.size());
        s.attend(be, l, p, q.data(), pos.data(), n, got.data());
        cpu::attention_ref(p, q.data(), pos.data(), n, full.pages(l), want.data());
        ASSERT_TRUE(test::all_finite(got.data(), got.size()));
        EXPECT_LE(test::rel_l2(got.data(), want.data(), got.size()), 2e-5) << "layer " << l;
      }
      pos0 += n;
    }
    EXPECT_EQ(listened, c.n_layers * (pos0 / c.page_tokens - 37 / c.page_tokens));
    s.set_page_listener(nullptr);
    // Pages completed after the last wait, then a fork copies the mirror: it must wait first.
    append_all(s, c, pos0, 16);
    append_all(full, c, pos0, 16);
    TieredKvStore fork(s, budget, reserve, recall);
    for (int l = 0; l < c.n_layers; ++l)
      for (int32_t pg = 0; pg < s.completed_pages(l); ++pg) {
        EXPECT_EQ(std::memcmp(fork.mirror_page(l, pg), full.pages(l)[pg].k, c.page_bytes()), 0);
        EXPECT_EQ(std::memcmp(s.mirror_page(l, pg), full.pages(l)[pg].k, c.page_bytes()), 0);
      }
  }
}

// The mirror grows in segments as pages complete: host memory follows the tokens held, not
// the context's capacity, and pages on both sides of a segment boundary keep their bytes.
TEST(TieredKvStore, TheMirrorGrowsWithTheTokensHeld) {
  LateHostBackend late;
  KvCacheConfig c = small_config(KvType::kF32);
  c.max_tokens = 1 << 20;  // a 512 MiB mirror if it were allocated up front
  KvReserve reserve(late, c.page_bytes(), 4 * c.n_layers);
  RecallEngine recall(late);
  const size_t staging = late.host_bytes;
  TieredKvStore s(c, 4, reserve, recall);
  EXPECT_EQ(late.host_bytes, staging);  // nothing until a page completes
  PagedKvCache full(c);
  const int64_t n = 20000;  // 2500 pages per layer: past the first 8 MiB segment
  append_all(s, c, 0, n);
  append_all(full, c, 0, n);
  const size_t held = static_cast<size_t>(n / c.page_tokens) * c.n_layers * c.page_bytes();
  EXPECT_GE(late.host_bytes - staging, held);
  EXPECT_LE(late.host_bytes - staging, held + (size_t{8} << 20));
  for (int l = 0; l < c.n_layers; ++l)
    for (int32_t pg = 0; pg < s.completed_pages(l); ++pg)
      ASSERT_EQ(std::memcmp(s.mirror_page(l, pg), full.pages(l)[pg].k, c.page_bytes()), 0)
          << "layer " << l << " page " << pg;
  EXPECT_EQ(s.footprint().mirror, held);
}

TEST(TieredKvStore, FullBudgetAttentionIsBitIdenticalToTheFullPath) {
  const KvCacheConfig c = small_config(KvType::kF16);
  const int64_t budget = c.max_tokens / c.page_tokens;
  KvReserve reserve(host_backend(), c.page_bytes(), budget * c.n_layers);
  RecallEngine recall(host_backend());
  TieredKvStore tiered(c, budget, reserve, recall);
  PagedKvCache full(c);
  CpuBackend be(2);
  const AttentionParams p = full.attention_params(4, 0.25f);
  append_all(tiered, c, 0, 100);
  append_all(full, c, 0, 100);
  std::vector<std::vector<int32_t>> all(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l)
    for (int32_t pg = 0; pg < tiered.completed_pages(l); ++pg) all[l].push_back(pg);
  tiered.select(all);
  for (int step = 0; step < 20; ++step) {
    append_all(tiered, c, 100 + step, 1);
    append_all(full, c, 100 + step, 1);
    const auto q = random_q(1, 4, c.head_dim, 77 + step);
    const int32_t pos = 100 + step;
    for (int l = 0; l < c.n_layers; ++l) {
      std::vector<float> got(q.size()), want(q.size());
      tiered.attend(be, l, p, q.data(), &pos, 1, got.data());
      full.attend(be, l, p, q.data(), &pos, 1, want.data());
      ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "step " << step;
    }
  }
  EXPECT_EQ(recall.stats().pages, 0);  // nothing ever left the device
}

// The batched decode path's halves (begin_token / commit_token around one write_kv_rows, and
// decode_pages / after_decode_attend around one attention_rows) give what append and attend
// give, bit for bit, for two requests decoded together: streaming with every page resident, then
// in decode mode under a selection. A streaming store with a page out of the reserve says no.
TEST(TieredKvStore, TheBatchedDecodeHalvesEqualAppendAndAttend) {
  const KvCacheConfig c = small_config(KvType::kQ8);
  const int64_t budget = c.max_tokens / c.page_tokens;
  KvReserve reserve(host_backend(), c.page_bytes(), (4 * budget + 3) * c.n_layers);
  RecallEngine recall(host_backend());
  CpuBackend be(2);
  // Stores 0 and 1 go through append/attend, 2 and 3 (their twins) through the batched halves.
  std::vector<std::unique_ptr<TieredKvStore>> s;
  for (int i = 0; i < 4; ++i) s.push_back(std::make_unique<TieredKvStore>(c, budget, reserve, recall));
  const AttentionParams p = s[0]->attention_params(4, 0.25f);
  const int64_t row = int64_t{c.n_kv_heads} * c.head_dim, qrow = 4 * c.head_dim;
  const int64_t start[2] = {37, 60};
  for (int i = 0; i < 4; ++i) append_all(*s[i], c, 0, start[i % 2]);
  for (int step = 0; step < 30; ++step) {
    if (step == 15)  // decode mode: a selection of every other completed page
      for (int i = 0; i < 4; ++i) {
        std::vector<std::vector<int32_t>> sel(c.n_layers);
        for (int l = 0; l < c.n_layers; ++l)
          for (int32_t pg = 0; pg < s[i]->completed_pages(l); pg += 2) sel[l].push_back(pg);
        s[i]->select(sel);
      }
    for (int l = 0; l < c.n_layers; ++l) {
      std::vector<float> k(2 * row), v(2 * row), q(2 * qrow), want(2 * qrow), got(2 * qrow, -7.0f);
      std::vector<int32_t> pos(2);
      for (int j = 0; j < 2; ++j) {
        pos[j] = static_cast<int32_t>(s[j]->n_tokens(l));
        const Kv kv = make_kv(c, l, pos[j], 1, 5 + j);
        std::copy(kv.k.begin(), kv.k.end(), k.begin() + j * row);
        std::copy(kv.v.begin(), kv.v.end(), v.begin() + j * row);
        const auto qj = random_q(1, 4, c.head_dim, 1000 * step + 10 * l + j);
        std::copy(qj.begin(), qj.end(), q.begin() + j * qrow);
        s[j]->append(l, 1, k.data() + j * row, v.data() + j * row);
        s[j]->attend(be, l, p, q.data() + j * qrow, &pos[j], 1, want.data() + j * qrow);
      }
      std::vector<KvSlotRef> slots(2);
      for (int j = 0; j < 2; ++j) ASSERT_TRUE(s[2 + j]->begin_token(l, slots[j]));
      be.write_kv_rows(p, slots, k.data(), v.data());
      std::vector<KvPageRef> pages;
      std::vector<int32_t> begin{0};
      for (int j = 0; j < 2; ++j) {
        s[2 + j]->commit_token(l);
        ASSERT_TRUE(s[2 + j]->decode_pages(be, l, p, q.data() + j * qrow, pos[j], pages));
        begin.push_back(static_cast<int32_t>(pages.size()));
      }
      be.attention_rows(p, q.data(), pos.data(), 2, begin, pages, got.data());
      for (int j = 0; j < 2; ++j) s[2 + j]->after_decode_attend(be, l, p, q.data() + j * qrow, pos[j]);
      ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "step " << step << " layer " << l;
    }
    for (int j = 0; j < 2; ++j) {
      ASSERT_EQ(s[2 + j]->n_tokens(), s[j]->n_tokens());
      for (int l = 0; l < c.n_layers; ++l)
        for (int32_t pg = 0; pg < s[j]->completed_pages(l); ++pg)
          ASSERT_EQ(std::memcmp(s[2 + j]->mirror_page(l, pg), s[j]->mirror_page(l, pg), c.page_bytes()), 0)
              << "request " << j << " layer " << l << " page " << pg;
    }
  }
  // Streaming with a page out of the reserve: the store asks for attend.
  TieredKvStore small(c, 3, reserve, recall);
  append_all(small, c, 0, 40);  // 5 pages, 3 fit
  std::vector<KvPageRef> pages;
  const auto q = random_q(1, 4, c.head_dim, 9);
  EXPECT_FALSE(small.decode_pages(be, 0, p, q.data(), 39, pages));
  EXPECT_TRUE(pages.empty());
}

// After a selection, the reserve holds exactly the resident pages: every selected page is in
// its slot byte for byte, and no page that is not resident appears anywhere in the arena.
// The engine's reserve: one region per admission, exactly its quota, given back at release.
TEST(KvReserve, GrowsAtAdmissionAndGivesMemoryBackWhenRequestsEnd) {
  constexpr size_t kPage = 256;
  auto r = KvReserve::growable(host_backend(), kPage, 100);
  EXPECT_EQ(r->capacity(), 0);
  EXPECT_EQ(r->bytes_allocated(), 0u);
  const int64_t a = r->admit(30);
  EXPECT_EQ(r->capacity(), 30);
  const int64_t b = r->admit(50);
  EXPECT_EQ(r->capacity(), 80);
  EXPECT_EQ(r->regions(), 2u);
  EXPECT_EQ(r->bytes_allocated(), 80 * kPage);
  EXPECT_EQ(r->unreserved(), 20);
  // Each client's slots: distinct, writable, its own.
  std::set<const uint8_t*> seen;
  std::vector<int64_t> held_a, held_b;
  for (int i = 0; i < 30; ++i) held_a.push_back(r->acquire(a));
  for (int i = 0; i < 50; ++i) held_b.push_back(r->acquire(b));
  for (int64_t s : held_a) {
    EXPECT_EQ(r->owner(s), a);
    std::memset(r->slot(s), 0xAB, kPage);
    seen.insert(r->slot(s));
  }
  for (int64_t s : held_b) {
    EXPECT_EQ(r->owner(s), b);
    seen.insert(r->slot(s));
  }
  EXPECT_EQ(seen.size(), 80u);
  // Past the cap: refused, with the numbers, and nothing changes.
  try {
    (void)r->admit(21);
    ADD_FAILURE() << "admitted past the cap";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfMemory);
    EXPECT_NE(std::string(e.what()).find("cap of 100 slots"), std::string::npos) << e.what();
  }
  EXPECT_EQ(r->capacity(), 80);
  // The first request ends: its region is given back at once.
  r->release(a);
  EXPECT_EQ(r->capacity(), 50);
  EXPECT_EQ(r->regions(), 1u);
  // A new request takes the freed ids (the ids stay bounded by what is allocated), and its
  // region starts clean.
  const int64_t c = r->admit(20);
  EXPECT_EQ(r->capacity(), 70);
  EXPECT_EQ(r->slot_ids(), 80);
  for (int i = 0; i < 20; ++i) {
    const uint8_t* p = r->slot(r->acquire(c));
    EXPECT_TRUE(std::all_of(p, p + kPage, [](uint8_t v) { return v == 0; }));
  }
  EXPECT_THROW((void)r->acquire(c), Error);  // at its quota
  r->release(b);
  r->release(c);
  EXPECT_EQ(r->capacity(), 0);
  EXPECT_EQ(r->bytes_allocated(), 0u);
  EXPECT_EQ(r->slot_ids(), 0);
  // A client holding nothing keeps its region (its quota) until released.
  const int64_t d = r->admit(10);
  r->free(d, r->acquire(d));
  EXPECT_EQ(r->capacity(), 10);
  EXPECT_EQ(r->quota(d), 10);
  r->release(d);
  EXPECT_EQ(r->capacity(), 0);
  // Without a cap the backend's memory is the limit.
  auto open = KvReserve::growable(host_backend(), kPage, 0);
  open->release(open->admit(1000));
  EXPECT_EQ(open->capacity(), 0);
  // A fixed reserve never grows or shrinks.
  KvReserve fixed(host_backend(), kPage, 8);
  const int64_t f = fixed.admit(8);
  EXPECT_THROW((void)fixed.admit(1), Error);
  fixed.release(f);
  EXPECT_EQ(fixed.capacity(), 8);
  EXPECT_EQ(fixed.regions(), 1u);
}

TEST(TieredKvStore, NonResidentKvIsAbsentFromTheReserve) {
  const KvCacheConfig c = small_config(KvType::kF32);
  const int64_t budget = 4;
  KvReserve reserve(host_backend(), c.page_bytes(), budget * c.n_layers);
  EXPECT_EQ(reserve.bytes_allocated(), static_cast<size_t>(budget * c.n_layers) * c.page_bytes());
  RecallEngine recall(host_backend());
  TieredKvStore s(c, budget, reserve, recall);
  CpuBackend be(1);
  append_all(s, c, 0, 123);  // 15 full pages + 3 tokens per layer
  std::vector<std::vector<int32_t>> sel = {{0, 7, 14}, {3, 9, 12}};
  s.select(sel);
  int non_resident = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    std::set<int32_t> chosen(sel[l].begin(), sel[l].end());
    for (int32_t pg = 0; pg < s.completed_pages(l); ++pg) {
      const uint8_t* bytes = s.mirror_page(l, pg);
      const bool found = contains(reserve.arena(), reserve.bytes_allocated(), bytes, c.page_bytes(), c.page_bytes());
      if (chosen.count(pg)) {
        EXPECT_TRUE(s.resident(l, pg) && found) << "layer " << l << " page " << pg;
      }
      if (!s.resident(l, pg)) {
        ++non_resident;
        EXPECT_FALSE(found) << "non-resident page " << pg << " of layer " << l << " is in the reserve";
        // Not even a fragment: the first 16 K values of the page, at any 4-byte offset.
        EXPECT_FALSE(contains(reserve.arena(), reserve.bytes_allocated(), bytes, 64, 4));
      }
    }
  }
  EXPECT_EQ(non_resident, 2 * (15 - 3));
  // Footprint = bytes of slots the request holds, counted independently from the arena.
  int64_t owned = 0;
  for (int64_t slot = 0; slot < reserve.capacity(); ++slot) owned += reserve.owner(slot) >= 0;
  const KvFootprint f = s.footprint();
  EXPECT_EQ(f.reserve + f.open, static_cast<uint64_t>(owned) * c.page_bytes());
  EXPECT_EQ(f.open, static_cast<uint64_t>(c.n_layers) * c.page_bytes());
  EXPECT_EQ(f.mirror, static_cast<uint64_t>(15 * c.n_layers) * c.page_bytes());
  EXPECT_EQ(f.full_kv, static_cast<uint64_t>(16 * c.n_layers) * c.page_bytes());
  EXPECT_LE(f.device(), reserve.bytes_allocated());
  // Decode attention reads exactly the selection plus the open page.
  const AttentionParams p = s.attention_params(4, 0.25f);
  const auto q = random_q(1, 4, c.head_dim, 3);
  const int32_t pos = 122;
  for (int l = 0; l < c.n_layers; ++l) {
    std::vector<KvPageRef> want_pages;
    std::vector<int32_t> ids = sel[l];
    std::sort(ids.begin(), ids.end());
    for (int32_t pg : ids) {
      const uint8_t* b = s.mirror_page(l, pg);
      want_pages.push_back(KvPageRef{b, b + c.page_bytes() / 2, pg * c.page_tokens, c.page_tokens});
    }
    PagedKvCache tailc(c);  // the open page's 3 tokens, at their positions
    const Kv kv = make_kv(c, l, 0, 123);
    tailc.append(0, 123, kv.k.data(), kv.v.data());
    want_pages.push_back(tailc.pages(0).back());
    std::vector<float> got(q.size()), want(q.size());
    s.attend(be, l, p, q.data(), &pos, 1, got.data());
    cpu::attention_ref(p, q.data(), &pos, 1, want_pages, want.data());
    EXPECT_LE(test::rel_l2(got.data(), want.data(), got.size()), 1e-5) << "layer " << l;
  }
}

// Two requests share one reserve; the second churns through far more pages than fit. The
// first one's selected pages are never evicted or overwritten, and a third request that does
// not fit is refused at admission without disturbing either.
TEST(TieredKvStore, PagesInUseAreNeverEvictedUnderPressure) {
  const KvCacheConfig c = small_config(KvType::kF32);
  KvReserve reserve(host_backend(), c.page_bytes(), 2 * 4 * c.n_layers);
  RecallEngine recall(host_backend());
  TieredKvStore a(c, 4, reserve, recall);
  TieredKvStore b(c, 4, reserve, recall);
  append_all(a, c, 0, 40);
  std::vector<std::vector<int32_t>> sel = {{1, 3}, {0, 2}};
  a.select(sel);
  try {
    TieredKvStore third(c, 2, reserve, recall);
    ADD_FAILURE() << "a request beyond the reserve was admitted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfMemory);
    EXPECT_NE(std::string(e.what()).find("unreserved"), std::string::npos) << e.what();
  }
  EXPECT_EQ(reserve.unreserved(), 0);
  CpuBackend be(1);
  const AttentionParams p = b.attention_params(4, 0.25f);
  for (int64_t pos0 = 0; pos0 < 200; pos0 += 25) {  // b streams 25 pages per layer
    append_all(b, c, pos0, 25);
    std::vector<int32_t> pos(25);
    for (int i = 0; i < 25; ++i) pos[i] = static_cast<int32_t>(pos0 + i);
    const auto q = random_q(25, 4, c.head_dim, 9);
    std::vector<float> out(q.size());
    for (int l = 0; l < c.n_layers; ++l) b.attend(be, l, p, q.data(), pos.data(), 25, out.data());
    EXPECT_LE(reserve.held(1), reserve.quota(1));
  }
  EXPECT_GT(recall.stats().pages, 0);
  for (int l = 0; l < c.n_layers; ++l)
    for (int32_t pg : sel[l]) {
      ASSERT_TRUE(a.resident(l, pg));
      const uint8_t* bytes = a.mirror_page(l, pg);
      EXPECT_TRUE(contains(reserve.arena(), reserve.bytes_allocated(), bytes, c.page_bytes(), c.page_bytes()))
          << "page " << pg << " of layer " << l << " was overwritten";
    }
}

TEST(TieredKvStore, BadSelectionsAndConfigurationsAreClearErrors) {
  const KvCacheConfig c = small_config(KvType::kF32);
  KvReserve reserve(host_backend(), c.page_bytes(), 8);
  RecallEngine recall(host_backend());
  EXPECT_THROW(TieredKvStore(c, 1, reserve, recall), Error);     // < 2 pages
  EXPECT_THROW(TieredKvStore(c, 100, reserve, recall), Error);   // beyond the reserve
  KvReserve other(host_backend(), c.page_bytes() * 2, 8);
  EXPECT_THROW(TieredKvStore(c, 2, other, recall), Error);       // slot size mismatch
  TieredKvStore s(c, 4, reserve, recall);
  append_all(s, c, 0, 30);  // 3 completed pages per layer + open
  auto expect_invalid = [&](std::vector<std::vector<int32_t>> sel) {
    try {
      s.select(sel);
      ADD_FAILURE() << "accepted a bad selection";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    }
  };
  expect_invalid({{5}, {}});           // not a completed page
  expect_invalid({{0, 0}, {}});        // twice
  expect_invalid({{0, 1, 2}, {0, 1, 2, 3}});  // too many (open page + 4 > 4)
  expect_invalid({{0}});               // one list for two layers
}

// ---- policies --------------------------------------------------------------------------

SelectContext ctx(int64_t n_pages, int64_t sink, int64_t tail, int64_t cycle = 0) {
  SelectContext c;
  c.n_pages = n_pages;
  c.middle_begin = sink;
  c.middle_end = n_pages - tail;
  c.cycle = cycle;
  c.cycle_steps = 64;
  return c;
}

TEST(Policies, RecencyRandomAndFullChooseFromTheMiddle) {
  const KvCacheConfig c = small_config();
  std::vector<int32_t> out;
  make_policy("recency", c, 0)->select(ctx(20, 1, 2), 3, out);
  EXPECT_EQ(out, (std::vector<int32_t>{17, 16, 15}));
  out.clear();
  make_policy("full", c, 0)->select(ctx(20, 1, 2), 100, out);
  EXPECT_EQ(out.size(), 17u);
  auto rnd = make_policy("random", c, 42);
  std::vector<int32_t> a, b, a2;
  rnd->select(ctx(100, 1, 1, 0), 10, a);
  rnd->select(ctx(100, 1, 1, 1), 10, b);
  make_policy("random", c, 42)->select(ctx(100, 1, 1, 0), 10, a2);
  EXPECT_EQ(a, a2);  // seeded
  EXPECT_NE(a, b);   // redrawn each cycle
  EXPECT_EQ(std::set<int32_t>(a.begin(), a.end()).size(), 10u);
  for (int32_t p : a) EXPECT_TRUE(p >= 1 && p < 99);
}

// What a request must do for a policy comes from its traits, which every caller asks instead of
// comparing names: only full keeps every page, only oracle replays a trace, only lsa needs the
// indexer and may widen; an unknown name is refused.
TEST(Policies, TraitsSayWhatEachPolicyAsksOfItsRequest) {
  int keeps_all = 0, replays = 0, indexer = 0;
  for (const std::string& n : policy_names()) {
    const PolicyTraits t = policy_traits(n);
    keeps_all += t.keeps_all;
    replays += t.replays_trace;
    indexer += t.needs_indexer;
    EXPECT_EQ(t.keeps_all, n == "full") << n;
    EXPECT_EQ(t.replays_trace, n == "oracle") << n;
    EXPECT_EQ(t.needs_indexer, n == "lsa") << n;
    EXPECT_EQ(t.may_widen, n == "lsa") << n;
  }
  EXPECT_EQ(keeps_all + replays + indexer, 3);
  EXPECT_THROW(policy_traits("lru"), Error);
}

TEST(Policies, QuestFindsThePageWhoseKeysAlignWithTheQuery) {
  KvCacheConfig c = small_config(KvType::kF16, 1);
  c.n_kv_heads = 1;
  auto quest = make_policy("quest", c, 0);
  ASSERT_TRUE(quest->per_step());
  PagedKvCache kv(c);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  const int d = c.head_dim;
  for (int64_t t = 0; t < 10 * c.page_tokens; ++t) {
    std::vector<float> k(d), v(d);
    for (int i = 0; i < d; ++i) k[i] = nd(rng), v[i] = nd(rng);
    if (t == 6 * c.page_tokens + 3) k[5] = 4.0f;  // one strong key in page 6
    kv.append(0, 1, k.data(), v.data());
  }
  for (int32_t pg = 0; pg < 10; ++pg) quest->on_page(0, pg, static_cast<const uint8_t*>(kv.pages(0)[pg].k));
  EXPECT_EQ(quest->index_bytes(), 10u * d * 2 * sizeof(float));
  std::vector<float> q(2 * d, 0.0f);
  q[5] = 1.0f;       // head 0 looks for dim 5
  q[d + 9] = 0.1f;   // head 1 is vague
  AttentionParams p = kv.attention_params(2, 0.25f);
  std::vector<int32_t> out;
  quest->select_step(ctx(10, 1, 1), 1, p, q.data(), out);
  EXPECT_EQ(out, (std::vector<int32_t>{6}));
}

TEST(Policies, OracleReplaysTheHeaviestPagesOfTheNextWindow) {
  AttentionTrace t;
  const std::vector<int32_t> ids = {0, 1, 2, 3, 4, 5};
  for (int64_t s = 0; s < 128; ++s) {
    std::vector<float> mass(6, 0.01f);
    mass[s < 64 ? 2 : 4] = 0.9f;  // page 2 matters in the first cycle, page 4 in the second
    t.record(s, 0, ids, mass);
  }
  auto oracle = make_policy("oracle", small_config(), 0, &t);
  std::vector<int32_t> out;
  SelectContext c = ctx(6, 1, 1);
  oracle->select(c, 1, out);
  EXPECT_EQ(out, (std::vector<int32_t>{2}));
  out.clear();
  c.step = 64;
  oracle->select(c, 1, out);
  EXPECT_EQ(out, (std::vector<int32_t>{4}));
}

// Six pages per layer, 8-token cycles, one-page sink and tail (the Residency tests).
ResidencyOptions six_pages(const char* policy) {
  ResidencyOptions o;
  o.policy = policy;
  o.budget = KvBudget::parse("6pages");
  o.cycle = 8;
  o.sink_tokens = 8;
  o.tail_tokens = 8;
  return o;
}

// A policy's page metadata (quest's bounds here, lsa's index keys) is device memory from the
// moment a page completes: the footprint counts it during prefill, before any selection.
TEST(Residency, PageMetadataIsCountedFromPrefillOn) {
  KvCacheConfig c = small_config(KvType::kF32);
  const ResidencyOptions o = six_pages("quest");
  KvReserve reserve(host_backend(), c.page_bytes(), 6 * c.n_layers);
  RecallEngine recall(host_backend());
  TieredKvStore s(c, 6, reserve, recall);
  Residency res(s, make_policy(o.policy, c, 0), o);
  append_all(s, c, 0, 100);  // "prefill": 12 completed pages per layer, no selection yet
  auto same = make_policy("quest", c, 0);  // the same metadata, built independently
  for (int l = 0; l < c.n_layers; ++l)
    for (int32_t pg = 0; pg < s.completed_pages(l); ++pg) same->on_page(l, pg, s.mirror_page(l, pg));
  ASSERT_GT(same->index_bytes(), 0u);
  EXPECT_EQ(s.footprint().index_keys, same->index_bytes());
  EXPECT_EQ(s.peak().index_keys, same->index_bytes());
}

// The driver: sink and tail always resident, the policy's pages in between, the device within
// budget through whole cycles, selections every τ steps.
TEST(Residency, CyclesKeepSinkTailAndTheBudget) {
  KvCacheConfig c = small_config(KvType::kF32);
  const ResidencyOptions o = six_pages("recency");
  const int64_t budget = resolve_budget_pages(o, c, 200);
  ASSERT_EQ(budget, 6);
  KvReserve reserve(host_backend(), c.page_bytes(), budget * c.n_layers);
  RecallEngine recall(host_backend());
  TieredKvStore s(c, budget, reserve, recall);
  Residency res(s, make_policy(o.policy, c, 0), o);
  CpuBackend be(1);
  append_all(s, c, 0, 100);  // "prefill"
  const AttentionParams p = s.attention_params(4, 0.25f);
  for (int64_t step = 0; step < 60; ++step) {
    res.before_step(step, 60 - step);
    append_all(s, c, 100 + step, 1);
    const auto q = random_q(1, 4, c.head_dim, static_cast<uint32_t>(step));
    const int32_t pos = static_cast<int32_t>(100 + step);
    std::vector<float> out(q.size());
    for (int l = 0; l < c.n_layers; ++l) {
      s.attend(be, l, p, q.data(), &pos, 1, out.data());
      ASSERT_TRUE(test::all_finite(out.data(), out.size()));
      const auto sel = s.selected(l);
      EXPECT_TRUE(std::find(sel.begin(), sel.end(), 0) != sel.end()) << "sink missing";
      const int32_t newest = static_cast<int32_t>(s.completed_pages(l)) - 1;
      EXPECT_TRUE(std::find(sel.begin(), sel.end(), newest) != sel.end()) << "tail missing";
    }
    EXPECT_LE(s.footprint().device(), reserve.bytes_allocated());
  }
  EXPECT_EQ(res.cycles(), 60 / 8 + 1);
}

}  // namespace
}  // namespace flashmem

// The absent summary (memory/absent_summary.h): attention over the pages left off the device,
// made on the host once per selection and merged into attention over the resident pages.
// References: the float64 attention reference over every page (the first decode attention
// after a selection must equal full attention), and a store without the summary (bit-identical
// when nothing is absent).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "memory/absent_summary.h"
#include "memory/kv_cache.h"
#include "memory/residency.h"
#include "memory/tiered_kv.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/cpu_backend.h"
#include "test_util.h"

namespace flashmem {
namespace {

constexpr int kHeads = 4;         // query heads (GQA 2:1 over 2 kv heads)
constexpr float kScale = 0.25f;

CpuBackend& store_backend() {
  static CpuBackend be(1);
  return be;
}

KvCacheConfig cfg(KvType t = KvType::kF16, int layers = 2) {
  KvCacheConfig c;
  c.n_layers = layers;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.page_tokens = 8;
  c.max_tokens = 256;
  c.type = t;
  return c;
}

// Keys with a per-page offset along a random direction, so that some pages draw much more
// attention than others: leaving pages out changes the result measurably.
void append_random(KvStore& s, const KvCacheConfig& c, int64_t pos0, int64_t n, uint32_t seed = 1) {
  const int64_t row = int64_t{c.n_kv_heads} * c.head_dim;
  for (int l = 0; l < c.n_layers; ++l) {
    std::vector<float> k(n * row), v(n * row);
    std::mt19937 rng(seed * 7919u + static_cast<uint32_t>(l) * 104729u + static_cast<uint32_t>(pos0));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t t = 0; t < n; ++t) {
      const float boost = ((pos0 + t) / c.page_tokens) % 3 == 0 ? 1.5f : 0.0f;
      for (int64_t e = 0; e < row; ++e) {
        k[t * row + e] = nd(rng) + (e % 2 == 0 ? boost : 0.0f);
        v[t * row + e] = nd(rng);
      }
    }
    s.append(l, n, k.data(), v.data());
  }
}

std::vector<float> queries(int64_t m, int d, uint32_t seed) {
  std::vector<float> q(static_cast<size_t>(m) * kHeads * d);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (size_t i = 0; i < q.size(); ++i) q[i] = nd(rng) + ((i % 2 == 0) ? 0.5f : 0.0f);
  return q;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double mx = 0.0;
  for (size_t i = 0; i < a.size(); ++i) mx = std::max(mx, std::fabs(static_cast<double>(a[i]) - b[i]));
  return mx;
}

// The mirror's bytes of a completed page, as attention reads them.
KvPageRef mirror_view(const TieredKvStore& s, const KvCacheConfig& c, int layer, int32_t pg) {
  const uint8_t* b = s.mirror_page(layer, pg);
  return KvPageRef{b, b + c.page_bytes() / 2, pg * c.page_tokens, c.page_tokens};
}

// ---- AbsentSummary on its own -------------------------------------------------------------

// Resident attention (with lse) folded with the summary of the other pages equals attention
// over every page, for f16 and f32 pages and queries that see only part of the keys.
TEST(AbsentSummary, ResidentPlusSummaryEqualsFullAttention) {
  for (KvType t : {KvType::kF16, KvType::kF32}) {
    const KvCacheConfig c = cfg(t, 1);
    PagedKvCache kv(c);
    append_random(kv, c, 0, 160);  // 20 completed pages
    const auto all = kv.pages(0);
    ASSERT_EQ(all.size(), 20u);
    const std::vector<int32_t> selected = {0, 3, 7, 12, 19};
    std::vector<KvPageRef> resident, absent;
    for (int32_t pg = 0; pg < 20; ++pg)
      (std::binary_search(selected.begin(), selected.end(), pg) ? resident : absent).push_back(all[pg]);
    const AttentionParams p = kv.attention_params(kHeads, kScale);
    const int64_t m = 3, rows = m * kHeads;
    const int32_t pos[3] = {45, 150, 159};  // query 0 sees pages 0-5 only
    const auto q = queries(m, c.head_dim, 11);
    CpuBackend be(2);
    std::vector<float> out(q.size()), lse(rows), want(q.size()), want_lse(rows), ref(q.size());
    be.attention(p, q.data(), pos, m, resident, out.data(), lse.data());
    // Sanity: resident attention alone is far from the full result (the test can fail).
    cpu::attention_ref(p, q.data(), pos, m, all, ref.data());
    ASSERT_GT(test::rel_l2(out.data(), ref.data(), out.size()), 1e-2) << "absent pages barely matter";

    AbsentSummary sum(be, 1, 2);
    EXPECT_EQ(sum.device_bytes(), 0u);
    EXPECT_EQ(sum.refreshes(), 0);
    sum.refresh(0, p, q.data(), pos, m, absent, selected, 20);
    EXPECT_EQ(sum.refreshes(), 1);
    EXPECT_GE(sum.seconds(), 0.0);
    EXPECT_TRUE(std::isfinite(sum.seconds()));
    EXPECT_EQ(sum.device_bytes(), static_cast<uint64_t>(rows) * (c.head_dim + 1) * sizeof(float));
    sum.fold(0, rows, c.head_dim, out.data(), lse.data());

    ASSERT_TRUE(test::all_finite(out.data(), out.size()));
    ASSERT_TRUE(test::all_finite(lse.data(), lse.size()));
    const double rel = test::rel_l2(out.data(), ref.data(), out.size());
    EXPECT_LE(rel, 1e-5) << "type " << static_cast<int>(t);
    EXPECT_LE(max_abs_diff(out, ref), 1e-4) << "type " << static_cast<int>(t);
    // The merged lse is the log-sum-exp over every key.
    be.attention(p, q.data(), pos, m, all, want.data(), want_lse.data());
    for (int64_t r = 0; r < rows; ++r)
      EXPECT_NEAR(lse[r], want_lse[r], 1e-4 * std::max(1.0f, std::fabs(want_lse[r]))) << "row " << r;
  }
}

// Nothing absent: the summary is lse −inf and folding it leaves (out, lse) bit for bit.
TEST(AbsentSummary, AnEmptyAbsentSetLeavesTheOutputBitIdentical) {
  const KvCacheConfig c = cfg(KvType::kF16, 1);
  PagedKvCache kv(c);
  append_random(kv, c, 0, 80);
  const AttentionParams p = kv.attention_params(kHeads, kScale);
  const int64_t m = 2, rows = m * kHeads;
  const int32_t pos[2] = {70, 79};
  const auto q = queries(m, c.head_dim, 3);
  CpuBackend be(1);
  std::vector<float> out(q.size()), lse(rows);
  be.attention(p, q.data(), pos, m, kv.pages(0), out.data(), lse.data());
  const std::vector<float> out0 = out, lse0 = lse;
  AbsentSummary sum(be, 1);
  const std::vector<int32_t> every = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  sum.refresh(0, p, q.data(), pos, m, {}, every, 10);
  EXPECT_EQ(sum.refreshes(), 1);
  EXPECT_GT(sum.device_bytes(), 0u);  // still made (a −inf lse per row)
  sum.fold(0, rows, c.head_dim, out.data(), lse.data());
  EXPECT_EQ(std::memcmp(out.data(), out0.data(), out.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(lse.data(), lse0.data(), lse.size() * sizeof(float)), 0);
  EXPECT_FALSE(sum.stale(0, every, 10, rows));
}

// Every page absent (the resident part is empty: lse −inf): the fold yields the summary alone,
// which is full attention.
TEST(AbsentSummary, NoResidentPageGivesTheSummaryAlone) {
  const KvCacheConfig c = cfg(KvType::kF32, 1);
  PagedKvCache kv(c);
  append_random(kv, c, 0, 64);
  const AttentionParams p = kv.attention_params(kHeads, kScale);
  const int64_t m = 1, rows = kHeads;
  const int32_t pos = 63;
  const auto q = queries(m, c.head_dim, 8);
  CpuBackend be(1);
  std::vector<float> out(q.size(), 123.0f), lse(rows, -INFINITY), ref(q.size());
  AbsentSummary sum(be, 1);
  const auto all = kv.pages(0);
  sum.refresh(0, p, q.data(), &pos, m, all, {}, 8);
  sum.fold(0, rows, c.head_dim, out.data(), lse.data());
  cpu::attention_ref(p, q.data(), &pos, m, all, ref.data());
  ASSERT_TRUE(test::all_finite(out.data(), out.size()));
  EXPECT_LE(test::rel_l2(out.data(), ref.data(), out.size()), 1e-5);
  for (float x : lse) EXPECT_TRUE(std::isfinite(x));
}

TEST(AbsentSummary, StaleOnlyWhenTheSelectionAmongOldPagesOrTheRowsChange) {
  const KvCacheConfig c = cfg(KvType::kF16, 2);
  PagedKvCache kv(c);
  append_random(kv, c, 0, 160);
  const AttentionParams p = kv.attention_params(kHeads, kScale);
  const int64_t m = 1, rows = kHeads;
  const int32_t pos = 159;
  const auto q = queries(m, c.head_dim, 5);
  CpuBackend be(1);
  AbsentSummary sum(be, 2);
  const std::vector<int32_t> sel = {0, 4, 9, 15};
  EXPECT_TRUE(sum.stale(0, sel, 20, rows));  // none yet
  std::vector<KvPageRef> absent;
  for (int32_t pg = 0; pg < 20; ++pg)
    if (!std::binary_search(sel.begin(), sel.end(), pg)) absent.push_back(kv.pages(0)[pg]);
  sum.refresh(0, p, q.data(), &pos, m, absent, sel, 20);
  EXPECT_FALSE(sum.stale(0, sel, 20, rows));
  EXPECT_TRUE(sum.stale(1, sel, 20, rows)) << "layers are independent";
  EXPECT_TRUE(sum.stale(0, sel, 20, rows + kHeads)) << "another query shape";
  // Pages completed after the refresh (≥ 20) and selected leave the summary valid ...
  EXPECT_FALSE(sum.stale(0, std::vector<int32_t>{0, 4, 9, 15, 20}, 21, rows));
  EXPECT_FALSE(sum.stale(0, std::vector<int32_t>{0, 4, 9, 15, 20, 21, 22}, 23, rows));
  // ... one of them not selected is absent and not in it.
  EXPECT_TRUE(sum.stale(0, std::vector<int32_t>{0, 4, 9, 15, 21}, 22, rows)) << "a new page dropped";
  EXPECT_TRUE(sum.stale(0, std::vector<int32_t>{0, 4, 9, 15}, 21, rows)) << "a new page not selected";
  // Any change among the pages completed at the refresh makes it stale.
  EXPECT_TRUE(sum.stale(0, std::vector<int32_t>{0, 4, 10, 15}, 20, rows)) << "a page swapped";
  EXPECT_TRUE(sum.stale(0, std::vector<int32_t>{0, 4, 15}, 20, rows)) << "a page dropped";
  EXPECT_TRUE(sum.stale(0, std::vector<int32_t>{0, 4, 9, 15, 19}, 20, rows)) << "an absent page selected";
  EXPECT_TRUE(sum.stale(0, std::vector<int32_t>{0, 4, 9, 20}, 21, rows)) << "old page swapped for a new one";
  EXPECT_TRUE(sum.stale(0, std::vector<int32_t>{}, 20, rows));
  // A fold for rows it was not made for is refused.
  std::vector<float> out(2 * q.size()), lse(2 * rows);
  EXPECT_THROW(sum.fold(0, 2 * rows, c.head_dim, out.data(), lse.data()), Error);
  EXPECT_THROW(sum.fold(1, rows, c.head_dim, out.data(), lse.data()), Error);
  // A refresh for another query shape replaces the layer's buffers (not added to them).
  const uint64_t one = sum.device_bytes();
  const auto q2 = queries(2, c.head_dim, 6);
  const int32_t pos2[2] = {158, 159};
  sum.refresh(0, p, q2.data(), pos2, 2, absent, sel, 20);
  EXPECT_EQ(sum.device_bytes(), 2 * one);
  EXPECT_FALSE(sum.stale(0, sel, 20, 2 * rows));
  EXPECT_TRUE(sum.stale(0, sel, 20, rows));
  EXPECT_EQ(sum.refreshes(), 2);
}

// ---- in the tiered store -------------------------------------------------------------------

struct Rig {
  KvCacheConfig c;
  KvReserve reserve;
  RecallEngine recall;
  TieredKvStore s;
  Rig(const KvCacheConfig& cc, int64_t budget)
      : c(cc), reserve(store_backend(), cc.page_bytes(), budget * cc.n_layers), recall(store_backend()),
        s(cc, budget, reserve, recall) {}
};

// A 6-page budget over 20 completed pages: the first decode attention after a selection is
// full attention (the summary covers exactly the absent pages), later ones reuse the summary
// (no refresh) until the selection among the old pages changes; pages completed meanwhile do
// not trigger one. The summary's device bytes count as scratch.
TEST(AbsentSummary, TieredStoreFirstAttentionAfterASelectionIsFullAttention) {
  const KvCacheConfig c = cfg(KvType::kF16, 2);
  Rig with(c, 6), without(c, 6);
  PagedKvCache full(c);
  CpuBackend be(2);
  const AttentionParams p = full.attention_params(kHeads, kScale);
  int64_t n = 163;  // 20 completed pages + 3 tokens in the open page
  for (KvStore* s : {static_cast<KvStore*>(&with.s), static_cast<KvStore*>(&without.s), static_cast<KvStore*>(&full)})
    append_random(*s, c, 0, n);
  std::vector<std::vector<int32_t>> sel = {{0, 5, 11, 19}, {2, 3, 17}};
  with.s.select(sel);
  without.s.select(sel);
  with.s.enable_absent_summary(2);
  ASSERT_NE(with.s.absent_summary(), nullptr);
  EXPECT_EQ(without.s.absent_summary(), nullptr);
  EXPECT_EQ(with.s.footprint().scratch, 0u);  // nothing made yet
  const uint64_t per_layer = static_cast<uint64_t>(kHeads) * (c.head_dim + 1) * sizeof(float);

  auto step = [&](uint32_t seed, std::vector<std::vector<float>>& got, std::vector<std::vector<float>>& bare,
                  std::vector<std::vector<float>>& ref) {
    const auto q = queries(1, c.head_dim, seed);
    const int32_t pos = static_cast<int32_t>(n - 1);
    got.assign(c.n_layers, std::vector<float>(q.size()));
    bare = ref = got;
    for (int l = 0; l < c.n_layers; ++l) {
      with.s.attend(be, l, p, q.data(), &pos, 1, got[l].data());
      without.s.attend(be, l, p, q.data(), &pos, 1, bare[l].data());
      cpu::attention_ref(p, q.data(), &pos, 1, full.pages(l), ref[l].data());
      EXPECT_TRUE(test::all_finite(got[l].data(), got[l].size())) << "layer " << l;
    }
  };
  std::vector<std::vector<float>> got, bare, ref;
  step(21, got, bare, ref);
  EXPECT_EQ(with.s.absent_summary()->refreshes(), c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    EXPECT_LE(test::rel_l2(got[l].data(), ref[l].data(), got[l].size()), 1e-5) << "layer " << l;
    EXPECT_LE(max_abs_diff(got[l], ref[l]), 1e-4) << "layer " << l;
    // Without the summary the same selection is measurably off: the check above can fail.
    EXPECT_GT(test::rel_l2(bare[l].data(), ref[l].data(), bare[l].size()), 1e-2) << "layer " << l;
  }
  EXPECT_EQ(with.s.footprint().scratch, c.n_layers * per_layer);
  EXPECT_EQ(with.s.absent_summary()->device_bytes(), c.n_layers * per_layer);
  EXPECT_EQ(without.s.footprint().scratch, 0u);
  EXPECT_GE(with.s.peak().device(), with.s.footprint().device());

  // Same selection, a new query: the stale summary is reused (no refresh). The result is the
  // resident attention merged with the summary the first query made.
  const auto q1 = queries(1, c.head_dim, 21);
  const auto q2 = queries(1, c.head_dim, 22);
  const int32_t pos = static_cast<int32_t>(n - 1);
  step(22, got, bare, ref);
  EXPECT_EQ(with.s.absent_summary()->refreshes(), c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    std::vector<KvPageRef> resident, absent;
    std::vector<int32_t> ids = sel[l];
    for (int32_t pg = 0; pg < 20; ++pg)
      (std::binary_search(ids.begin(), ids.end(), pg) ? resident : absent).push_back(mirror_view(with.s, c, l, pg));
    resident.push_back(full.pages(l)[20]);  // the open page
    std::vector<float> want(q2.size()), lse(kHeads);
    be.attention(p, q2.data(), &pos, 1, resident, want.data(), lse.data());
    AbsentSummary own(be, 1, 2);
    own.refresh(0, p, q1.data(), &pos, 1, absent, ids, 20);
    own.fold(0, kHeads, c.head_dim, want.data(), lse.data());
    EXPECT_LE(test::rel_l2(got[l].data(), want.data(), got[l].size()), 1e-6) << "layer " << l;
    // ... which is no longer full attention for this query.
    EXPECT_GT(test::rel_l2(got[l].data(), ref[l].data(), got[l].size()), 1e-4) << "layer " << l;
  }

  // The open page completes (and joins the selection): no refresh.
  for (KvStore* s : {static_cast<KvStore*>(&with.s), static_cast<KvStore*>(&without.s), static_cast<KvStore*>(&full)})
    append_random(*s, c, n, 6, 2);
  n += 6;  // 169: page 20 completed, page 21 open with 1 token
  ASSERT_EQ(with.s.completed_pages(0), 21);
  EXPECT_EQ(with.s.selected(0).back(), 20);
  step(23, got, bare, ref);
  EXPECT_EQ(with.s.absent_summary()->refreshes(), c.n_layers);

  // A new selection: every layer refreshes once, and the first attention is exact again.
  sel = {{0, 1, 8, 20}, {6, 19, 20}};
  with.s.select(sel);
  without.s.select(sel);
  step(24, got, bare, ref);
  EXPECT_EQ(with.s.absent_summary()->refreshes(), 2 * c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    EXPECT_LE(test::rel_l2(got[l].data(), ref[l].data(), got[l].size()), 1e-5) << "layer " << l;
    EXPECT_GT(test::rel_l2(bare[l].data(), ref[l].data(), bare[l].size()), 1e-2) << "layer " << l;
  }
  // Changing one layer only refreshes that layer.
  with.s.select_layer(1, std::vector<int32_t>{6, 18, 20});
  step(25, got, bare, ref);
  EXPECT_EQ(with.s.absent_summary()->refreshes(), 2 * c.n_layers + 1);
  EXPECT_LE(test::rel_l2(got[1].data(), ref[1].data(), got[1].size()), 1e-5);
  EXPECT_EQ(with.s.footprint().scratch, c.n_layers * per_layer);  // same shape: buffers reused
}

// A page completed after the refresh is resident only while it stays selected. When a new
// selection keeps the old pages' selection but drops such a page, that page is absent and not
// in the summary: the summary must be remade, or attention silently misses the page.
TEST(AbsentSummary, DroppingAPageCompletedSinceTheRefreshMakesTheSummaryStale) {
  const KvCacheConfig c = cfg(KvType::kF16, 1);
  Rig r(c, 6);
  PagedKvCache full(c);
  append_random(r.s, c, 0, 160);
  append_random(full, c, 0, 160);  // 20 completed pages
  r.s.select(std::vector<std::vector<int32_t>>{{0, 5, 11, 19}});
  r.s.enable_absent_summary();
  CpuBackend be(1);
  const AttentionParams p = full.attention_params(kHeads, kScale);
  auto attend_at = [&](int32_t pos, uint32_t seed) {
    const auto q = queries(1, c.head_dim, seed);
    std::vector<float> got(q.size()), ref(q.size());
    r.s.attend(be, 0, p, q.data(), &pos, 1, got.data());
    cpu::attention_ref(p, q.data(), &pos, 1, full.pages(0), ref.data());
    EXPECT_TRUE(test::all_finite(got.data(), got.size()));
    return test::rel_l2(got.data(), ref.data(), got.size());
  };
  EXPECT_LE(attend_at(159, 31), 1e-5);
  ASSERT_EQ(r.s.absent_summary()->refreshes(), 1);
  // Pages 20 and 21 complete during the cycle (selected), then the next selection keeps the
  // old pages and page 21 but drops page 20.
  append_random(r.s, c, 160, 16, 5);
  append_random(full, c, 160, 16, 5);
  ASSERT_EQ(r.s.completed_pages(0), 22);
  r.s.select(std::vector<std::vector<int32_t>>{{0, 5, 11, 19, 21}});
  const auto now = r.s.selected(0);
  ASSERT_TRUE(std::find(now.begin(), now.end(), 20) == now.end());
  ASSERT_EQ(r.s.absent_summary()->refreshes(), 1);
  // The same query as the refresh: a reused summary would still be exact for the pages it
  // covers (all are visible from both positions), so any error is page 20's.
  EXPECT_LE(attend_at(175, 31), 1e-5) << "page 20 is neither attended nor summarised";
  EXPECT_EQ(r.s.absent_summary()->refreshes(), 2);
}

// Several queries at once (m > 1, e.g. speculative or chunked decode) take the same path.
TEST(AbsentSummary, TieredStoreSeveralQueriesAtOnce) {
  const KvCacheConfig c = cfg(KvType::kF32, 1);
  Rig r(c, 5);
  PagedKvCache full(c);
  append_random(r.s, c, 0, 120);
  append_random(full, c, 0, 120);  // 15 pages exactly: no open page
  r.s.select(std::vector<std::vector<int32_t>>{{1, 7, 14}});
  r.s.enable_absent_summary();
  CpuBackend be(1);
  const AttentionParams p = full.attention_params(kHeads, kScale);
  const int64_t m = 3;
  const int32_t pos[3] = {30, 100, 119};
  const auto q = queries(m, c.head_dim, 9);
  std::vector<float> got(q.size()), ref(q.size());
  r.s.attend(be, 0, p, q.data(), pos, m, got.data());
  cpu::attention_ref(p, q.data(), pos, m, full.pages(0), ref.data());
  ASSERT_TRUE(test::all_finite(got.data(), got.size()));
  EXPECT_LE(test::rel_l2(got.data(), ref.data(), got.size()), 1e-5);
  EXPECT_EQ(r.s.absent_summary()->refreshes(), 1);
  EXPECT_EQ(r.s.footprint().scratch, static_cast<uint64_t>(m * kHeads) * (c.head_dim + 1) * sizeof(float));
  // A different query count is another shape: refreshed, and exact again.
  const int32_t one = 119;
  std::vector<float> g1(kHeads * c.head_dim), r1(g1.size());
  r.s.attend(be, 0, p, q.data(), &one, 1, g1.data());
  cpu::attention_ref(p, q.data(), &one, 1, full.pages(0), r1.data());
  EXPECT_EQ(r.s.absent_summary()->refreshes(), 2);
  EXPECT_LE(test::rel_l2(g1.data(), r1.data(), g1.size()), 1e-5);
}

// Nothing resident at all (an empty selection, no open page): the resident attention sees no
// key (lse −inf, zero output) and the result is the summary alone, i.e. full attention.
TEST(AbsentSummary, TieredStoreWithNothingResident) {
  const KvCacheConfig c = cfg(KvType::kF16, 1);
  Rig r(c, 4);
  PagedKvCache full(c);
  append_random(r.s, c, 0, 64);
  append_random(full, c, 0, 64);  // 8 pages exactly
  r.s.select(std::vector<std::vector<int32_t>>{{}});
  r.s.enable_absent_summary();
  CpuBackend be(1);
  const AttentionParams p = full.attention_params(kHeads, kScale);
  const int32_t pos = 63;
  const auto q = queries(1, c.head_dim, 12);
  std::vector<float> got(q.size(), 7.0f), ref(q.size());
  r.s.attend(be, 0, p, q.data(), &pos, 1, got.data());
  cpu::attention_ref(p, q.data(), &pos, 1, full.pages(0), ref.data());
  ASSERT_TRUE(test::all_finite(got.data(), got.size()));
  EXPECT_LE(test::rel_l2(got.data(), ref.data(), got.size()), 1e-5);
  EXPECT_EQ(r.s.absent_summary()->refreshes(), 1);
}

// A CPU backend whose write-backs into alloc_host() memory land only at synchronize() (as a
// GPU's do); fresh host memory is 0xA5, which no page holds. A summary made from the mirror
// without waiting would read those bytes.
class LateWriteBacks : public CpuBackend {
 public:
  LateWriteBacks() : CpuBackend(1) {}
  void* alloc_host(size_t bytes) override {
    void* p = CpuBackend::alloc_host(bytes);
    std::memset(p, 0xA5, bytes);
    return p;
  }
  void free_host(void* p) noexcept override {
    deliver();
    CpuBackend::free_host(p);
  }
  void copy_pages(CopyDir dir, std::span<const PageCopy> copies, size_t bytes) override {
    if (dir == CopyDir::kBackendToHost) {
      for (const PageCopy& c : copies) late_.push_back({c.dst, std::vector<uint8_t>(c.src, c.src + bytes)});
      return;
    }
    deliver();
    CpuBackend::copy_pages(dir, copies, bytes);
  }
  void synchronize() override { deliver(); }
  size_t pending() const { return late_.size(); }

 private:
  void deliver() {
    for (auto& [dst, b] : late_) std::memcpy(dst, b.data(), b.size());
    late_.clear();
  }
  std::vector<std::pair<uint8_t*, std::vector<uint8_t>>> late_;
};

// The selection keeps only pages still in the reserve (no recall, so nothing else waits for
// the write-backs): the refresh must wait for them before it reads the absent pages.
TEST(AbsentSummary, TieredStoreWaitsForWriteBacksBeforeReadingTheMirror) {
  LateWriteBacks late;
  const KvCacheConfig c = cfg(KvType::kF16, 1);
  KvReserve reserve(late, c.page_bytes(), 6);
  RecallEngine recall(late);
  TieredKvStore s(c, 6, reserve, recall);
  PagedKvCache full(c);
  append_random(s, c, 0, 100);
  append_random(full, c, 0, 100);  // 12 completed pages, 4 tokens open
  std::vector<int32_t> keep;
  for (int32_t pg = 11; pg >= 0 && keep.size() < 3; --pg)
    if (s.resident(0, pg)) keep.push_back(pg);
  ASSERT_EQ(keep.size(), 3u);
  s.select(std::vector<std::vector<int32_t>>{keep});
  EXPECT_EQ(recall.stats().pages, 0);  // nothing recalled
  ASSERT_GT(late.pending(), 0u) << "the write-backs already landed: the test checks nothing";
  s.enable_absent_summary();
  CpuBackend be(1);
  const AttentionParams p = full.attention_params(kHeads, kScale);
  const int32_t pos = 99;
  const auto q = queries(1, c.head_dim, 13);
  std::vector<float> got(q.size()), ref(q.size());
  s.attend(be, 0, p, q.data(), &pos, 1, got.data());
  cpu::attention_ref(p, q.data(), &pos, 1, full.pages(0), ref.data());
  ASSERT_TRUE(test::all_finite(got.data(), got.size()));
  EXPECT_LE(test::rel_l2(got.data(), ref.data(), got.size()), 1e-5);
  EXPECT_EQ(late.pending(), 0u);
}

// Every completed page selected (a full budget): nothing is absent, no summary is made and the
// output is bit-identical to the store without it, step after step.
TEST(AbsentSummary, TieredStoreFullBudgetIsBitIdenticalWithoutASummary) {
  const KvCacheConfig c = cfg(KvType::kF16, 2);
  const int64_t budget = c.max_tokens / c.page_tokens;
  Rig with(c, budget), without(c, budget);
  append_random(with.s, c, 0, 100);
  append_random(without.s, c, 0, 100);
  std::vector<std::vector<int32_t>> all(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l)
    for (int32_t pg = 0; pg < with.s.completed_pages(l); ++pg) all[l].push_back(pg);
  with.s.select(all);
  without.s.select(all);
  with.s.enable_absent_summary();
  CpuBackend be(2);
  const AttentionParams p = with.s.attention_params(kHeads, kScale);
  for (int step = 0; step < 12; ++step) {
    append_random(with.s, c, 100 + step, 1, 3);
    append_random(without.s, c, 100 + step, 1, 3);
    const auto q = queries(1, c.head_dim, 40 + step);
    const int32_t pos = 100 + step;
    for (int l = 0; l < c.n_layers; ++l) {
      std::vector<float> got(q.size()), want(q.size());
      with.s.attend(be, l, p, q.data(), &pos, 1, got.data());
      without.s.attend(be, l, p, q.data(), &pos, 1, want.data());
      ASSERT_TRUE(test::all_finite(got.data(), got.size()));
      ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "step " << step;
    }
  }
  EXPECT_EQ(with.s.absent_summary()->refreshes(), 0);
  EXPECT_EQ(with.s.footprint().scratch, 0u);
  EXPECT_EQ(with.s.footprint().device(), without.s.footprint().device());
}

// Driven by Residency through whole cycles (recency, 8-step cycles): at the first step of
// every cycle each layer refreshes once and attention equals full attention; within a cycle
// no refresh happens; the device stays within the reserve plus the summary.
TEST(AbsentSummary, ResidencyCyclesRefreshOncePerLayerAndSelection) {
  const KvCacheConfig c = cfg(KvType::kF16, 2);
  ResidencyOptions o;
  o.policy = "recency";
  o.budget = KvBudget::parse("6pages");
  o.cycle = 8;
  o.sink_tokens = 8;
  o.tail_tokens = 8;
  o.absent_summary = true;
  const int64_t budget = resolve_budget_pages(o, c, 200);
  ASSERT_EQ(budget, 6);
  Rig r(c, budget);
  PagedKvCache full(c);
  Residency res(r.s, make_policy(o.policy, c, 0), o);
  r.s.enable_absent_summary();
  append_random(r.s, c, 0, 100);
  append_random(full, c, 0, 100);
  CpuBackend be(1);
  const AttentionParams p = full.attention_params(kHeads, kScale);
  int64_t cycles_seen = 0;
  for (int64_t step = 0; step < 48; ++step) {
    res.before_step(step, 48 - step);
    append_random(r.s, c, 100 + step, 1, 4);
    append_random(full, c, 100 + step, 1, 4);
    const auto q = queries(1, c.head_dim, static_cast<uint32_t>(100 + step));
    const int32_t pos = static_cast<int32_t>(100 + step);
    const int64_t before = r.s.absent_summary()->refreshes();
    for (int l = 0; l < c.n_layers; ++l) {
      std::vector<float> got(q.size()), ref(q.size());
      r.s.attend(be, l, p, q.data(), &pos, 1, got.data());
      ASSERT_TRUE(test::all_finite(got.data(), got.size())) << "step " << step;
      if (step % o.cycle == 0) {
        cpu::attention_ref(p, q.data(), &pos, 1, full.pages(l), ref.data());
        EXPECT_LE(test::rel_l2(got.data(), ref.data(), got.size()), 1e-5) << "step " << step << " layer " << l;
      }
    }
    const int64_t made = r.s.absent_summary()->refreshes() - before;
    if (step % o.cycle == 0) {
      ++cycles_seen;
      EXPECT_EQ(made, c.n_layers) << "step " << step;
    } else {
      EXPECT_EQ(made, 0) << "step " << step;
    }
    EXPECT_LE(r.s.footprint().device(),
              r.reserve.bytes_allocated() + r.s.absent_summary()->device_bytes());
  }
  EXPECT_EQ(res.cycles(), cycles_seen);
  EXPECT_EQ(r.s.absent_summary()->refreshes(), cycles_seen * c.n_layers);
}

}  // namespace
}  // namespace flashmem

// CPU kernels against plain references: matmul over every supported weight type, attention
// (decode and prefill schedules) over paged f32/f16 KV, norms, RoPE and the thread pool.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/quant.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "memory/kv_cache.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/elementwise.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/matvec_q8.h"
#include "test_util.h"

namespace flashmem {
namespace {

// Random but valid weight data: payload bytes are random, scale fields are finite halves.
std::vector<uint8_t> random_weights(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t rb = ggml_row_bytes(type, static_cast<uint64_t>(cols));
  std::vector<uint8_t> buf(rb * rows);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> val(-1.0f, 1.0f), scl(0.001f, 0.05f);
  for (auto& b : buf) b = static_cast<uint8_t>(byte(rng));
  auto put16 = [](uint8_t* at, uint16_t v) { std::memcpy(at, &v, 2); };
  const int64_t n = rows * cols;
  switch (type) {
    case GgmlType::F32:
      for (int64_t i = 0; i < n; ++i) { float f = val(rng); std::memcpy(buf.data() + 4 * i, &f, 4); }
      break;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) put16(buf.data() + 2 * i, fp32_to_fp16(val(rng)));
      break;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) { float f = val(rng); uint32_t u; std::memcpy(&u, &f, 4); put16(buf.data() + 2 * i, static_cast<uint16_t>(u >> 16)); }
      break;
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < n / 32; ++b) put16(buf.data() + b * 34, fp32_to_fp16(scl(rng)));
      break;
    case GgmlType::Q4_0:
      for (int64_t b = 0; b < n / 32; ++b) put16(buf.data() + b * 18, fp32_to_fp16(scl(rng)));
      break;
    case GgmlType::Q4_1:
      for (int64_t b = 0; b < n / 32; ++b) {
        put16(buf.data() + b * 20, fp32_to_fp16(scl(rng)));
        put16(buf.data() + b * 20 + 2, fp32_to_fp16(-scl(rng) * 8));
      }
      break;
    case GgmlType::Q4_K:
      for (int64_t b = 0; b < n / 256; ++b) {
        put16(buf.data() + b * 144, fp32_to_fp16(scl(rng)));
        put16(buf.data() + b * 144 + 2, fp32_to_fp16(scl(rng)));
      }
      break;
    case GgmlType::Q6_K:
      for (int64_t b = 0; b < n / 256; ++b) put16(buf.data() + b * 210 + 208, fp32_to_fp16(scl(rng) * 0.1f));
      break;
    default: ADD_FAILURE() << "no generator for type"; break;
  }
  return buf;
}

std::vector<float> random_vec(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

class MatmulTypes : public ::testing::TestWithParam<GgmlType> {};

TEST_P(MatmulTypes, FastMatchesReferenceOverAwkwardSizes) {
  const GgmlType type = GetParam();
  const int64_t blk = ggml_traits(type).block_elems;
  std::mt19937 rng(1234);
  ThreadPool pool(2);
  for (int64_t rows : {1, 3, 64, 129}) {
    for (int64_t cols : {blk, 2 * blk, 256 * ((blk + 255) / 256) * 3}) {
      auto data = random_weights(type, rows, cols, rng);
      WeightMatrix w{type, rows, cols, ggml_row_bytes(type, cols), data.data(), "w"};
      for (int64_t m : {1, 2, 3, 9, 40}) {
        auto x = random_vec(m * cols, rng);
        std::vector<float> y(m * rows), ref(m * rows);
        cpu::matmul(pool, w, x.data(), m, y.data());
        cpu::matmul_ref(w, x.data(), m, ref.data());
        ASSERT_TRUE(test::all_finite(y.data(), y.size()));
        EXPECT_LT(test::rel_l2(y.data(), ref.data(), y.size()), 1e-5)
            << ggml_type_name(type) << " rows " << rows << " cols " << cols << " m " << m;
      }
      // The fused dot of one row against float64 math over the dequantised row.
      auto x = random_vec(cols, rng);
      const float fast = cpu::dot_row(type, data.data(), x.data(), cols);
      const float ref = cpu::dot_row_ref(type, data.data(), x.data(), cols);
      EXPECT_NEAR(fast, ref, 1e-4 * (1.0 + std::fabs(ref)));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulTypes,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16,
                                           GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1,
                                           GgmlType::Q4_K, GgmlType::Q6_K),
                         [](const auto& pinfo) { return std::string(ggml_type_name(pinfo.param)); });

// 8-bit activations: the fast quantiser equals its scalar reference bit for bit, and every
// value is within half a step of the input.
TEST(ActQ8, QuantiserMatchesReferenceAndRoundsToHalfAStep) {
  std::mt19937 rng(77);
  for (int64_t n : {32, 64, 576, 1536}) {
    auto x = random_vec(n, rng, -3.0f, 3.0f);
    std::fill(x.begin(), x.begin() + 32, 0.0f);                    // an all-zero block: d = 0
    if (n > 64) { x[40] = 1e6f; x[41] = -1e6f; x[70] = 0.5f; x[71] = -0.5f; }  // extremes
    std::vector<cpu::ActQ8Block> fast(n / 32), ref(n / 32);
    cpu::quantize_act_q8(x.data(), n, fast.data());
    cpu::quantize_act_q8_ref(x.data(), n, ref.data());
    for (int64_t b = 0; b < n / 32; ++b) {
      ASSERT_EQ(std::memcmp(&fast[b], &ref[b], sizeof(cpu::ActQ8Block)), 0) << "block " << b << " of " << n;
      ASSERT_TRUE(std::isfinite(fast[b].d) && std::isfinite(fast[b].s));
      int sum = 0;
      for (int j = 0; j < 32; ++j) {
        const double err = std::fabs(static_cast<double>(fast[b].d) * fast[b].q[j] - x[b * 32 + j]);
        ASSERT_LE(err, 0.5 * fast[b].d * (1 + 1e-5)) << "block " << b << " value " << j;
        ASSERT_GE(fast[b].q[j], -127);
        sum += fast[b].q[j];
      }
      EXPECT_FLOAT_EQ(fast[b].s, fast[b].d * static_cast<float>(sum));
    }
    EXPECT_EQ(fast[0].d, 0.0f);
  }
}

// The q8 dot products of Q4_0 / Q4_1 / Q8_0 rows: the fast kernel (four rows at a time and the
// tail) against the scalar reference, and both against float64 math on the unrounded
// activations within the bound the rounding allows: Σ_blocks d_x/2 · Σ|w|.
class DotQ8Types : public ::testing::TestWithParam<GgmlType> {};

TEST_P(DotQ8Types, FastMatchesReferenceAndFloat64WithinTheRoundingBound) {
  const GgmlType type = GetParam();
  ASSERT_TRUE(cpu::q8_dot_supported(type));
  std::mt19937 rng(4321);
  // 13 and 29: groups of four that prefetch the rows ahead, then groups that do not, then single rows.
  for (int64_t rows : {1, 3, 4, 7, 9, 13, 29}) {
    for (int64_t cols : {32, 64, 576, 1536}) {
      const size_t rb = ggml_row_bytes(type, cols);
      auto data = random_weights(type, rows, cols, rng);
      auto x = random_vec(cols, rng, -2.0f, 2.0f);
      std::vector<cpu::ActQ8Block> xq(cols / 32);
      cpu::quantize_act_q8(x.data(), cols, xq.data());
      std::vector<float> fast(rows);
      cpu::dot_q8_rows(type, data.data(), rb, static_cast<int>(rows), xq.data(), cols / 32, fast.data());
      std::vector<float> w(cols);
      for (int64_t r = 0; r < rows; ++r) {
        const float ref = cpu::dot_q8_ref(type, data.data() + r * rb, xq.data(), cols / 32);
        dequantize_row_ref(type, data.data() + r * rb, w.data(), cols);
        double exact = 0, abs_sum = 0, bound = 0;
        for (int64_t j = 0; j < cols; ++j) {
          exact += static_cast<double>(w[j]) * x[j];
          abs_sum += std::fabs(static_cast<double>(w[j]) * x[j]);
          bound += std::fabs(w[j]) * 0.5 * xq[j / 32].d;
        }
        ASSERT_TRUE(std::isfinite(fast[r])) << "row " << r;
        EXPECT_NEAR(fast[r], ref, 1e-5 * (abs_sum + bound) + 1e-6) << "rows " << rows << " cols " << cols << " row " << r;
        EXPECT_NEAR(ref, exact, bound * (1 + 1e-4) + 1e-5 * abs_sum + 1e-6) << "cols " << cols << " row " << r;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Q8Kernels, DotQ8Types,
                         ::testing::Values(GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1),
                         [](const auto& pinfo) { return std::string(ggml_type_name(pinfo.param)); });

// matmul with CpuDot::kQ8: decode-sized products (m = 1, 2) take the q8 kernels for the types
// that have them (results equal the q8 reference per row) and stay f32 otherwise.
TEST(ActQ8, DecodeMatmulUsesQ8KernelsOnlyWhereTheyExist) {
  std::mt19937 rng(99);
  ThreadPool pool(2);
  const int64_t rows = 300, cols = 576;
  for (GgmlType type : {GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16}) {
    auto data = random_weights(type, rows, cols, rng);
    WeightMatrix w{type, rows, cols, ggml_row_bytes(type, cols), data.data(), "w"};
    for (int64_t m : {1, 2}) {
      auto x = random_vec(m * cols, rng);
      std::vector<float> y(m * rows), f32(m * rows);
      cpu::matmul(pool, w, x.data(), m, y.data(), CpuDot::kQ8);
      cpu::matmul(pool, w, x.data(), m, f32.data(), CpuDot::kF32);
      ASSERT_TRUE(test::all_finite(y.data(), y.size()));
      if (!cpu::q8_dot_supported(type)) {
        EXPECT_EQ(std::memcmp(y.data(), f32.data(), y.size() * 4), 0) << ggml_type_name(type);
        continue;
      }
      std::vector<cpu::ActQ8Block> xq(cols / 32);
      for (int64_t i = 0; i < m; ++i) {
        cpu::quantize_act_q8(x.data() + i * cols, cols, xq.data());
        for (int64_t r = 0; r < rows; ++r) {
          const float ref = cpu::dot_q8_ref(type, data.data() + r * w.row_bytes, xq.data(), cols / 32);
          ASSERT_NEAR(y[i * rows + r], ref, 1e-4 * (1 + std::fabs(ref))) << ggml_type_name(type) << " m " << m;
        }
      }
      // Not the f32 result: the q8 path really ran (and differs by rounding only).
      EXPECT_NE(std::memcmp(y.data(), f32.data(), y.size() * 4), 0);
      EXPECT_LT(test::rel_l2(y.data(), f32.data(), y.size()), 5e-2);
    }
  }
}

// matmul_ranges (the CPU's decode SwiGLU and residual add, done in the products' tasks): the
// same bits as the products by matmul_n followed by the elementwise step over everything, for
// 1 to 4 threads (other task ranges), both dot kinds and decode row counts.
TEST(Matmul, RangesWithTheirEpilogueEqualProductsThenElementwise) {
  std::mt19937 rng(7);
  const int64_t rows = 1536, cols = 576;
  auto gd = random_weights(GgmlType::Q4_1, rows, cols, rng), ud = random_weights(GgmlType::Q4_1, rows, cols, rng);
  const WeightMatrix gate{GgmlType::Q4_1, rows, cols, ggml_row_bytes(GgmlType::Q4_1, cols), gd.data(), "gate"};
  const WeightMatrix up{GgmlType::Q4_1, rows, cols, gate.row_bytes, ud.data(), "up"};
  for (int threads : {1, 2, 3, 4})
    for (CpuDot dot : {CpuDot::kQ8, CpuDot::kF32})
      for (int64_t m : {1, 3, 16}) {
        ThreadPool pool(threads);
        const auto x = random_vec(m * cols, rng);
        const WeightMatrix* ws[2] = {&gate, &up};
        std::vector<float> g0(m * rows), u0(m * rows), g1(m * rows), u1(m * rows);
        float* ys0[2] = {g0.data(), u0.data()};
        float* ys1[2] = {g1.data(), u1.data()};
        cpu::matmul_n(pool, ws, x.data(), m, ys0, dot);
        cpu::swiglu(g0.data(), u0.data(), m * rows, g0.data());
        std::atomic<int64_t> covered{0};
        cpu::matmul_ranges(pool, ws, x.data(), m, ys1, dot, [&](int64_t r0, int64_t r1) {
          for (int64_t i = 0; i < m; ++i) cpu::swiglu(&g1[i * rows + r0], &u1[i * rows + r0], r1 - r0, &g1[i * rows + r0]);
          covered += r1 - r0;
        });
        ASSERT_TRUE(test::all_finite(g1.data(), g1.size()));
        EXPECT_EQ(std::memcmp(g0.data(), g1.data(), g0.size() * 4), 0) << threads << " threads, m " << m;
        EXPECT_EQ(std::memcmp(u0.data(), u1.data(), u0.size() * 4), 0) << threads << " threads, m " << m;
        EXPECT_EQ(covered.load(), rows);  // every row's epilogue ran once
      }
}

struct AttnCase {
  int64_t n_keys;
  int64_t m;
  KvType kv;
  int page_tokens;
};

class AttentionCases : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionCases, MatchesDoubleReference) {
  const AttnCase c = GetParam();
  const int n_heads = 6, n_kv = 2, hd = 64;
  std::mt19937 rng(static_cast<unsigned>(c.n_keys * 31 + c.m));
  PagedKvCache kv(KvCacheConfig{1, n_kv, hd, c.page_tokens, c.n_keys, c.kv});
  const auto k = random_vec(c.n_keys * n_kv * hd, rng, -2.0f, 2.0f);
  const auto v = random_vec(c.n_keys * n_kv * hd, rng);
  kv.append(0, c.n_keys, k.data(), v.data());
  const auto q = random_vec(c.m * n_heads * hd, rng, -2.0f, 2.0f);
  std::vector<int32_t> pos(c.m);
  for (int64_t i = 0; i < c.m; ++i) pos[i] = static_cast<int32_t>(c.n_keys - c.m + i);  // causal tail
  const AttentionParams p = kv.attention_params(n_heads, 1.0f / 8.0f);
  std::vector<float> out(q.size()), ref(q.size());
  ThreadPool pool(2);
  cpu::attention(pool, p, q.data(), pos.data(), c.m, kv.pages(0), out.data());
  cpu::attention_ref(p, q.data(), pos.data(), c.m, kv.pages(0), ref.data());
  ASSERT_TRUE(test::all_finite(out.data(), out.size()));
  EXPECT_LT(test::rel_l2(out.data(), ref.data(), out.size()), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, AttentionCases,
    ::testing::Values(AttnCase{1, 1, KvType::kF32, 64}, AttnCase{3, 1, KvType::kF32, 64},
                      AttnCase{63, 1, KvType::kF16, 64}, AttnCase{64, 2, KvType::kF32, 64},
                      AttnCase{65, 1, KvType::kF16, 64}, AttnCase{129, 3, KvType::kF32, 16},
                      AttnCase{257, 1, KvType::kF16, 64}, AttnCase{300, 5, KvType::kF32, 64},
                      AttnCase{300, 40, KvType::kF16, 64}, AttnCase{517, 517, KvType::kF32, 64},
                      AttnCase{1000, 1, KvType::kF32, 7}, AttnCase{2049, 9, KvType::kF16, 64},
                      AttnCase{1, 1, KvType::kQ8, 16}, AttnCase{65, 1, KvType::kQ8, 64},
                      AttnCase{129, 3, KvType::kQ8, 16}, AttnCase{300, 40, KvType::kQ8, 64},
                      AttnCase{1000, 1, KvType::kQ8, 7}, AttnCase{517, 517, KvType::kQ8, 16}));

struct MassCase {
  int64_t n_keys;
  int32_t pos;
  KvType kv;
  int page_tokens;
  int chunk_tokens;
  int skip_page;  // a page left out of the set attention reads (−1: none)
};

class ChunkMassCases : public ::testing::TestWithParam<MassCase> {};

// Per-chunk attention mass against float64 math on the keys as appended (not via the pages).
TEST_P(ChunkMassCases, MatchesDoubleReference) {
  const MassCase c = GetParam();
  const int n_heads = 6, n_kv = 2, hd = 64, rep = n_heads / n_kv;
  std::mt19937 rng(static_cast<unsigned>(c.n_keys * 7 + c.pos));
  PagedKvCache kv(KvCacheConfig{1, n_kv, hd, c.page_tokens, c.n_keys, c.kv});
  auto k = random_vec(c.n_keys * n_kv * hd, rng, -2.0f, 2.0f);
  const auto v = random_vec(c.n_keys * n_kv * hd, rng);
  kv.append(0, c.n_keys, k.data(), v.data());
  if (c.kv == KvType::kF16)
    for (float& x : k) x = fp16_to_fp32(fp32_to_fp16(x));
  if (c.kv == KvType::kQ8)  // the values the page holds: round(x·127/max|x|)·max|x|/127 per head vector
    for (size_t at = 0; at < k.size(); at += hd) {
      float amax = 0.0f;
      for (int i = 0; i < hd; ++i) amax = std::max(amax, std::fabs(k[at + i]));
      const float inv = 127.0f / amax, sc = amax / 127.0f;
      for (int i = 0; i < hd; ++i) k[at + i] = std::nearbyint(k[at + i] * inv) * sc;
    }
  const auto q = random_vec(n_heads * hd, rng, -2.0f, 2.0f);
  std::vector<KvPageRef> pages;
  for (int i = 0; i < static_cast<int>(kv.pages(0).size()); ++i)
    if (i != c.skip_page) pages.push_back(kv.pages(0)[i]);
  const int64_t n_chunks = (c.n_keys + c.chunk_tokens - 1) / c.chunk_tokens;
  const AttentionParams p = kv.attention_params(n_heads, 1.0f / 8.0f);
  std::vector<float> mass(n_heads * n_chunks, -1.0f);
  ThreadPool pool(2);
  cpu::chunk_mass(pool, p, q.data(), c.pos, pages, c.chunk_tokens, n_chunks, mass.data());
  ASSERT_TRUE(test::all_finite(mass.data(), mass.size()));
  for (int h = 0; h < n_heads; ++h) {
    std::vector<double> s(c.n_keys, -INFINITY);
    double mx = -INFINITY;
    for (int64_t t = 0; t <= c.pos && t < c.n_keys; ++t) {
      if (t / c.page_tokens == c.skip_page) continue;
      double dot = 0.0;
      for (int d = 0; d < hd; ++d) dot += static_cast<double>(q[h * hd + d]) * k[(t * n_kv + h / rep) * hd + d];
      s[t] = dot / 8.0;
      mx = std::max(mx, s[t]);
    }
    double sum = 0.0;
    for (double x : s) sum += std::exp(x - mx);
    std::vector<double> want(n_chunks, 0.0);
    for (int64_t t = 0; t < c.n_keys; ++t) want[t / c.chunk_tokens] += std::exp(s[t] - mx) / sum;
    double total = 0.0;
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      EXPECT_NEAR(mass[h * n_chunks + ch], want[ch], 2e-6) << "head " << h << " chunk " << ch;
      total += mass[h * n_chunks + ch];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, ChunkMassCases,
    ::testing::Values(MassCase{1, 0, KvType::kF32, 16, 16, -1}, MassCase{300, 299, KvType::kF16, 16, 16, -1},
                      MassCase{300, 250, KvType::kF32, 64, 16, -1}, MassCase{300, 299, KvType::kF16, 64, 64, 1},
                      MassCase{1000, 777, KvType::kF16, 64, 8, 0}, MassCase{129, 128, KvType::kF32, 16, 4, 3},
                      MassCase{300, 299, KvType::kQ8, 16, 16, -1}, MassCase{1000, 777, KvType::kQ8, 64, 8, 2}));

// q8 KV against float64 math on the unquantised vectors: each value within half a step of its
// vector's scale, the extremes exact, zero and NaN vectors kept apart.
TEST(KvQ8, QuantisesEachHeadVectorWithinHalfAStep) {
  std::mt19937 rng(5);
  for (int n : {1, 7, 64, 128}) {
    for (float range : {1e-30f, 1e-3f, 1.0f, 7e4f, 1e38f}) {
      auto x = random_vec(n, rng, -range, range);
      std::vector<int8_t> q(2 * n, 99);
      const float s = cpu::quantize_q8(x.data(), n, q.data(), 2);  // stride 2: every other byte
      double amax = 0.0;
      for (float v : x) amax = std::max(amax, std::fabs(static_cast<double>(v)));
      ASSERT_NEAR(s, amax / 127.0, 1e-6 * amax / 127.0) << n << " " << range;
      bool extreme = false;
      for (int i = 0; i < n; ++i) {
        ASSERT_EQ(q[2 * i + 1], 99) << "wrote outside the stride";
        ASSERT_GE(q[2 * i], -127);
        EXPECT_LE(std::fabs(q[2 * i] * static_cast<double>(s) - x[i]), 0.5 * s * (1 + 1e-5)) << n << " " << range;
        extreme = extreme || std::abs(q[2 * i]) == 127;
      }
      EXPECT_TRUE(extreme) << "the largest value maps to ±127";
    }
  }
  std::vector<float> zero(64, 0.0f), bad(64, 1.0f);
  std::vector<int8_t> q(64, 5);
  EXPECT_EQ(cpu::quantize_q8(zero.data(), 64, q.data(), 1), 0.0f);
  EXPECT_TRUE(std::all_of(q.begin(), q.end(), [](int8_t v) { return v == 0; }));
  bad[17] = NAN;
  EXPECT_TRUE(std::isnan(cpu::quantize_q8(bad.data(), 64, q.data(), 1)));
  bad[17] = INFINITY;
  EXPECT_TRUE(std::isnan(cpu::quantize_q8(bad.data(), 64, q.data(), 1)));
}

// What q8 costs attention: outputs over q8 pages against float64 attention over the f32 keys
// and values they came from (MatchesDoubleReference checks the kernels on the stored values).
TEST(KvQ8, AttentionStaysCloseToUnquantisedAttention) {
  const int n_heads = 6, n_kv = 2, hd = 64, n_keys = 700, m = 3;
  std::mt19937 rng(17);
  const auto k = random_vec(n_keys * n_kv * hd, rng, -2.0f, 2.0f);
  const auto v = random_vec(n_keys * n_kv * hd, rng);
  PagedKvCache exact(KvCacheConfig{1, n_kv, hd, 16, n_keys, KvType::kF32});
  PagedKvCache q8(KvCacheConfig{1, n_kv, hd, 16, n_keys, KvType::kQ8});
  exact.append(0, n_keys, k.data(), v.data());
  q8.append(0, n_keys, k.data(), v.data());
  EXPECT_LT(q8.page_bytes() * 1.0, 0.27 * exact.page_bytes());  // 68 B per vector against f32's 256
  const auto q = random_vec(m * n_heads * hd, rng, -2.0f, 2.0f);
  const std::vector<int32_t> pos{n_keys - 300, n_keys - 2, n_keys - 1};
  std::vector<float> want(q.size()), got(q.size());
  ThreadPool pool(2);
  cpu::attention_ref(exact.attention_params(n_heads, 0.125f), q.data(), pos.data(), m, exact.pages(0), want.data());
  cpu::attention(pool, q8.attention_params(n_heads, 0.125f), q.data(), pos.data(), m, q8.pages(0), got.data());
  ASSERT_TRUE(test::all_finite(got.data(), got.size()));
  const double err = test::rel_l2(got.data(), want.data(), got.size());
  EXPECT_LT(err, 2e-2);
  EXPECT_GT(err, 1e-5);  // it is quantised: not the f32 result
}

TEST(Attention, ChunkMassRefusesBadChunking) {
  PagedKvCache kv(KvCacheConfig{1, 1, 64, 16, 64, KvType::kF32});
  std::vector<float> k(64 * 64, 0.5f), q(64, 1.0f), mass(16);
  kv.append(0, 64, k.data(), k.data());
  const AttentionParams p = kv.attention_params(1, 0.125f);
  ThreadPool pool(1);
  // 12-token chunks do not tile 16-token pages; 2 chunks cannot hold position 63.
  EXPECT_THROW(cpu::chunk_mass(pool, p, q.data(), 63, kv.pages(0), 12, 16, mass.data()), Error);
  EXPECT_THROW(cpu::chunk_mass(pool, p, q.data(), 63, kv.pages(0), 16, 2, mass.data()), Error);
}

TEST(Attention, MergeOfSplitsEqualsWhole) {
  // Attend to keys {0..9} whole, and as {0..3} ∪ {4..9} merged.
  std::mt19937 rng(7);
  const int d = 16;
  auto s = random_vec(10, rng, -3, 3);
  auto v = random_vec(10 * d, rng);
  auto partial = [&](int b, int e, std::vector<float>& o) {
    float m = -INFINITY;
    for (int j = b; j < e; ++j) m = std::max(m, s[j]);
    float l = 0;
    o.assign(d, 0.0f);
    for (int j = b; j < e; ++j) {
      const float w = std::exp(s[j] - m);
      l += w;
      for (int c = 0; c < d; ++c) o[c] += w * v[j * d + c];
    }
    return std::pair<float, float>{m, l};
  };
  std::vector<float> whole, a, b;
  auto [mw, lw] = partial(0, 10, whole);
  auto [ma, la] = partial(0, 4, a);
  auto [mb, lb] = partial(4, 10, b);
  cpu::AttnState sa{ma, la, a.data()};
  sa.merge(cpu::AttnState{mb, lb, b.data()}, d);
  for (int c = 0; c < d; ++c) EXPECT_NEAR(a[c] / sa.l, whole[c] / lw, 1e-6);
  (void)mw;
}

TEST(Elementwise, RmsNormMatchesDouble) {
  std::mt19937 rng(3);
  for (int n : {1, 7, 576, 4096}) {
    auto x = random_vec(n, rng, -10, 10), w = random_vec(n, rng);
    std::vector<float> y(n);
    cpu::rms_norm(x.data(), w.data(), n, 1e-5f, y.data());
    double ss = 0;
    for (float f : x) ss += double(f) * f;
    const double inv = 1.0 / std::sqrt(ss / n + 1e-5);
    for (int i = 0; i < n; ++i) EXPECT_NEAR(y[i], x[i] * inv * w[i], 1e-5 * (1 + std::fabs(x[i] * inv * w[i])));
  }
}

TEST(Elementwise, RopeRotatesPairsByTheRightAngle) {
  std::mt19937 rng(5);
  const int hd = 64, heads = 3;
  for (bool neox : {false, true}) {
    for (int32_t pos : {0, 1, 17, 8191, 100000}) {
      auto x = random_vec(heads * hd, rng);
      auto y = x;
      RopeParams p{hd, 100000.0f, 1.0f, neox};
      cpu::rope(y.data(), heads, hd, pos, p);
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < hd / 2; ++i) {
          const double th = pos * std::pow(100000.0, -2.0 * i / hd);
          const int a = h * hd + (neox ? i : 2 * i), b = h * hd + (neox ? i + hd / 2 : 2 * i + 1);
          EXPECT_NEAR(y[a], x[a] * std::cos(th) - x[b] * std::sin(th), 1e-5);
          EXPECT_NEAR(y[b], x[a] * std::sin(th) + x[b] * std::cos(th), 1e-5);
        }
    }
  }
}

TEST(Elementwise, SwigluAndSoftmax) {
  const float g[3] = {-2.0f, 0.0f, 3.0f}, u[3] = {1.0f, 5.0f, -2.0f};
  float o[3];
  cpu::swiglu(g, u, 3, o);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(o[i], g[i] / (1 + std::exp(-double(g[i]))) * u[i], 1e-6);
  float s[4] = {1000.0f, 1000.0f, -1000.0f, 999.0f};  // stable for huge logits
  cpu::softmax(s, 4);
  const double e = std::exp(-1.0), z = 2 + e;
  EXPECT_NEAR(s[0], 1 / z, 1e-6);
  EXPECT_NEAR(s[3], e / z, 1e-6);
  EXPECT_EQ(s[2], 0.0f);
}

TEST(ThreadPool, CoversEveryTaskOnceAndPropagatesErrors) {
  ThreadPool pool(2);
  for (int64_t n : {1, 2, 3, 1000}) {
    std::vector<std::atomic<int>> hits(n);
    pool.run(n, [&](int64_t t, int) { hits[t]++; });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
  std::atomic<int64_t> sum{0};
  pool.parallel_for(10001, 7, [&](int64_t b, int64_t e, int) {
    int64_t s = 0;
    for (int64_t i = b; i < e; ++i) s += i;
    sum += s;
  });
  EXPECT_EQ(sum.load(), 10001LL * 10000 / 2);
  EXPECT_THROW(pool.run(8, [](int64_t t, int) {
                 if (t == 5) FM_FAIL(ErrorCode::kInternal, "boom");
               }),
               Error);
  // Still usable afterwards.
  std::atomic<int> after{0};
  pool.run(4, [&](int64_t, int) { after++; });
  EXPECT_EQ(after.load(), 4);
}

}  // namespace
}  // namespace flashmem

// Memory Indexer training data: index keys (pooling, Hadamard, fp8), attention-hit labels and
// the dump file format. References: float64 math written here, hand-made cases, and corrupted
// files that must be refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/fp8.h"
#include "memory/attention_labels.h"
#include "memory/index_keys.h"
#include "memory/tiered_kv.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/elementwise.h"
#include "train/dump.h"
#include "test_util.h"

namespace flashmem {
namespace {

KvCacheConfig key_config() {
  KvCacheConfig c;
  c.n_layers = 3;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.page_tokens = 8;
  c.max_tokens = 256;
  c.type = KvType::kF32;
  return c;
}

RopeParams test_rope() {
  RopeParams r;
  r.n_rot = 8;
  r.freq_base = 10000.0f;
  return r;
}

// A page's K part (f32, dim-major per kv head) from token-major keys k[token][g·d + i].
std::vector<float> page_from_keys(const KvCacheConfig& c, const std::vector<std::vector<double>>& k) {
  std::vector<float> page(static_cast<size_t>(2) * c.n_kv_heads * c.head_dim * c.page_tokens, 0.0f);
  for (int j = 0; j < c.page_tokens; ++j)
    for (int g = 0; g < c.n_kv_heads; ++g)
      for (int i = 0; i < c.head_dim; ++i)
        page[(static_cast<size_t>(g) * c.head_dim + i) * c.page_tokens + j] = static_cast<float>(k[j][g * c.head_dim + i]);
  return page;
}

// Orthonormal Sylvester Hadamard in double, by the matrix definition H[r][c] = (−1)^popcount(r&c).
std::vector<double> hadamard_ref(const std::vector<double>& x) {
  const size_t n = x.size();
  std::vector<double> y(n, 0.0);
  for (size_t r = 0; r < n; ++r)
    for (size_t c = 0; c < n; ++c) y[r] += (__builtin_popcountll(r & c) % 2 ? -1.0 : 1.0) * x[c];
  for (double& v : y) v /= std::sqrt(static_cast<double>(n));
  return y;
}

// Checks a stored key against the float64 pooled vector `want` (per kv head before Hadamard).
void expect_key(const KvCacheConfig& c, const uint8_t* key, float scale, const std::vector<double>& want) {
  std::vector<double> rot;
  double amax = 0.0;
  for (int g = 0; g < c.n_kv_heads; ++g) {
    std::vector<double> h(want.begin() + g * c.head_dim, want.begin() + (g + 1) * c.head_dim);
    for (double v : hadamard_ref(h)) {
      rot.push_back(v);
      amax = std::max(amax, std::fabs(v));
    }
  }
  EXPECT_NEAR(scale, amax / 448.0, 1e-6 * amax);
  for (size_t i = 0; i < rot.size(); ++i) {
    const double got = fp8_e4m3_to_fp32(key[i]) * static_cast<double>(scale);
    ASSERT_FALSE(std::isnan(got));
    // e4m3 keeps 3 mantissa bits: relative error ≤ 2^−4 for normals, plus the subnormal step.
    EXPECT_NEAR(got, rot[i], std::fabs(rot[i]) / 16.0 + amax / 448.0 * std::ldexp(1.0, -9) + 1e-7) << i;
  }
}

TEST(IndexKeys, PostRopeMeanIsTheMeanOfCachedKeysHadamardRotatedInFp8) {
  const KvCacheConfig c = key_config();
  std::mt19937 rng(1);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<std::vector<double>> k(c.page_tokens, std::vector<double>(c.n_kv_heads * c.head_dim));
  for (auto& row : k)
    for (double& v : row) v = nd(rng);
  const std::vector<float> page = page_from_keys(c, k);
  IndexKeyConfig ic;
  ic.chunk_tokens = 4;
  ic.layers = {0, 2};
  ic.rope = test_rope();
  IndexKeys keys(c, ic, nullptr);
  keys.on_page(1, 0, reinterpret_cast<const uint8_t*>(page.data()));  // not a target: ignored
  EXPECT_EQ(keys.n_chunks(0), 0);
  keys.on_page(2, 0, reinterpret_cast<const uint8_t*>(page.data()));
  ASSERT_EQ(keys.n_chunks(1), 2);
  keys.on_page(2, 0, reinterpret_cast<const uint8_t*>(page.data()));  // replayed page: ignored
  EXPECT_EQ(keys.n_chunks(1), 2);
  for (int ch = 0; ch < 2; ++ch) {
    std::vector<double> mean(c.n_kv_heads * c.head_dim, 0.0);
    for (int j = ch * 4; j < ch * 4 + 4; ++j)
      for (size_t i = 0; i < mean.size(); ++i) mean[i] += k[j][i] / 4.0;
    expect_key(c, keys.host_keys(1).data() + ch * keys.key_dim(), keys.host_scales(1)[ch], mean);
  }
  EXPECT_THROW(keys.on_page(2, 2, reinterpret_cast<const uint8_t*>(page.data())), Error);  // a gap
}

TEST(IndexKeys, PreRopeMeanRotatesTheUnrotatedMeanToTheChunkStart) {
  const KvCacheConfig c = key_config();
  std::mt19937 rng(2);
  std::normal_distribution<double> nd(0.0, 1.0);
  // Keys before RoPE, then rotated at their positions (page 3: positions 24..31), as cached.
  const int32_t pos0 = 3 * c.page_tokens;
  std::vector<std::vector<double>> raw(c.page_tokens, std::vector<double>(c.n_kv_heads * c.head_dim));
  std::vector<std::vector<double>> cached = raw;
  for (int j = 0; j < c.page_tokens; ++j) {
    std::vector<float> t(raw[j].size());
    for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(raw[j][i] = nd(rng));
    cpu::rope(t.data(), c.n_kv_heads, c.head_dim, pos0 + j, test_rope());
    for (size_t i = 0; i < t.size(); ++i) cached[j][i] = t[i];
  }
  const std::vector<float> page = page_from_keys(c, cached);
  IndexKeyConfig ic;
  ic.chunk_tokens = 8;
  ic.layers = {1};
  ic.pooling = KeyPooling::kPreRopeMean;
  ic.rope = test_rope();
  IndexKeys keys(c, ic, nullptr);
  for (int32_t pg = 0; pg <= 3; ++pg) keys.on_page(1, pg, reinterpret_cast<const uint8_t*>(page.data()));
  ASSERT_EQ(keys.n_chunks(0), 4);
  // Want: RoPE(mean of raw keys) at pos0, rotated here in double.
  std::vector<double> want(raw[0].size(), 0.0);
  for (const auto& r : raw)
    for (size_t i = 0; i < want.size(); ++i) want[i] += r[i] / c.page_tokens;
  for (int g = 0; g < c.n_kv_heads; ++g)
    for (int i = 0; i < c.head_dim / 2; ++i) {
      const double th = pos0 * std::pow(10000.0, -2.0 * i / c.head_dim);
      double& a = want[g * c.head_dim + 2 * i];
      double& b = want[g * c.head_dim + 2 * i + 1];
      const double x = a, y = b;
      a = x * std::cos(th) - y * std::sin(th);
      b = x * std::sin(th) + y * std::cos(th);
    }
  expect_key(c, keys.host_keys(0).data() + 3 * keys.key_dim(), keys.host_scales(0)[3], want);
}

TEST(IndexKeys, DeviceCopyAndBadConfigurations) {
  const KvCacheConfig c = key_config();
  CpuBackend be(1);
  IndexKeyConfig ic;
  ic.chunk_tokens = 4;
  ic.layers = {0};
  ic.rope = test_rope();
  IndexKeys keys(c, ic, &be);
  std::vector<float> page(static_cast<size_t>(2) * c.n_kv_heads * c.head_dim * c.page_tokens, 0.5f);
  for (int32_t pg = 0; pg < 3; ++pg) keys.on_page(0, pg, reinterpret_cast<const uint8_t*>(page.data()));
  const uint8_t* dk = keys.device_keys(0);
  const float* ds = keys.device_scales(0);
  ASSERT_EQ(keys.n_chunks(0), 6);
  EXPECT_TRUE(std::equal(keys.host_keys(0).begin(), keys.host_keys(0).end(), dk));
  EXPECT_TRUE(std::equal(keys.host_scales(0).begin(), keys.host_scales(0).end(), ds));
  EXPECT_GE(keys.device_bytes(), 6u * (keys.key_dim() + 4));
  IndexKeyConfig bad = ic;
  bad.chunk_tokens = 3;  // does not divide the page
  EXPECT_THROW(IndexKeys(c, bad, nullptr), Error);
  bad = ic;
  bad.layers = {3};
  EXPECT_THROW(IndexKeys(c, bad, nullptr), Error);
  bad.layers = {1, 0};
  EXPECT_THROW(IndexKeys(c, bad, nullptr), Error);
  EXPECT_THROW(parse_pooling("max"), Error);
}

// ---- attention hits -------------------------------------------------------------------------

TEST(ChunkHits, EachHeadHitsTheShortestTopPPrefixOfItsChunkMass) {
  // One kv head, two query heads, 16 tokens in two pages of 8, chunks of 4 tokens.
  AttentionParams p;
  p.n_heads = 2;
  p.n_kv_heads = 1;
  p.head_dim = 4;
  p.page_tokens = 8;
  p.head_stride = 8 * 4;
  p.kv_type = KvType::kF32;
  p.scale = 1.0f;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.5f);
  std::vector<float> k0(64), k1(64), q(8);
  for (float& v : k0) v = nd(rng);
  for (float& v : k1) v = nd(rng);
  for (float& v : q) v = nd(rng);
  // The query sits at position 12: the second page holds 7 tokens, of which 5 are visible.
  const KvPageRef pages[2] = {{k0.data(), nullptr, 0, 8}, {k1.data(), nullptr, 8, 7}};
  const int32_t ids[2] = {0, 1};
  const int32_t pos[1] = {12};
  const float top_p = 0.6f;
  CpuBackend be(1);  // before the recorder: its scratch lives on the backend
  ChunkHitRecorder rec(4, top_p);
  rec.set_step(0);
  rec.after_attend(be, 0, p, q.data(), pos, 1, pages, ids);
  // Reference in double.
  std::vector<int> want(4, 0);
  std::vector<double> want_mass(4, 0.0);  // averaged over the two heads
  for (int h = 0; h < 2; ++h) {
    std::vector<double> s;
    for (int t = 0; t < 13; ++t) {
      const std::vector<float>& k = t < 8 ? k0 : k1;
      double dot = 0.0;
      for (int c = 0; c < 4; ++c) dot += static_cast<double>(q[h * 4 + c]) * k[c * 8 + t % 8];
      s.push_back(dot);
    }
    const double mx = *std::max_element(s.begin(), s.end());
    double sum = 0.0;
    std::vector<double> mass(4, 0.0);
    for (int t = 0; t < 13; ++t) sum += std::exp(s[t] - mx);
    for (int t = 0; t < 13; ++t) mass[t / 4] += std::exp(s[t] - mx) / sum;
    for (int ch = 0; ch < 4; ++ch) want_mass[ch] += mass[ch] / 2.0;
    std::vector<int> order = {0, 1, 2, 3};
    std::sort(order.begin(), order.end(), [&](int a, int b) { return mass[a] > mass[b]; });
    double cum = 0.0;
    for (int ch : order) {
      ++want[ch];
      cum += mass[ch];
      if (cum >= top_p) break;
    }
  }
  std::vector<int> got(4, 0);
  for (const auto& [ch, n] : rec.step_hits(0)) got[ch] = n;
  EXPECT_EQ(got, want);
  int total = 0;
  for (int n : got) total += n;
  EXPECT_GE(total, 2);  // every head hits at least its top chunk
  EXPECT_TRUE(rec.step_hits(1).empty());
  // The step's mass per chunk, averaged over (layer, head) pairs: sums to 1.
  const auto ms = rec.step_mass(0);
  ASSERT_EQ(ms.size(), 4u);
  double total_mass = 0.0;
  for (const auto& [ch, m] : ms) {
    ASSERT_FALSE(std::isnan(m));
    EXPECT_NEAR(m, want_mass[ch], 1e-5) << "chunk " << ch;
    total_mass += m;
  }
  EXPECT_NEAR(total_mass, 1.0, 1e-5);
  // A second layer at the same step counts as two more pairs: the average stays a distribution.
  rec.after_attend(be, 1, p, q.data(), pos, 1, pages, ids);
  double total2 = 0.0;
  for (const auto& [ch, m] : rec.step_mass(0)) {
    EXPECT_NEAR(m, want_mass[ch], 1e-5) << "chunk " << ch << " after a second identical layer";
    total2 += m;
  }
  EXPECT_NEAR(total2, 1.0, 1e-5);
  EXPECT_TRUE(rec.step_mass(1).empty());
}

// ---- dump files --------------------------------------------------------------------------

train::DumpDoc small_doc() {
  train::DumpDoc d;
  d.name = "test/doc";
  d.source = "ruler";
  d.split = train::split_of(d.name);
  d.model = "tiny";
  d.d_model = 4;
  d.n_kv_heads = 1;
  d.head_dim = 2;
  d.n_layers = 2;
  d.n_heads = 2;
  d.page_tokens = 8;
  d.chunk_tokens = 4;
  d.tau = 2;
  d.top_p = 0.5f;
  d.rope = test_rope();
  d.target_layers = {1};
  d.poolings = {"post_rope_mean"};
  d.n_prompt = 40;
  d.n_steps = 3;
  d.point_step = {0, 2};
  d.point_pos = {39, 41};
  for (int i = 1; i <= 8; ++i) d.hidden.push_back(fp32_to_fp16(static_cast<float>(i)));  // f16 bits
  d.hit_ptr = {0, 3, 4, 6};
  d.hit_chunk = {0, 3, 5, 4, 6, 9};  // step 0: 0,3,5; step 1: 4; step 2: 6,9
  d.hit_count = {4, 1, 2, 3, 2, 1};
  d.n_chunks = 10;
  d.keys = {{std::vector<uint8_t>(20, 7)}};
  d.scales = {{std::vector<float>(10, 0.25f)}};
  return d;
}

// small_doc with attention mass per step (chunks 0-9): step 0 {0: .5, 3: .1, 5: .2, 7: .2},
// step 1 {4: .6, 5: .1, 9: .3}, step 2 {6: .7, 9: .3}.
train::DumpDoc small_doc_with_mass() {
  train::DumpDoc d = small_doc();
  d.mass_ptr = {0, 4, 7, 9};
  d.mass_chunk = {0, 3, 5, 7, 4, 5, 9, 6, 9};
  d.mass_value = {0.5f, 0.1f, 0.2f, 0.2f, 0.6f, 0.1f, 0.3f, 0.7f, 0.3f};
  return d;
}

std::string temp_path(const char* name) {
  return (std::filesystem::temp_directory_path() / name).string();
}

TEST(DumpFile, RoundTripAndSplits) {
  const train::DumpDoc d = small_doc();
  const std::string path = temp_path("flashmem_test.fmd");
  train::write_dump(path, d);
  const train::DumpDoc r = train::read_dump(path);
  EXPECT_EQ(r.name, d.name);
  EXPECT_EQ(r.split, d.split);
  EXPECT_EQ(r.rope.n_rot, d.rope.n_rot);
  EXPECT_EQ(r.hidden, d.hidden);
  EXPECT_EQ(r.hit_chunk, d.hit_chunk);
  EXPECT_EQ(r.hit_count, d.hit_count);
  EXPECT_EQ(r.keys, d.keys);
  EXPECT_EQ(r.scales, d.scales);
  EXPECT_TRUE(r.mass_ptr.empty());
  const train::DumpDoc dm = small_doc_with_mass();
  train::write_dump(path, dm);
  const train::DumpDoc rm = train::read_dump(path);
  EXPECT_EQ(rm.mass_ptr, dm.mass_ptr);
  EXPECT_EQ(rm.mass_chunk, dm.mass_chunk);
  EXPECT_EQ(rm.mass_value, dm.mass_value);
  train::DumpDoc bad = dm;
  bad.mass_value[2] = -0.5f;
  EXPECT_THROW(train::write_dump(path, bad), Error);
  bad = dm;
  bad.mass_ptr.pop_back();
  EXPECT_THROW(train::write_dump(path, bad), Error);
  // Splits: stable, and about 80/10/10 over many names.
  int n[3] = {0, 0, 0};
  for (int i = 0; i < 2000; ++i) {
    const std::string s = train::split_of("doc/" + std::to_string(i));
    EXPECT_EQ(s, train::split_of("doc/" + std::to_string(i)));
    n[s == "train" ? 0 : s == "val" ? 1 : 2]++;
  }
  EXPECT_GT(n[0], 1500);
  EXPECT_GT(n[1], 130);
  EXPECT_GT(n[2], 130);
}

TEST(DumpFile, DamagedFilesAreRefusedWithAClearError) {
  const std::string path = temp_path("flashmem_test_bad.fmd");
  train::write_dump(path, small_doc());
  std::vector<char> bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto refused = [&](std::vector<char> b, const char* what) {
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(b.data(), static_cast<std::streamsize>(b.size()));
    }
    try {
      train::read_dump(path);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << what;
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << what;
    }
  };
  std::vector<char> b = bytes;
  b[b.size() / 2] ^= 0x10;
  refused(b, "a flipped bit");
  refused(std::vector<char>(bytes.begin(), bytes.end() - 9), "truncated");
  b = bytes;
  b[0] = 'X';
  refused(b, "bad magic");
  b = bytes;
  b[8] = 9;
  refused(b, "unknown version");
  {  // version 1 (before the mass arrays) is still read, with its checksum redone
    b = bytes;
    b[8] = 1;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i + 8 < b.size(); ++i) {
      h ^= static_cast<uint8_t>(b[i]);
      h *= 0x100000001b3ull;
    }
    std::memcpy(b.data() + b.size() - 8, &h, 8);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  }
  EXPECT_EQ(train::read_dump(path).name, small_doc().name);
  refused(std::vector<char>(bytes.begin(), bytes.begin() + 20), "shorter than a header");
  EXPECT_THROW(train::read_dump(temp_path("flashmem_no_such_file.fmd")), Error);
  train::DumpDoc bad = small_doc();
  bad.hidden.pop_back();
  EXPECT_THROW(train::write_dump(path, bad), Error);
}

// Writes `b` to `path` with its trailing FNV-1a 64 checksum redone, as a hostile edit would.
void write_with_checksum(const std::string& path, std::vector<char> b) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i + 8 < b.size(); ++i) {
    h ^= static_cast<uint8_t>(b[i]);
    h *= 0x100000001b3ull;
  }
  std::memcpy(b.data() + b.size() - 8, &h, 8);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(b.data(), static_cast<std::streamsize>(b.size()));
}

// small_doc_with_mass's bytes with one i32 of an array replaced; `before` is the byte size of
// the arrays that precede it in the file.
std::vector<char> with_i32(const std::string& path, size_t before, size_t index, int32_t v) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t hl = 0;
  std::memcpy(&hl, b.data() + 16, 8);
  std::memcpy(b.data() + 24 + hl + before + 4 * index, &v, 4);
  return b;
}

// Chunk ids outside the document (checksum recomputed) used to be accepted and silently
// ignored by the labels (issue #25): read_dump refuses them, naming the file and the array.
TEST(DumpFile, OutOfRangeChunkIdsAreRefusedNamingTheFileAndTheArray) {
  const std::string good = temp_path("flashmem_test_ids_good.fmd");
  const std::string path = temp_path("flashmem_test_ids.fmd");
  train::write_dump(good, small_doc_with_mass());
  // Arrays in file order: point_step, point_pos (2 × i32 each), hidden (8 × f16), hit_ptr
  // (4 × i32), hit_chunk (6), hit_count (6), mass_ptr (4), mass_chunk (9), mass_value (9).
  const size_t hit_chunk_at = 8 + 8 + 16 + 16, hit_count_at = hit_chunk_at + 24;
  const size_t mass_chunk_at = hit_count_at + 24 + 16;
  const struct {
    size_t at, index;
    int32_t value;
    std::string expect;
  } cases[] = {
      {hit_chunk_at, 1, 11, "hit_chunk[1] = 11 is outside the 11 chunks of its 43 tokens"},
      {hit_chunk_at, 4, -1, "hit_chunk[4] = -1 is outside"},
      {hit_chunk_at, 0, 1 << 30, "hit_chunk[0] = 1073741824"},
      {hit_count_at, 2, 0, "hit_count[2] = 0 is outside [1, 4]"},
      {mass_chunk_at, 8, 500, "mass_chunk[8] = 500 is outside"},
  };
  for (const auto& c : cases) {
    write_with_checksum(path, with_i32(good, c.at, c.index, c.value));
    try {
      train::read_dump(path);
      ADD_FAILURE() << "accepted: " << c.expect;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << e.what();
      EXPECT_EQ(std::string(e.what()).rfind(path + ": ", 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.expect), std::string::npos) << e.what();
    }
  }
  // The last chunk a decode step can attend (token 42 of 40 + 3) is accepted.
  write_with_checksum(path, with_i32(good, hit_chunk_at, 1, 10));
  EXPECT_EQ(train::read_dump(path).hit_chunk[1], 10);

  // train-indexer refuses the directory with one line and exit 1.
  const auto dir = std::filesystem::temp_directory_path() / "flashmem_test_ids_data";
  std::filesystem::remove_all(dir);
  for (const char* split : {"train", "val", "test"}) {
    std::filesystem::create_directories(dir / split);
    write_with_checksum((dir / split / "doc.fmd").string(), with_i32(good, hit_chunk_at, 1, 99));
  }
  const test::CmdResult r = test::run_cli("train-indexer --data " + dir.string() + " --out " +
                                          (dir / "ix.safetensors").string() + " --epochs 1");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("doc.fmd: hit_chunk[1] = 99 is outside"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "not one line: " << r.out;
  EXPECT_FALSE(std::filesystem::exists(dir / "ix.safetensors"));
}

// Leave-one-family-out: documents are kept or skipped by the family in their source.
TEST(DumpFile, FamiliesAreLeftOutOrKeptBySource) {
  train::DumpDoc a = small_doc(), b = small_doc(), c = small_doc();
  a.source = "needle:man";
  b.source = "text:csv";
  c.source = "ruler";
  EXPECT_EQ(train::doc_family(a), "man");
  EXPECT_EQ(train::doc_family(b), "csv");
  EXPECT_EQ(train::doc_family(c), "ruler");
  std::vector<std::string> paths;
  for (auto [d, n] : {std::pair{&a, "a"}, std::pair{&b, "b"}, std::pair{&c, "c"}}) {
    paths.push_back(temp_path((std::string("flashmem_test_family_") + n + ".fmd").c_str()));
    train::write_dump(paths.back(), *d);
  }
  train::LoadOptions o;
  o.sink_tokens = 8;
  o.tail_tokens = 8;
  EXPECT_EQ(train::load_dataset(paths, o).docs.size(), 3u);
  o.families_out = {"man"};
  EXPECT_EQ(train::load_dataset(paths, o).docs.size(), 2u);
  o.families_out = {"man", "csv", "ruler"};
  EXPECT_EQ(train::load_dataset(paths, o).docs.size(), 0u);
  o.families_out.clear();
  o.families_only = {"csv"};
  EXPECT_EQ(train::load_dataset(paths, o).docs.size(), 1u);
  o.families_only = {"logs"};
  EXPECT_EQ(train::load_dataset(paths, o).docs.size(), 0u);
}

TEST(DumpFile, DatasetLabelsAreTheWindowUnionOverCandidates) {
  const std::string path = temp_path("flashmem_test_ds.fmd");
  train::write_dump(path, small_doc());
  train::LoadOptions o;
  o.sink_tokens = 8;  // chunks 0-1 are sink
  o.tail_tokens = 8;  // the last completed page is tail
  o.min_hits = 2;
  const train::IndexerDataset ds = train::load_dataset({path}, o);
  ASSERT_EQ(ds.docs.size(), 1u);
  const train::IndexerDoc& doc = ds.docs[0];
  ASSERT_EQ(doc.n_points(), 2);
  // Point 0: position 39 → 40 tokens → 5 completed pages; middle pages [1, 4) → chunks [2, 8).
  EXPECT_EQ(doc.cand_begin[0], 2);
  EXPECT_EQ(doc.cand_end[0], 8);
  // Window steps 0-1 (τ = 2), hits ≥ 2: chunk 0 (sink, out), 5 (2 hits), 4 (3 hits).
  std::vector<int32_t> l0(doc.label_idx.begin() + doc.label_ptr[0], doc.label_idx.begin() + doc.label_ptr[1]);
  EXPECT_EQ(l0, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(doc.label_hits[doc.label_ptr[0]], 3.0f);
  // Point 1: step 2 only (the dump ends): chunk 6 (2 hits); chunk 9 has 1.
  std::vector<int32_t> l1(doc.label_idx.begin() + doc.label_ptr[1], doc.label_idx.begin() + doc.label_ptr[2]);
  EXPECT_EQ(l1, (std::vector<int32_t>{6}));
  EXPECT_EQ(doc.hidden.size(), 8u);
  EXPECT_FLOAT_EQ(doc.hidden[4], 5.0f);
  o.pooling = "pre_rope_mean";
  EXPECT_THROW(train::load_dataset({path}, o), Error);
  // Labels by mass need mass arrays: a file without them is refused, naming it.
  o.pooling = "post_rope_mean";
  o.labels = train::LabelKind::kMass;
  try {
    train::load_dataset({path}, o);
    ADD_FAILURE() << "labels by mass from a file without mass";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(DumpFile, LabelsByMassAreTheTopShareOfTheWindowsCandidateMass) {
  const std::string path = temp_path("flashmem_test_mass.fmd");
  train::write_dump(path, small_doc_with_mass());
  train::LoadOptions o;
  o.sink_tokens = 8;
  o.tail_tokens = 8;
  o.labels = train::LabelKind::kMass;
  auto golden = [&](float share, int point) {
    o.mass_top_p = share;
    const train::IndexerDataset ds = train::load_dataset({path}, o);
    const train::IndexerDoc& doc = ds.docs.at(0);
    EXPECT_EQ(ds.max_hits, 1.0f);  // no hit weighting
    for (float w : doc.label_hits) EXPECT_EQ(w, 1.0f);
    return std::vector<int32_t>(doc.label_idx.begin() + doc.label_ptr[point],
                                doc.label_idx.begin() + doc.label_ptr[point + 1]);
  };
  // Point 0, candidates [2, 8), window steps 0-1: 3 → .1, 4 → .6, 5 → .3, 7 → .2 (total 1.2;
  // chunks 0 and 9 are outside). 40% needs .48: chunk 4; 60% needs .72: chunks 4 and 5.
  EXPECT_EQ(golden(0.4f, 0), (std::vector<int32_t>{4}));
  EXPECT_EQ(golden(0.6f, 0), (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(golden(1.0f, 0), (std::vector<int32_t>{3, 4, 5, 7}));
  // Point 1, window step 2 only: 6 → .7 is the only candidate with mass.
  EXPECT_EQ(golden(0.9f, 1), (std::vector<int32_t>{6}));
  o.mass_top_p = 0.0f;
  EXPECT_THROW(train::load_dataset({path}, o), Error);
  EXPECT_EQ(train::parse_labels("mass"), train::LabelKind::kMass);
  EXPECT_THROW(train::parse_labels("weights"), Error);
}

}  // namespace
}  // namespace flashmem

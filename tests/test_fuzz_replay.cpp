// The safetensors and dump fuzz targets in CI: their seed corpora (fuzz/corpus-safetensors,
// fuzz/corpus-dump) replayed through them, plus deterministic mutations of every seed, as
// test_gguf.cpp does for the GGUF target. A violated invariant throws std::logic_error here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "train/dump.h"
#include "indexer/indexer_model.h"

extern "C" int fuzz_safetensors_one_input(const uint8_t* data, size_t size);
extern "C" int fuzz_dump_one_input(const uint8_t* data, size_t size);
extern "C" int fuzz_openai_one_input(const uint8_t* data, size_t size);
extern "C" int fuzz_eval_json_one_input(const uint8_t* data, size_t size);
extern "C" int fuzz_chat_template_one_input(const uint8_t* data, size_t size);

namespace flashmem {
namespace {

namespace fs = std::filesystem;
using Target = std::function<int(const uint8_t*, size_t)>;

fs::path corpus_dir(const char* name) { return fs::path(FLASHMEM_SOURCE_DIR) / "fuzz" / name; }

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> out;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// Replays every file of the corpus, then 200 mutations of each (bit flips, truncation, an
// interesting value over an aligned word, a digit changed in the JSON header).
void replay(const fs::path& dir, const Target& target) {
  const std::vector<fs::path> files = files_in(dir);
  ASSERT_GE(files.size(), 4u) << dir << " is missing or nearly empty";
  std::mt19937_64 rng(0x5eed);
  const uint64_t interesting[] = {0, 1, 0x7f, 0xff, 0xffffffffull, 1ull << 31, 1ull << 63, ~0ull, 16, 64};
  for (const fs::path& p : files) {
    const std::vector<uint8_t> seed = read_bytes(p);
    ASSERT_NO_THROW(target(seed.data(), seed.size())) << p;
    for (int i = 0; i < 200; ++i) {
      std::vector<uint8_t> m = seed;
      if (m.empty()) break;
      switch (rng() % 4) {
        case 0:
          for (int k = 0, n = 1 + static_cast<int>(rng() % 8); k < n; ++k)
            m[rng() % m.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 1:
          m.resize(rng() % m.size());
          break;
        case 2: {
          if (m.size() < 8) break;
          const uint64_t v = interesting[rng() % std::size(interesting)];
          std::memcpy(m.data() + (rng() % (m.size() / 8)) * 8, &v, 8);
          break;
        }
        default: {  // a digit of the header (JSON numbers: shapes, offsets, counts)
          const size_t limit = std::min<size_t>(m.size(), 4096);
          for (int tries = 0; tries < 64; ++tries) {
            const size_t at = rng() % limit;
            if (m[at] >= '0' && m[at] <= '9') {
              m[at] = static_cast<uint8_t>('0' + rng() % 10);
              break;
            }
          }
        }
      }
      ASSERT_NO_THROW(target(m.data(), m.size())) << p << " mutation " << i;
    }
  }
}

TEST(SafetensorsFuzz, CorpusReplayAndMutations) {
  replay(corpus_dir("corpus-safetensors"), fuzz_safetensors_one_input);
}

// fuzz_safetensors found a data offset of 5.5e39 (a JSON float) taken with an unchecked cast
// (undefined behaviour; the seed fuzz/corpus-safetensors/float-data-offset replays it above under
// UBSan). Sizes must be JSON integers in range; everything else is a format error.
TEST(SafetensorsHeader, SizesThatAreNotIntegersInRangeAreRefused) {
  const auto file = [](const std::string& tensor) {
    const std::string h = "{\"x\":" + tensor + "}";
    std::vector<uint8_t> b(8 + h.size() + 8, 0);
    const uint64_t n = h.size();
    std::memcpy(b.data(), &n, 8);
    std::memcpy(b.data() + 8, h.data(), h.size());
    return b;
  };
  const auto refused = [&](const std::string& tensor) {
    const auto b = file(tensor);
    try {
      parse_safetensors(b.data(), b.size(), "t.safetensors");
    } catch (const Error& e) {
      return e.code() == ErrorCode::kFormat && std::string(e.what()).find("t.safetensors") != std::string::npos;
    }
    return false;
  };
  EXPECT_NO_THROW({
    const auto b = file(R"({"dtype":"I64","shape":[1],"data_offsets":[0,8]})");
    EXPECT_EQ(parse_safetensors(b.data(), b.size(), "t.safetensors").tensors.size(), 1u);
  });
  EXPECT_TRUE(refused(R"({"dtype":"I64","shape":[1],"data_offsets":[0,5.5e39]})"));
  EXPECT_TRUE(refused(R"({"dtype":"I64","shape":[1],"data_offsets":[0,8.0]})"));
  EXPECT_TRUE(refused(R"({"dtype":"I64","shape":[1],"data_offsets":[0,-8]})"));
  EXPECT_TRUE(refused(R"({"dtype":"I64","shape":[1],"data_offsets":[0,"8"]})"));
  EXPECT_TRUE(refused(R"({"dtype":"I64","shape":[1e30],"data_offsets":[0,8]})"));
  EXPECT_TRUE(refused(R"({"dtype":"I64","shape":[-1],"data_offsets":[0,8]})"));
  EXPECT_TRUE(refused(R"({"dtype":"I64","shape":7,"data_offsets":[0,8]})"));
}

TEST(DumpFuzz, CorpusReplayAndMutations) { replay(corpus_dir("corpus-dump"), fuzz_dump_one_input); }
TEST(OpenAiFuzz, CorpusReplayAndMutations) { replay(corpus_dir("corpus-openai"), fuzz_openai_one_input); }
TEST(EvalJsonFuzz, CorpusReplayAndMutations) { replay(corpus_dir("corpus-eval-json"), fuzz_eval_json_one_input); }
TEST(ChatTemplateFuzz, CorpusReplayAndMutations) {
  replay(corpus_dir("corpus-chat-template"), fuzz_chat_template_one_input);
}

// ---- seeds -----------------------------------------------------------------------------------

IndexerModel tiny_indexer() {
  IndexerModel m;
  m.shape.d_model = 12;
  m.shape.n_heads = 4;
  m.shape.n_kv_heads = 2;
  m.shape.head_dim = 8;
  m.shape.rank = 6;
  m.shape.rope.n_rot = 8;
  m.shape.rope.freq_base = 10000.0f;
  m.keys.layers = {1, 3};
  m.keys.chunk_tokens = 4;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  const auto fill = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = nd(rng);
    return v;
  };
  for (size_t t = 0; t < m.keys.layers.size(); ++t)
    m.layers.push_back(IndexerLayer{fill(6 * 12), fill(6), fill(32 * 6), fill(4 * 12), 0.25f});
  return m;
}

train::DumpDoc tiny_doc() {
  train::DumpDoc d;
  d.name = "seed/doc";
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
  d.rope.n_rot = 2;
  d.rope.freq_base = 10000.0f;
  d.target_layers = {1};
  d.poolings = {"post_rope_mean"};
  d.n_prompt = 40;
  d.n_steps = 3;
  d.point_step = {0, 2};
  d.point_pos = {39, 41};
  for (int i = 1; i <= 8; ++i) d.hidden.push_back(fp32_to_fp16(static_cast<float>(i)));
  d.hit_ptr = {0, 3, 4, 6};
  d.hit_chunk = {0, 3, 5, 4, 6, 9};
  d.hit_count = {4, 1, 2, 3, 2, 1};
  d.mass_ptr = {0, 4, 7, 9};
  d.mass_chunk = {0, 3, 5, 7, 4, 5, 9, 6, 9};
  d.mass_value = {0.5f, 0.1f, 0.2f, 0.2f, 0.6f, 0.1f, 0.3f, 0.7f, 0.3f};
  d.n_chunks = 10;
  d.keys = {{std::vector<uint8_t>(20, 7)}};
  d.scales = {{std::vector<float>(10, 0.25f)}};
  return d;
}

// Regenerates the seed corpora. Run on purpose only:
//   flashmem_tests --gtest_also_run_disabled_tests --gtest_filter='*WriteFuzzSeeds*'
TEST(FuzzSeeds, DISABLED_WriteFuzzSeeds) {
  const fs::path st = corpus_dir("corpus-safetensors"), dump = corpus_dir("corpus-dump");
  fs::create_directories(st);
  fs::create_directories(dump);
  const IndexerModel m = tiny_indexer();
  save_indexer((st / "seed-indexer.safetensors").string(), m, {{"train.seed", "7"}});
  SafeTensorsFile f = read_safetensors((st / "seed-indexer.safetensors").string());
  SafeTensorsFile t = f;
  t.tensors.at("layers.1.wq_a").shape = {12, 6};  // transposed: refused by the loader
  write_safetensors((st / "bad-transposed.safetensors").string(), t);
  t = f;
  t.metadata["chunk_tokens"] = "0";
  write_safetensors((st / "bad-chunk-tokens.safetensors").string(), t);
  SafeTensorsFile plain;
  plain.tensors["x"] = SafeTensor{"F16", {2, 3}, std::vector<uint8_t>(12, 1)};
  plain.tensors["y"] = SafeTensor{"I64", {1}, std::vector<uint8_t>(8, 2)};
  plain.metadata["note"] = "not an indexer";
  write_safetensors((st / "seed-plain.safetensors").string(), plain);

  train::DumpDoc d = tiny_doc();
  train::write_dump((dump / "seed-v2.fmd").string(), d);
  d.mass_ptr.clear();
  d.mass_chunk.clear();
  d.mass_value.clear();
  train::write_dump((dump / "seed-hits-only.fmd").string(), d);
  d = tiny_doc();
  d.poolings = {"post_rope_mean", "pre_rope_mean"};
  d.keys.push_back({std::vector<uint8_t>(20, 9)});
  d.scales.push_back({std::vector<float>(10, 0.5f)});
  train::write_dump((dump / "seed-two-poolings.fmd").string(), d);
  // A hit on chunk 11 of an 11-chunk document (the checksum is fixed up by the target).
  std::vector<uint8_t> b = read_bytes(dump / "seed-v2.fmd");
  uint64_t hl = 0;
  std::memcpy(&hl, b.data() + 16, 8);
  const int32_t bad = 11;
  std::memcpy(b.data() + 24 + hl + 48 + 4, &bad, 4);
  std::ofstream((dump / "bad-chunk-id.fmd"), std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace
}  // namespace flashmem

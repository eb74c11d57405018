// Models built from a shape alone (models/synthetic.h) and the in-memory GGUF image they are
// made of (io/gguf_image.h): the image reads back as written, the weights are a function of the
// seed only, every offered type decodes to finite values of the intended spread, and the tiny
// shape runs through the engine's real path with finite logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "engine/engine.h"
#include "indexer/indexer_model.h"
#include "io/gguf_image.h"
#include "models/synthetic.h"
#include "ops/backend.h"
#include "test_util.h"

namespace flashmem {
namespace {

TEST(GgufImage, ReadsBackWhatWasWritten) {
  GgufImage img;
  img.add_string("general.architecture", "demo");
  img.add_u32("demo.count", 7);
  img.add_f32("demo.eps", 0.25f);
  img.add_bool("demo.flag", true);
  img.add_strings("demo.words", {"a", "", "ccc"});
  img.add_i32s("demo.ids", {-1, 0, 5});
  img.add_tensor("v", GgmlType::F32, {3});
  img.add_tensor("m", GgmlType::Q8_0, {64, 2});
  std::vector<size_t> order;
  const GgufFile f = img.build([&](size_t i, uint8_t* dst, uint64_t n) {
    order.push_back(i);
    for (uint64_t k = 0; k < n; ++k) dst[k] = static_cast<uint8_t>(i * 31 + k);
  });
  EXPECT_EQ(order, (std::vector<size_t>{0, 1}));
  EXPECT_EQ(f.get_string("general.architecture"), "demo");
  EXPECT_EQ(f.get_u32("demo.count"), 7u);
  EXPECT_EQ(f.get_f32("demo.eps"), 0.25f);
  EXPECT_TRUE(f.get_bool("demo.flag"));
  EXPECT_EQ(f.get_array("demo.words").strings("demo.words"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(f.get_array("demo.ids").ints("demo.ids"), (std::vector<int64_t>{-1, 0, 5}));
  ASSERT_EQ(f.tensors().size(), 2u);
  const GgufTensor& m = f.tensor("m");
  EXPECT_EQ(m.type, GgmlType::Q8_0);
  EXPECT_EQ(m.ne, (std::vector<uint64_t>{64, 2}));
  EXPECT_EQ(m.n_bytes, 2u * 2 * 34);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data) % 32, 0u);
  for (uint64_t k = 0; k < m.n_bytes; ++k) ASSERT_EQ(m.data[k], static_cast<uint8_t>(31 + k)) << k;
  EXPECT_EQ(f.file_size(), img.image_bytes());
  // A row that is not whole blocks is refused when declared.
  EXPECT_THROW(img.add_tensor("bad", GgmlType::Q4_K, {100, 2}), Error);
}

TEST(Dtype, Bf16RoundsToNearestEven) {
  const auto up = [](uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    return fp32_to_bf16(f);
  };
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(up(0x3f808000u), 0x3f80);  // a tie, to even (down)
  EXPECT_EQ(up(0x3f818000u), 0x3f82);  // a tie, to even (up)
  EXPECT_EQ(up(0x3f808001u), 0x3f81);  // above the tie
  EXPECT_EQ(bf16_to_fp32(fp32_to_bf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(NAN))));
  EXPECT_TRUE(std::isinf(bf16_to_fp32(fp32_to_bf16(INFINITY))));
}

TEST(Synthetic, SpecsAreCheckedAndNamed) {
  EXPECT_EQ(parse_synthetic("llama-3.1-8b").weights, GgmlType::BF16);
  EXPECT_EQ(parse_synthetic("qwen2.5-7b:Q4_K").weights, GgmlType::Q4_K);
  EXPECT_EQ(parse_synthetic("llama-3.2-1b").shape.n_layers, 16);
  try {
    parse_synthetic("llama-9");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("llama-3.1-8b"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_synthetic("tiny:q5_1"), Error);
  // 8B bf16: 8.0e9 weights of 2 bytes (the embedding and output included).
  const double gb = static_cast<double>(synthetic_image_bytes(parse_synthetic("llama-3.1-8b"))) / 1e9;
  EXPECT_GT(gb, 15.5);
  EXPECT_LT(gb, 16.5);
}

// Every offered type, decoded: finite, mean near 0, variance near 1/fan-in; the same bytes
// for a seed whatever the threads, other bytes for another seed.
TEST(Synthetic, WeightsAreSeededAndWellScaled) {
  for (const std::string& t : synthetic_weight_types()) {
    const SyntheticSpec spec = parse_synthetic("tiny:" + t);
    const GgufFile a = make_synthetic(spec, 7, 1), b = make_synthetic(spec, 7, 3), c = make_synthetic(spec, 8, 2);
    const GgufTensor& wa = a.tensor("blk.0.ffn_down.weight");  // fan-in n_ff = 512
    const GgufTensor& wb = b.tensor("blk.0.ffn_down.weight");
    const GgufTensor& wc = c.tensor("blk.0.ffn_down.weight");
    ASSERT_EQ(wa.type, spec.weights);
    EXPECT_EQ(std::memcmp(wa.data, wb.data, wa.n_bytes), 0) << t << ": depends on the thread count";
    EXPECT_NE(std::memcmp(wa.data, wc.data, wa.n_bytes), 0) << t << ": does not depend on the seed";
    std::vector<float> x(wa.n_elements);
    const size_t rb = wa.row_bytes();
    for (uint64_t r = 0; r < wa.rows(); ++r) dequantize_row_ref(wa.type, wa.data + r * rb, x.data() + r * wa.ne[0], wa.ne[0]);
    double sum = 0, sq = 0;
    for (float v : x) {
      ASSERT_TRUE(std::isfinite(v)) << t;
      sum += v;
      sq += double{v} * v;
    }
    const double n = static_cast<double>(x.size()), mean = sum / n, var = sq / n - mean * mean;
    const double want = 1.0 / 512;
    EXPECT_LT(std::fabs(mean), 0.25 * std::sqrt(want)) << t;
    EXPECT_GT(var, want / 1.5) << t;
    EXPECT_LT(var, want * 1.5) << t;
    const GgufTensor& norm = a.tensor("blk.1.attn_norm.weight");
    EXPECT_EQ(reinterpret_cast<const float*>(norm.data)[5], 1.0f);
  }
}

// release_tensor_data: the image's tensor pages go back to the OS (an owned image's read as
// zeros afterwards), the metadata stays, and nothing is released twice.
TEST(Synthetic, TheTensorDataCanBeGivenBack) {
  GgufFile f = make_synthetic(parse_synthetic("tiny:f32"), 7, 2);
  const GgufTensor& w = f.tensor("blk.1.ffn_up.weight");  // 512 × 256 f32: 512 KiB, whole pages inside
  const auto nonzero = [&] {
    size_t n = 0;
    for (uint64_t i = 0; i < w.n_bytes; ++i) n += w.data[i] != 0;
    return n;
  };
  EXPECT_GT(nonzero(), w.n_bytes / 2);
  const uint64_t freed = f.release_tensor_data();
  EXPECT_GE(freed, w.n_bytes - 2 * 4096);  // all but the pages the range only partly covers
  EXPECT_LE(freed, f.file_size());
  EXPECT_LT(nonzero(), size_t{2 * 4096});
  EXPECT_EQ(f.get_u32("llama.block_count"), 2u);  // the metadata is not in those pages
  EXPECT_EQ(f.tensor("blk.1.ffn_up.weight").ne[0], 256u);
}

// The tiny shape through the engine: text round-trips through its byte-level vocabulary, and a
// prefill plus decode steps give finite logits (the real path; the words are noise).
TEST(Synthetic, TinyRunsThroughTheEngine) {
  EngineOptions eo;
  eo.synthetic = "tiny:q4_k";
  eo.n_threads = 2;
  auto eng = Engine::load(eo);
  EXPECT_EQ(eng->info().n_layers, 2);
  EXPECT_EQ(eng->info().n_vocab, 384);
  const std::string text = "héllo, wörld 123";
  const std::vector<int32_t> ids = eng->tokenizer().encode(text, false, false);
  EXPECT_EQ(ids.size(), text.size());  // one token a byte
  EXPECT_EQ(eng->tokenizer().decode(ids), text);
  const auto pre = eng->prefill(eng->tokenizer().encode(text, true, false), ResidencyOptions{}, 8);
  ASSERT_EQ(pre->logits.size(), 384u);
  float lo = INFINITY, hi = -INFINITY;
  for (float v : pre->logits) {
    ASSERT_TRUE(std::isfinite(v));
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  EXPECT_GT(hi - lo, 1e-3f);  // not a constant: the weights reach the logits
  GenerateOptions go;
  go.max_new_tokens = 8;
  go.stop_at_eos = false;
  const GenerateResult r = eng->generate(eng->tokenizer().encode(text, true, false), go);
  EXPECT_EQ(r.tokens.size(), 8u);
  // A synthetic context: the store holds n tokens' K/V, the rest of the prompt prefills on top.
  const std::vector<int32_t> long_prompt(600, 65);
  auto sp = eng->begin_prefill(long_prompt, ResidencyOptions{}, 4);
  EXPECT_THROW(eng->fill_synthetic(*sp, 600), Error);  // nothing left to prefill
  eng->fill_synthetic(*sp, 530);
  EXPECT_EQ(sp->kv->n_tokens(), 530);
  EXPECT_EQ(sp->done, 530);
  const SequenceInput rest = sp->next_chunk(0);
  EXPECT_EQ(rest.tokens.size(), 70u);
  eng->model().forward_batch(std::span<const SequenceInput>(&rest, 1));
  sp->advance(70, 0.0);
  EXPECT_EQ(sp->kv->n_tokens(), 600);
  for (float v : sp->logits) ASSERT_TRUE(std::isfinite(v));
  // Decode steps that waited for recalled pages are counted (quest recalls what each cycle picks).
  GenerateOptions qo;
  qo.max_new_tokens = 40;
  qo.stop_at_eos = false;
  qo.memory.policy = "quest";
  qo.memory.budget = KvBudget::parse("40%");
  qo.memory.cycle = 8;
  const GenerateResult qr = eng->generate(long_prompt, qo);
  EXPECT_EQ(qr.tokens.size(), 40u);  // the first from the prefill's logits, 39 decode steps
  EXPECT_GT(qr.kv.decode_recall.pages, 0);
  EXPECT_GE(qr.kv.recall_steps, 1);
  EXPECT_LE(qr.kv.recall_steps, qr.decode_steps);
  EXPECT_GT(qr.kv.recall_wait_seconds, 0.0);
  EXPECT_LE(qr.kv.recall_wait_seconds, qr.kv.decode_recall.seconds + 1e-9);
  // A context longer than the shape's is built into a synthetic model (its training context).
  EXPECT_EQ(eng->n_ctx(), 4096);
  EngineOptions wide = eo;
  wide.n_ctx = 10000;
  auto longer = Engine::load(wide);
  EXPECT_EQ(longer->n_ctx(), 10000);
  EXPECT_EQ(longer->info().n_ctx_train, 10000);
  eo.model_path = "model.gguf";
  EXPECT_THROW(Engine::load(eo), Error);  // a file and a shape
}

// The backend's memory cap: allocations past it are refused with the arithmetic, freed memory
// is given back to it, and a refused allocation holds nothing.
TEST(GpuMemory, BackendCapCountsWhatIsHeld) {
  auto be = make_backend("cpu", 1, CpuDot::kQ8);
  be->set_memory_cap(1000);
  void* a = be->alloc(600);
  EXPECT_EQ(be->memory_held(), 600u);
  try {
    be->alloc(500);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfMemory);
    EXPECT_NE(std::string(e.what()).find("cap"), std::string::npos) << e.what();
  }
  EXPECT_EQ(be->memory_held(), 600u);
  be->dealloc(a);
  EXPECT_EQ(be->memory_held(), 0u);
  void* b = be->alloc(1000);
  be->dealloc(b);
  be->set_memory_cap(0);
  void* c = be->alloc(5000);  // no cap
  EXPECT_EQ(be->memory_held(), 5000u);
  be->dealloc(c);
}

// --gpu-memory in the engine: the KV reserve gets what the weights and the working memory
// leave (the CPU backend keeps the weights in the model file, so they hold nothing here), never
// more than --kv-memory; a cap that leaves nothing is refused before any request.
TEST(GpuMemory, TheReserveGetsWhatIsLeft) {
  EngineOptions eo;
  eo.synthetic = "tiny";
  eo.n_threads = 1;
  {
    auto eng = Engine::load(eo);
    EXPECT_EQ(eng->device_kv_cap(), 0u);  // no cap
    eo.gpu_memory_bytes = eng->working_memory() + (uint64_t{8} << 20);
  }
  auto eng = Engine::load(eo);
  EXPECT_EQ(eng->device_kv_cap(), eo.gpu_memory_bytes - eng->backend().memory_held() - eng->working_memory());
  EXPECT_EQ(eng->kv_reserve().max_slots(), static_cast<int64_t>(eng->device_kv_cap() / eng->kv_config().page_bytes()));
  eo.device_kv_bytes = 1 << 20;
  EXPECT_EQ(Engine::load(eo)->device_kv_cap(), uint64_t{1} << 20);
  eo.gpu_memory_bytes = 1 << 20;
  try {
    Engine::load(eo);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfMemory);
    EXPECT_NE(std::string(e.what()).find("--gpu-memory"), std::string::npos) << e.what();
  }
}

// A random indexer has the shape's sizes, and its weights follow the seed.
TEST(Synthetic, RandomIndexerFollowsShapeAndSeed) {
  IndexerShape sh;
  sh.d_model = 256;
  sh.n_heads = 12;
  sh.n_kv_heads = 2;
  sh.head_dim = 64;
  sh.rank = 32;
  IndexerKeys k;
  k.layers = {0, 1};
  const IndexerModel a = random_indexer(sh, k, 5), b = random_indexer(sh, k, 5), c = random_indexer(sh, k, 6);
  ASSERT_EQ(a.layers.size(), 2u);
  EXPECT_EQ(a.layers[1].wq_b.size(), size_t{12} * 64 * 32);
  EXPECT_EQ(a.layers[0].wq_a, b.layers[0].wq_a);
  EXPECT_NE(a.layers[0].wq_a, c.layers[0].wq_a);
  EXPECT_EQ(a.layers[0].q_norm, std::vector<float>(32, 1.0f));
  float hi = 0.0f;
  for (float x : a.layers[0].wq_a) hi = std::max(hi, std::fabs(x));
  EXPECT_LE(hi, std::sqrt(3.0f / 256.0f));
  EXPECT_GT(hi, 0.5f * std::sqrt(3.0f / 256.0f));
}

// `flashmem bench --synthetic`: the shape's table rows, and one line for a bad name, for a file
// and a shape together, and for neither.
TEST(Synthetic, BenchTakesAShape) {
  const test::CmdResult ok = test::run_cli("bench --synthetic tiny:q8_0 -p 32 -d 0 -b 1,2 -n 4 -r 1 -t 2");
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_NE(ok.out.find("synthetic tiny (q8_0, random weights)"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("tg4 @ d0 × 2 seqs"), std::string::npos) << ok.out;
  // -c builds a synthetic model with a longer context than its shape's (tiny: 4096).
  const test::CmdResult longer = test::run_cli("bench --synthetic tiny -c 6000 -p 0 -d 4500 -n 2 -r 1 -t 2 --no-warmup");
  EXPECT_EQ(longer.code, 0) << longer.out;
  EXPECT_NE(longer.out.find("tg2 @ d4500"), std::string::npos) << longer.out;
  EXPECT_EQ(test::run_cli("bench --synthetic tiny -p 0 -d 4500 -n 2 -r 1 -t 2").code, 2);  // past 4096
  const test::CmdResult lone = test::run_cli("bench --synthetic tiny -p 32 --policy recency --kv-budget 50%");
  EXPECT_EQ(lone.code, 2) << lone.out;  // the flags of --concurrency, without it
  EXPECT_NE(lone.out.find("apply to --concurrency"), std::string::npos) << lone.out;
  const test::CmdResult bad = test::run_cli("bench --synthetic llama-9b -p 32");
  EXPECT_EQ(bad.code, 2) << bad.out;  // bad usage, as for any other bad argument
  EXPECT_NE(bad.out.find("known: llama-3.1-8b"), std::string::npos) << bad.out;
  EXPECT_EQ(std::count(bad.out.begin(), bad.out.end(), '\n'), 1) << bad.out;
  EXPECT_EQ(test::run_cli("bench --synthetic tiny -m x.gguf").code, 2);
  const test::CmdResult none = test::run_cli("bench -p 32");
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.out.find("--model FILE or --synthetic NAME"), std::string::npos) << none.out;
}

// bench --concurrency: the memory arithmetic decides how many requests run, a quarter budget
// fits about four times as many as the full KV under the same cap, and they decode together.
TEST(Synthetic, ConcurrencyBenchFitsRequestsToTheCap) {
  // The cells of the table's data rows (after its header and rule).
  const auto rows = [](const std::string& out) {
    std::vector<std::vector<std::string>> cells;
    std::istringstream in(out);
    std::string line;
    int seen = 0;
    while (std::getline(in, line)) {
      if (line.rfind("|", 0) != 0 || ++seen <= 2) continue;
      std::vector<std::string> c;
      std::istringstream ls(line.substr(1));
      std::string cell;
      while (std::getline(ls, cell, '|')) c.push_back(cell.substr(1, cell.size() - 2));
      cells.push_back(c);
    }
    return cells;
  };
  const std::string base = "bench --synthetic tiny --concurrency -d 1000 -t 2 --gpu-memory 0.3";
  const test::CmdResult q = test::run_cli(base + " -n 8 --policy recency --kv-budget 25%");
  const test::CmdResult f = test::run_cli(base + " -n 8");
  ASSERT_EQ(q.code, 0) << q.out;
  ASSERT_EQ(f.code, 0) << f.out;
  const auto rq = rows(q.out), rf = rows(f.out);
  ASSERT_EQ(rq.size(), 1u) << q.out;
  ASSERT_EQ(rf.size(), 1u) << f.out;
  const int nq = std::stoi(rq[0][6]), nf = std::stoi(rf[0][6]);
  EXPECT_EQ(rq[0][3], "prefilled");
  EXPECT_EQ(rq[0][7], "device");
  EXPECT_EQ(rf[0][7], "device");
  EXPECT_GE(nf, 1);
  EXPECT_GE(nq, 3 * nf) << q.out << f.out;
  EXPECT_GT(std::stod(rq[0][10]), 0.0);  // decode tok/s
  // lsa on a synthetic model: a random indexer of its shape (what lsa costs, not what it picks).
  const test::CmdResult l = test::run_cli(base + " -n 70 --policy lsa --kv-budget 25%");
  ASSERT_EQ(l.code, 0) << l.out;
  ASSERT_EQ(rows(l.out).size(), 1u) << l.out;
  EXPECT_EQ(rows(l.out)[0][4], "lsa");
  EXPECT_GE(std::stoi(rows(l.out)[0][6]), 3 * nf) << l.out;
  // --synthetic-context: all but the last 128 prompt tokens get random K/V through the store: the
  // same requests, the same mirror bytes as prefilled ones.
  const test::CmdResult sc = test::run_cli(base + " -n 8 --policy recency --kv-budget 25% --synthetic-context");
  ASSERT_EQ(sc.code, 0) << sc.out;
  const auto rs = rows(sc.out);
  ASSERT_EQ(rs.size(), 1u) << sc.out;
  EXPECT_EQ(rs[0][3], "random 872 + prefilled 128");
  EXPECT_EQ(rs[0][6], rq[0][6]);  // requests
  EXPECT_EQ(rs[0][9], rq[0][9]);  // host GiB
  const test::CmdResult two = test::run_cli(base + " -n 8 --max-requests 2");
  ASSERT_EQ(two.code, 0) << two.out;
  EXPECT_EQ(rows(two.out)[0][6], "2");
  EXPECT_EQ(rows(two.out)[0][7], "--max-requests");
  const test::CmdResult none = test::run_cli("bench --synthetic tiny --concurrency -d 4000 -n 8 -t 2 --host-memory 0.0001");
  EXPECT_EQ(none.code, 1) << none.out;
  EXPECT_NE(none.out.find("not one request"), std::string::npos) << none.out;
}

}  // namespace
}  // namespace flashmem

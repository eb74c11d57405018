// Host cost of the lsa policy's Level-1 page ranking (memory/lsa.cpp) once the chunk scores are
// in: ensemble, threshold count, spread, positional contrast, and the top-pages pick of all 30
// layers, per cycle of τ = 64 decode steps (a 15% budget). The scorer is scripted (fixed random probabilities), so this measures
// the ranking alone, not the index_scores op. Divide by 64 for its share of one decode step.
//   build/bench/flashmem_bench_kernels --benchmark_filter=Lsa
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <vector>

#include "memory/lsa.h"
#include "ops/cpu/cpu_backend.h"

namespace flashmem {
namespace {

// Fixed probabilities per target layer, drawn once.
class FixedScorer final : public LsaScorer {
 public:
  FixedScorer(IndexKeyConfig c, int64_t n_chunks) : c_(std::move(c)) {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    prob_.resize(c_.layers.size());
    for (auto& p : prob_) {
      p.resize(static_cast<size_t>(n_chunks));
      for (float& x : p) x = u(rng) * u(rng);  // mostly low, some above θ
    }
  }
  const IndexKeyConfig& keys_config() const override { return c_; }
  void score(int t, const float*, int32_t, IndexKeys& keys, std::vector<float>& prob) override {
    prob.assign(prob_[t].begin(), prob_[t].begin() + keys.n_chunks(t));
  }

 private:
  IndexKeyConfig c_;
  std::vector<std::vector<float>> prob_;
};

// range(0): context tokens; range(1): contrast window (chunks).
void BM_LsaLevel1Ranking(benchmark::State& st) {
  const int64_t tokens = st.range(0);
  KvCacheConfig kv;  // the default model's KV shape, 16-token pages and chunks
  kv.n_layers = 30;
  kv.n_kv_heads = 3;
  kv.head_dim = 64;
  kv.page_tokens = 16;
  kv.max_tokens = tokens;
  IndexKeyConfig ic;
  ic.chunk_tokens = 16;
  ic.layers = {4, 8, 20};
  ic.rope.n_rot = 64;
  const int64_t n_pages = tokens / kv.page_tokens;
  auto scorer = std::make_shared<FixedScorer>(ic, n_pages);
  IndexerQuery q;
  q.layers = ic.layers;
  q.d_model = 576;
  q.rows.assign(3 * 576, 0.0f);
  q.position = static_cast<int32_t>(tokens);
  CpuBackend be(1);
  LsaOptions o;
  o.contrast = static_cast<int>(st.range(1));
  o.widen = false;
  LsaPolicy pol(kv, scorer, q, &be, o);
  std::vector<uint8_t> page(kv.page_bytes(), 0);
  for (int layer : ic.layers)
    for (int32_t pg = 0; pg < n_pages; ++pg) pol.on_page(layer, pg, page.data());
  SelectContext c;
  c.n_pages = n_pages;
  c.middle_begin = 4;
  c.middle_end = n_pages - 4;
  const int64_t budget = n_pages * 15 / 100;
  std::vector<int32_t> out;
  for (auto _ : st) {
    ++c.cycle;  // a new cycle: Level 1 runs again, then every layer takes its pages
    for (c.layer = 0; c.layer < kv.n_layers; ++c.layer) {
      out.clear();
      pol.select(c, budget, out);
      benchmark::DoNotOptimize(out.data());
    }
  }
  st.counters["chunks"] = static_cast<double>(n_pages);
  // Seconds per decode step: one cycle's ranking spread over its 64 steps.
  st.counters["per_step"] = benchmark::Counter(static_cast<double>(st.iterations()) * 64.0,
                                               benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_LsaLevel1Ranking)
    ->ArgsProduct({{8192, 131072, 1048576}, {0, 16}})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace flashmem

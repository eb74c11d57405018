// flashmem bench — prefill and decode throughput on random tokens, in the manner of
// llama-bench (pp: prompt processing of P tokens; tg: generating N tokens after D of context),
// so the two engines can be compared on the same machine and model. With -b B the pp tests
// prefill B prompts in one forward pass and the tg tests decode B sequences together
// (Model::forward_batch, one token each per step), reporting aggregate tok/s, as
// llama-batched-bench does. Each test first runs once unmeasured (llama-bench's warm-up: first
// touches of memory, lazy GPU set-up), then -r times; mean ± sd of the measured runs.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "engine/engine.h"
#include "models/synthetic.h"

namespace flashmem::cli {

namespace {
std::string synthetic_names() {
  std::string s;
  for (const SyntheticShape& sh : synthetic_shapes()) s += (s.empty() ? "" : ", ") + sh.name;
  return s;
}
std::string synthetic_types() {
  std::string s;
  for (const std::string& t : synthetic_weight_types()) s += (s.empty() ? "" : ", ") + t;
  return s;
}
}  // namespace

CLI::App* add_bench_command(CLI::App& app, BenchArgs& a) {
  CLI::App* c = app.add_subcommand("bench", "Measure prefill and decode tok/s on random tokens");
  CLI::Option* model = c->add_option("-m,--model", a.model, "GGUF model file");
  CLI::Option* synth =
      c->add_option("--synthetic", a.synthetic,
                    "Instead of a file, a model of a known shape with random weights, NAME[:TYPE] (" +
                        synthetic_names() + "; TYPE " + synthetic_types() + ", default bf16): for speed "
                        "and memory, never accuracy");
  model->excludes(synth);
  c->add_option("-p,--prefill", a.prefill, "Prompt lengths to time (comma list; 0: no prefill test, as llama-bench)")
      ->delimiter(',');
  c->add_option("-d,--depth", a.depth, "Context depths before decode (comma list)")->delimiter(',');
  c->add_option("-b,--batch", a.batch,
                "Sequences together in each test (comma list; aggregate tok/s): prefilled in one forward "
                "pass in the pp tests, decoded together in the tg tests")
      ->delimiter(',')
      ->check(CLI::Range(1, 1024));
  c->add_option("-n,--n-gen", a.n_gen, "Decode steps timed at each depth")->check(CLI::Range(1, 1 << 20));
  c->add_option("-r,--reps", a.reps, "Repetitions")->check(CLI::Range(1, 100));
  c->add_flag("--no-warmup", a.no_warmup,
              "Measure from the first run (by default each test runs once unmeasured first, as llama-bench does)");
  c->add_option("-t,--threads", a.threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 1024));
  add_backend_option(c, a.backend, a.cpu_dot);
  c->add_option("--kv-type", a.kv_type, "KV cache precision (q8: int8 with one f32 scale per token and kv head)")
      ->check(CLI::IsMember({"f16", "f32", "q8"}));
  c->add_option("--page-tokens", a.page_tokens, "Tokens per KV page")->check(CLI::Range(1, 4096));
  add_gpu_memory_option(c, a.gpu_memory_gb);
  c->add_option("--prefill-budget", a.prefill_budget,
                "Device KV budget for the pp tests (e.g. 14.5%): pages beyond it stream through the "
                "reserve as in `eval` and `run` under --kv-budget; tg tests keep the whole context");
  return c;
}

namespace {
struct Stat {
  double mean, sd;
};
Stat stat(const std::vector<double>& v) {
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= static_cast<double>(v.size());
  for (double x : v) s += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(s / static_cast<double>(v.size() - 1)) : 0.0};
}
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
// A sequence's KV resident on the backend (the full-KV path every backend runs): `pages` per
// layer, its whole length or a budget of it.
struct FullKv {
  FullKv(Engine& e, int64_t pages_per_layer)
      : cfg(e.kv_config()),
        pages(pages_per_layer),
        reserve(e.backend(), cfg.page_bytes(), pages * cfg.n_layers),
        recall(e.backend()),
        kv(cfg, pages, reserve, recall) {}
  KvCacheConfig cfg;
  int64_t pages;
  KvReserve reserve;
  RecallEngine recall;
  TieredKvStore kv;
};
}  // namespace

int bench_command(const BenchArgs& a) {
  FM_CHECK(!a.model.empty() || !a.synthetic.empty(), ErrorCode::kInvalidArgument,
           "bench needs --model FILE or --synthetic NAME");
  EngineOptions eo = engine_options(a);
  const KvBudget budget = KvBudget::parse(a.prefill_budget);
  std::vector<int64_t> prefill;  // -p 0: decode tests only
  for (int64_t p : a.prefill) {
    FM_CHECK(p >= 0, ErrorCode::kInvalidArgument, "prefill length ", p, " must be ≥ 0");
    if (p > 0) prefill.push_back(p);
  }
  for (int64_t d : a.depth) FM_CHECK(d >= 0, ErrorCode::kInvalidArgument, "depth ", d, " must be ≥ 0");
  auto eng = Engine::load(eo);
  const ModelInfo& mi = eng->info();
  FM_CHECK(mi.n_vocab > 100, ErrorCode::kUnsupported, "bench draws token ids from [100, n_vocab); the vocabulary has ",
           mi.n_vocab);
  // Every test's arguments are checked before the first one runs: a bad last -p or -d would
  // otherwise be found after minutes of timing the others.
  std::vector<int64_t> budget_pages_of;
  for (int64_t p : prefill) {
    FM_CHECK(p <= eng->n_ctx(), ErrorCode::kInvalidArgument, "prefill length ", p, " outside [1, ", eng->n_ctx(),
             "]");
    // The budget in pages, as the eval resolves it for a p-token context (≥ 2 pages).
    ResidencyOptions ro;
    ro.policy = "recency";
    ro.budget = budget;
    ro.sink_tokens = ro.tail_tokens = 0;
    ro.cycle = 1;
    budget_pages_of.push_back(budget.is_full() ? 0 : resolve_budget_pages(ro, eng->kv_config(), p));
  }
  for (int64_t d : a.depth)
    FM_CHECK(d + a.n_gen <= eng->n_ctx(), ErrorCode::kInvalidArgument, "depth ", d, " + ", a.n_gen,
             " exceeds the context ", eng->n_ctx());
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(100, mi.n_vocab - 1);
  const std::string where = backend_label(*eng);
  std::printf("| model | kv | backend | test | tok/s |\n|---|---|---|---|---|\n");
  for (size_t pi = 0; pi < prefill.size(); ++pi)
    for (const int b : a.batch) {
      const int64_t p = prefill[pi];
      const int64_t budget_pages = budget_pages_of[pi];
      std::vector<double> rates;
      for (int r = a.no_warmup ? 0 : -1; r < a.reps; ++r) {  // r = -1: the warm-up, not counted
        // b prompts of p tokens, each into its own store, in one forward pass (its micro-batches
        // share every matrix product; each sequence attends its own KV).
        std::vector<std::vector<int32_t>> toks(static_cast<size_t>(b), std::vector<int32_t>(p));
        for (auto& seq : toks)
          for (auto& t : seq) t = tok(rng);
        std::vector<std::unique_ptr<FullKv>> kvs;
        std::vector<std::vector<float>> outs(static_cast<size_t>(b), std::vector<float>(mi.n_vocab));
        std::vector<SequenceInput> batch;
        for (int s = 0; s < b; ++s) {
          // the p tokens (+ the open page), or the budget: never the whole context (a 128K
          // context of an 8B shape is 16 GiB a sequence)
          const int64_t pt = eng->kv_config().page_tokens;
          kvs.push_back(std::make_unique<FullKv>(*eng, budget_pages > 0 ? budget_pages : (p + pt - 1) / pt + 1));
          batch.push_back({toks[s], &kvs[s]->kv, outs[s].data()});
        }
        const double t0 = now_s();
        if (b == 1) eng->model().forward(toks[0], kvs[0]->kv, outs[0].data());
        else eng->model().forward_batch(batch);
        if (r >= 0) rates.push_back(static_cast<double>(b) * static_cast<double>(p) / (now_s() - t0));
      }
      const Stat s = stat(rates);
      const std::string under =
          budget_pages > 0 ? " @ " + budget.str() + " (" + std::to_string(budget_pages) + " pages)" : "";
      const std::string seqs = b > 1 ? " × " + std::to_string(b) + " seqs" : "";
      std::printf("| %s | %s | %s | pp%lld%s%s | %.2f ± %.2f |\n", mi.name.c_str(), a.kv_type.c_str(),
                  where.c_str(), static_cast<long long>(p), under.c_str(), seqs.c_str(), s.mean, s.sd);
      std::fflush(stdout);
    }
  // Each sequence's store holds its d + n_gen tokens, all resident.
  const int64_t pt = eng->kv_config().page_tokens;
  for (int64_t d : a.depth)
    for (const int b : a.batch) {
      std::vector<double> rates;
      for (int r = a.no_warmup ? 0 : -1; r < a.reps; ++r) {  // r = -1: the warm-up, not counted
        std::vector<std::unique_ptr<FullKv>> kvs;
        std::vector<std::vector<float>> outs(static_cast<size_t>(b), std::vector<float>(mi.n_vocab));
        std::vector<int32_t> next(static_cast<size_t>(b));
        for (int s = 0; s < b; ++s) {
          kvs.push_back(std::make_unique<FullKv>(*eng, (d + a.n_gen + pt - 1) / pt + 1));
          if (d > 0) {
            std::vector<int32_t> toks(d);
            for (auto& t : toks) t = tok(rng);
            eng->model().forward(toks, kvs[s]->kv, outs[s].data());
          }
          next[s] = tok(rng);
        }
        std::vector<SequenceInput> batch(static_cast<size_t>(b));
        const double t0 = now_s();
        for (int i = 0; i < a.n_gen; ++i) {
          for (int s = 0; s < b; ++s) batch[s] = {std::span<const int32_t>(&next[s], 1), &kvs[s]->kv, outs[s].data()};
          eng->model().forward_batch(batch);
          for (int s = 0; s < b; ++s) next[s] = argmax(outs[s].data(), mi.n_vocab);
        }
        if (r >= 0) rates.push_back(static_cast<double>(b) * a.n_gen / (now_s() - t0));
      }
      const Stat s = stat(rates);
      const std::string seqs = b > 1 ? " × " + std::to_string(b) + " seqs" : "";
      std::printf("| %s | %s | %s | tg%d @ d%lld%s | %.2f ± %.2f |\n", mi.name.c_str(), a.kv_type.c_str(),
                  where.c_str(), a.n_gen, static_cast<long long>(d), seqs.c_str(), s.mean, s.sd);
      std::fflush(stdout);
    }
  return 0;
}

}  // namespace flashmem::cli

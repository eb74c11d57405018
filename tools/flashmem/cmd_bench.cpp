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
#include "core/host_memory.h"
#include "engine/engine.h"
#include "engine/scheduler.h"
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
  c->add_option("-c,--ctx", a.n_ctx,
                "Context length in tokens (0: the model's; a --synthetic model is built with this one when "
                "it is longer, e.g. -c 1048576)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
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
  c->add_flag("--concurrency", a.concurrency,
              "For each depth D: the most requests of D prompt tokens and -n new ones whose KV reserves fit the "
              "device (--gpu-memory, else its free memory) and whose host mirrors fit the host (--host-memory, "
              "else what the OS has), prefilled, then decoded together under --policy/--kv-budget; reports "
              "aggregate and per-request tok/s, bytes and recalls");
  c->add_option("--host-memory", a.host_memory_gb, "--concurrency: cap in GB on all the requests' host mirrors")
      ->check(CLI::Range(0.0, 1e6));
  c->add_option("--max-requests", a.max_requests, "--concurrency: at most this many requests")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  c->add_flag("--synthetic-context", a.synthetic_context,
              "--concurrency: every prompt token but the last 128 gets random K/V written through the store "
              "(pages, host mirror, index keys) instead of a prefill, for contexts too long to prefill; "
              "speed and memory only");
  add_memory_options(c, a.memory);
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

namespace {

// bench --concurrency: per depth, the request count the memory arithmetic admits (the serve
// admission's: budget pages × layers × page bytes on the device, the whole mirror on the host),
// run through the scheduler: all prefilled, then decoded together.
int concurrency_bench(Engine& eng, const BenchArgs& a, const ResidencyOptions& ro) {
  const KvCacheConfig kc = eng.kv_config();
  const ModelInfo& mi = eng.info();
  const auto gib = [](double b) { return b / double(uint64_t{1} << 30); };
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(100, mi.n_vocab - 1);
  std::printf("| model | backend | ctx | prompt KV | policy | budget | requests | limited by | device KV GiB | "
              "host GiB | decode tok/s | per request | recall GB/s | recall share | steps recalling |\n"
              "|---|---|---:|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const int64_t d : a.depth) {
    FM_CHECK(d >= 1, ErrorCode::kInvalidArgument, "--concurrency needs a depth ≥ 1 (the prompt), not ", d);
    const int64_t final_tokens = d + a.n_gen;
    FM_CHECK(final_tokens <= eng.n_ctx(), ErrorCode::kInvalidArgument, "depth ", d, " + ", a.n_gen, " exceeds the context ",
             eng.n_ctx());
    const RequestMemory need = eng.request_memory(ro, final_tokens);  // as serve admits a request
    const uint64_t dev_share = need.device_bytes, host_share = need.host_bytes;
    uint64_t dev_room = eng.device_kv_cap();
    if (dev_room == 0) {
      const uint64_t free = eng.backend().memory_free().value_or(0), work = eng.working_memory();
      dev_room = free > work ? free - work : 0;
    }
    const uint64_t host_room = a.host_memory_gb > 0 ? static_cast<uint64_t>(a.host_memory_gb * 1e9)
                                                    : host_memory_available().value_or(0) / 10 * 9;
    const int64_t by_dev = static_cast<int64_t>(dev_room / dev_share);
    const int64_t by_host = static_cast<int64_t>(host_room / host_share);
    const int64_t n = std::min<int64_t>({by_dev, by_host, a.max_requests});
    const char* limit = n == by_dev ? "device" : n == by_host ? "host" : "--max-requests";
    FM_CHECK(n >= 1, ErrorCode::kOutOfMemory, "not one request of ", final_tokens, " tokens fits: its KV reserve takes ",
             gib(double(dev_share)), " GiB (", need.budget_pages, " pages × ", kc.n_layers, " layers × ", kc.page_bytes(),
             " B) of ", gib(double(dev_room)), " GiB, its host mirror ", gib(double(host_share)), " GiB of ",
             gib(double(host_room)), " GiB");
    SchedulerOptions so;
    so.max_decode = static_cast<int>(n);
    so.decodes_wait_for_prefills = true;
    Scheduler s(eng, so);
    GenerateOptions go;
    go.max_new_tokens = a.n_gen;
    go.stop_at_eos = false;
    go.memory = ro;
    go.memory.lsa.widen = false;  // a fixed device share, as serve admits requests
    constexpr int64_t kRealTail = 128;  // prefilled for real under --synthetic-context
    go.synthetic_context = a.synthetic_context && d > kRealTail ? d - kRealTail : 0;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int32_t> prompt(static_cast<size_t>(d));
      for (auto& t : prompt) t = tok(rng);
      s.add(std::make_unique<Request>(eng, prompt, go));
    }
    while (s.prefilling() > 0) s.step();
    const double t0 = now_s();
    const auto done = s.run();
    const double secs = now_s() - t0;
    int64_t tokens = 0;
    uint64_t rbytes = 0, dev_bytes = 0, host_bytes = 0;
    double rsecs = 0;
    int64_t rsteps = 0, steps = 0;
    for (const auto& r : done) {
      const GenerateResult& g = r->result();
      FM_CHECK(g.stop_reason != "error", ErrorCode::kInternal, "a request failed: ", g.error);
      tokens += static_cast<int64_t>(g.tokens.size());
      rbytes += g.kv.decode_recall.bytes;
      rsecs += g.kv.decode_recall.seconds;
      rsteps += g.kv.recall_steps;
      steps += g.decode_steps;
      dev_bytes += g.kv.peak.device();
      host_bytes += g.kv.final.mirror;
    }
    const std::string prompt_kv =
        go.synthetic_context ? "random " + std::to_string(go.synthetic_context) + " + prefilled " +
                                   std::to_string(d - go.synthetic_context)
                             : "prefilled";
    std::printf("| %s | %s | %lld | %s | %s | %s | %lld | %s | %.3f | %.3f | %.1f | %.2f | %.1f | %.1f%% | %lld of %lld |\n",
                mi.name.c_str(), backend_label(eng).c_str(), static_cast<long long>(final_tokens), prompt_kv.c_str(),
                ro.policy.c_str(),
                ro.budget.str().c_str(), static_cast<long long>(n), limit, gib(double(dev_bytes)),
                gib(double(host_bytes)), double(tokens) / secs, double(a.n_gen) / secs,
                rsecs > 0 ? double(rbytes) / rsecs / 1e9 : 0.0, 100.0 * rsecs / secs, static_cast<long long>(rsteps),
                static_cast<long long>(steps));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int bench_command(const BenchArgs& a) {
  FM_CHECK(!a.model.empty() || !a.synthetic.empty(), ErrorCode::kInvalidArgument,
           "bench needs --model FILE or --synthetic NAME");
  FM_CHECK(a.concurrency || (a.memory.policy == "full" && a.memory.kv_budget == "100%" && !a.synthetic_context &&
                             a.host_memory_gb == 0),
           ErrorCode::kInvalidArgument, "--policy, --kv-budget, --synthetic-context and --host-memory apply to "
           "--concurrency (the pp and tg tests keep the whole context; --prefill-budget streams a prefill)");
  EngineOptions eo = engine_options(a);
  eo.n_ctx = a.n_ctx;
  const KvBudget budget = KvBudget::parse(a.prefill_budget);
  std::vector<int64_t> prefill;  // -p 0: decode tests only
  for (int64_t p : a.prefill) {
    FM_CHECK(p >= 0, ErrorCode::kInvalidArgument, "prefill length ", p, " must be ≥ 0");
    if (p > 0) prefill.push_back(p);
  }
  for (int64_t d : a.depth) FM_CHECK(d >= 0, ErrorCode::kInvalidArgument, "depth ", d, " must be ≥ 0");
  if (a.concurrency) {
    const ResidencyOptions ro = residency_options(a.memory);  // bad flags fail before loading
    const bool lsa = policy_traits(ro.policy).needs_indexer;
    if (lsa && !a.synthetic.empty() && a.memory.indexer.empty()) eo.synthetic_indexer = true;  // costs only
    else eo.indexer_path = indexer_path(a.memory, a.model, lsa);
    auto eng = Engine::load(eo);
    return concurrency_bench(*eng, a, ro);
  }
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

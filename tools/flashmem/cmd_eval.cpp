// flashmem eval — accuracy against device KV footprint, through the real offload path.
//
//   flashmem eval -m MODEL --suite ruler --lengths 4k,8k --samples 20 --policy full,recency
//                 --kv-budget 10% --out results/ruler
//   flashmem eval -m MODEL --suite needle --haystack corpus/man,corpus/csv --lengths 4k
//                 --samples 12 --policy full,lsa --kv-budget 15% --out results/needle
//   flashmem eval --compare results/a results/b --plot cmp.png
//
// Every sample is prefilled once (with the smallest budget among the runs it still needs, so
// the device never held more than any of them) and decoded under each (policy, budget) in a
// fork of that prefill with its own reserve. One JSONL line per (sample, policy, budget) is
// appended and synced as soon as it is scored; a rerun skips what is done (resume).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>

#include "commands.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "eval/progress.h"
#include "eval/results.h"
#include "eval/ruler.h"
#include "eval/selection_trace.h"
#include "eval/word_filter.h"
#include "memory/policy.h"
#include "eval_suites.h"

namespace flashmem::cli {

CLI::App* add_eval_command(CLI::App& app, EvalArgs& a) {
  CLI::App* c = app.add_subcommand("eval", "Evaluate accuracy vs device KV footprint (RULER, needle, LongBench-v2, LongMemEval)");
  c->add_option("-m,--model", a.model, "GGUF model file");
  c->add_option("--suite", a.suite, "Benchmark suite")
      ->check(CLI::IsMember({"ruler", "needle", "longbench-v2", "longmemeval"}));
  c->add_option("--lengths", a.lengths, "Context lengths (RULER, needle), e.g. 4k,8k")
      ->delimiter(',')
      ->each([&a](const std::string&) { a.lengths_given = true; });
  c->add_option("--tasks", a.tasks, "Tasks (RULER: all or a list)")->delimiter(',');
  c->add_option("--haystack", a.haystacks,
                "Needle suite: directories of text files, one family each (named by the directory), "
                "repeatable or comma-separated")
      ->delimiter(',')
      ->check(CLI::ExistingDirectory);
  c->add_option("--samples", a.samples, "Samples per task and length (RULER, needle: per family) or the first N records")
      ->check(CLI::Range(1, 1 << 20));
  c->add_option("--seed", a.seed, "Seed of sample generation");
  c->add_option("--policy", a.policies, "Residency policies, comma-separated")->delimiter(',')
      ->check(CLI::IsMember(policy_names()));
  c->add_option("--kv-budget", a.budgets, "Device KV budgets, comma-separated (10%, 32pages)")->delimiter(',');
  c->add_option("--cycle", a.memory.cycle, "Decode steps between residency selections")->check(CLI::Range(1, 1 << 20));
  c->add_option("--sink", a.memory.sink, "First tokens always resident")->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  c->add_option("--tail", a.memory.tail, "Newest tokens always resident")->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  c->add_option("--page-tokens", a.page_tokens,
                "Tokens per KV page, the unit of residency (default 64; when --policy lists lsa, the indexer's chunk size)")
      ->check(CLI::Range(1, 4096))
      ->default_str("auto");
  c->add_option("--kv-type", a.kv_type, "KV cache precision (q8: int8 with one f32 scale per token and kv head)")
      ->check(CLI::IsMember({"f16", "f32", "q8"}));
  add_lsa_options(c, a.memory);
  c->add_option("--data", a.data, "Data file (LongBench-v2 / LongMemEval JSON)")->check(CLI::ExistingFile);
  c->add_option("--max-length", a.max_length, "Context limit for LongBench-v2/LongMemEval prompts (middle-truncated)");
  c->add_option("--out", a.out, "Results directory (results.jsonl, summary.md, plot.png)");
  c->add_option("-t,--threads", a.threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 1024));
  add_backend_option(c, a.backend, a.cpu_dot);
  c->add_option("--compare", a.compare, "Render result directories side by side instead of running");
  c->add_option("--summarize", a.summarize,
                "Rewrite DIR's summary.md/json and plot from its results.jsonl (no model needed; "
                "e.g. after concatenating the results of runs split by task)");
  c->add_option("--lsa-trace", a.lsa_trace,
                "Append lsa's Level-1 selections (chunk scores, chosen pages) and the answers' token spans to this JSONL file");
  c->add_option("--plot", a.plot, "PNG of accuracy vs device KV footprint (default: OUT/plot.png)");
  return c;
}

int64_t parse_length(const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  const std::string unit = end ? end : "";
  FM_CHECK(end != s.c_str() && v > 0 && (unit.empty() || unit == "k" || unit == "K"),
           ErrorCode::kInvalidArgument, "bad length '", s, "' (expected e.g. 4k or 4096)");
  return static_cast<int64_t>(unit.empty() ? v : v * 1024);
}

namespace {


struct Run {
  std::string policy;
  std::string budget;
  ResidencyOptions memory;
};

int compare_command(const EvalArgs& a) {
  std::fputs(eval::render_compare_markdown(a.compare).c_str(), stdout);
  std::vector<eval::EvalRecord> all;
  for (const auto& d : a.compare) {
    auto r = eval::load_results(d);
    all.insert(all.end(), r.begin(), r.end());
  }
  if (!a.plot.empty()) {
    eval::write_plot(all, a.plot);
    std::fprintf(stderr, "[flashmem] plot written to %s\n", a.plot.c_str());
  }
  return 0;
}

}  // namespace

// Summary and plot of a results directory, as a run writes them at its end.
void write_outputs(const std::string& dir, const std::vector<eval::EvalRecord>& records,
                   const std::string& plot_path) {
  const eval::Summary summary = eval::summarize(records);
  eval::write_summary(dir, summary);
  std::fputs(eval::render_summary_markdown(summary).c_str(), stdout);
  const std::string plot = plot_path.empty() ? dir + "/plot.png" : plot_path;
  try {
    eval::write_plot(summary, plot);
    std::fprintf(stderr, "[flashmem] summary in %s/summary.md, plot %s\n", dir.c_str(), plot.c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "[flashmem] summary in %s/summary.md; no plot: %s\n", dir.c_str(), e.what());
  }
}

int eval_command(const EvalArgs& a) {
  if (!a.compare.empty()) return compare_command(a);
  if (!a.summarize.empty()) {
    const auto records = eval::load_results(a.summarize);
    FM_CHECK(!records.empty(), ErrorCode::kInvalidArgument, "no results in ", a.summarize);
    write_outputs(a.summarize, records, a.plot);
    return 0;
  }
  FM_CHECK(!a.model.empty(), ErrorCode::kInvalidArgument, "eval needs --model (or --compare DIR...)");
  FM_CHECK(!a.out.empty(), ErrorCode::kInvalidArgument, "eval needs --out DIR for its results");
  const bool needle = a.suite == "needle";
  FM_CHECK(!needle || !a.haystacks.empty(), ErrorCode::kInvalidArgument,
           "--suite needle needs --haystack DIR... (a directory of text files per family)");
  FM_CHECK(needle || a.haystacks.empty(), ErrorCode::kInvalidArgument, "--haystack is for --suite needle, not ",
           a.suite);
  FM_CHECK(!needle || a.lengths_given, ErrorCode::kInvalidArgument, "--suite needle needs --lengths (e.g. 2k,4k)");
  FM_CHECK(!needle || a.tasks == std::vector<std::string>{"all"}, ErrorCode::kInvalidArgument,
           "--tasks is for --suite ruler; the needle suite's tasks are its --haystack families");
  // Flags a suite does not read are refused, not ignored.
  if (a.suite == "ruler" || needle) {
    FM_CHECK(a.data.empty(), ErrorCode::kInvalidArgument, "--data ", a.data,
             " is for --suite longbench-v2 or longmemeval: ", a.suite, " generates its samples (drop --data)");
    FM_CHECK(a.max_length == 0, ErrorCode::kInvalidArgument,
             "--max-length is for --suite longbench-v2 or longmemeval: ", a.suite, "'s lengths are --lengths");
  } else {
    FM_CHECK(!a.data.empty(), ErrorCode::kInvalidArgument, "--suite ", a.suite, " needs --data FILE");
  }

  // Everything that can be wrong with the request is checked before anything is written.
  std::vector<Run> runs;
  for (const auto& p : a.policies) {
    const std::vector<std::string> budgets = policy_traits(p).keeps_all ? std::vector<std::string>{"100%"} : a.budgets;
    for (const auto& b : budgets) {
      MemoryArgs m = a.memory;
      m.policy = p;
      m.kv_budget = b;
      runs.push_back(Run{p, KvBudget::parse(b).str(), residency_options(m)});
    }
  }
  FM_CHECK(!runs.empty(), ErrorCode::kInvalidArgument, "no (policy, budget) to evaluate");
  std::vector<int64_t> lengths;
  for (const auto& l : a.lengths) lengths.push_back(parse_length(l));

  EngineOptions eo = engine_options(a);
  const bool lsa_wanted =
      std::any_of(a.policies.begin(), a.policies.end(), [](const std::string& p) { return policy_traits(p).needs_indexer; });
  FM_CHECK(a.lsa_trace.empty() || lsa_wanted, ErrorCode::kInvalidArgument,
           "--lsa-trace records lsa's selections: add lsa to --policy");
  // The indexer is checked (against the model, and the page size against its chunks) by the
  // first load, before the model's weights are prepared.
  eo.indexer_path = indexer_path(a.memory, a.model, lsa_wanted);
  const auto settings = indexer_settings(eo.indexer_path);
  eo.page_tokens = page_tokens_for(a.page_tokens, settings, eo.indexer_path, lsa_wanted);
  for (Run& r : runs) apply_lsa_metadata(settings, a.memory.lsa_given, eo.indexer_path, r.memory.lsa);
  auto probe = Engine::load(eo);  // for the trained context and the tokenizer
  const int64_t n_ctx_train = probe->info().n_ctx_train;
  int64_t need_ctx = 0;
  for (int64_t l : lengths) {
    FM_CHECK(l <= n_ctx_train, ErrorCode::kOutOfRange, "length ", l,
             " exceeds the model's context of ", n_ctx_train, " tokens");
    need_ctx = std::max(need_ctx, l);
  }
  if (a.suite != "ruler" && !needle) need_ctx = a.max_length > 0 ? std::min<int64_t>(a.max_length, n_ctx_train) : n_ctx_train;
  probe.reset();
  eo.n_ctx = need_ctx;
  auto eng = Engine::load(eo);
  // The full KV of a sample at f16, the model's native KV precision: what a q8 run's device
  // bytes are set against when its saving is compared with f16 runs (pages × page bytes).
  const auto full_f16 = [kc = eng->kv_config()](uint64_t full_kv) {
    KvCacheConfig f16 = kc;
    f16.type = KvType::kF16;
    return static_cast<uint64_t>(static_cast<double>(full_kv) * f16.page_bytes() / kc.page_bytes() + 0.5);
  };
  const std::string where = backend_label(*eng);
  // Which indexer lsa records came from: its file name and a hash of its bytes.
  nlohmann::json indexer_id;
  if (!eo.indexer_path.empty()) {
    std::ifstream in(eo.indexer_path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(eval::fnv1a64(bytes)));
    indexer_id = {{"file", std::filesystem::path(eo.indexer_path).filename().string()}, {"fnv1a64", hex}};
  }

  SuiteRequest req;
  req.suite = a.suite;
  req.lengths = lengths;
  req.tasks = a.tasks;
  req.haystacks = a.haystacks;
  req.samples = a.samples;
  req.seed = a.seed;
  req.data = a.data;
  req.max_length = need_ctx;
  const std::vector<SuiteItem> items = make_suite_items(*eng, req);  // errors before writing
  // Every sample's prompt must fit the context and every (policy, budget) must resolve for it
  // (a budget below sink + tail + one cycle's pages is refused with the arithmetic) before the
  // first prefill, not when a sample hours into the run reaches it.
  const KvCacheConfig kc = eng->kv_config();
  std::vector<std::vector<int32_t>> prompts;
  prompts.reserve(items.size());
  for (const SuiteItem& item : items) {
    prompts.push_back(eng->tokenizer().encode(item.prompt, true, true));
    const int64_t n_prompt = static_cast<int64_t>(prompts.back().size());
    FM_CHECK(n_prompt < eng->n_ctx(), ErrorCode::kOutOfRange, item.prompt_id, " has ", n_prompt,
             " tokens but the context holds ", eng->n_ctx());
    const int64_t final_tokens = std::min<int64_t>(eng->n_ctx(), n_prompt + std::max(item.max_new_tokens, 1));
    for (const Run& r : runs) resolve_budget_pages(r.memory, kc, final_tokens);
  }

  eval::ResultsWriter writer(a.out);
  // A directory holds one KV precision: resuming it with another would mix them in one table.
  for (const eval::EvalRecord& r : writer.records()) {
    const std::string had = eval::kv_type_of(r);
    FM_CHECK(had == a.kv_type, ErrorCode::kInvalidArgument, a.out, "/results.jsonl holds --kv-type ", had,
             " records (", r.prompt_id, "); give --kv-type ", had, " to resume it, or another --out");
  }
  std::ofstream trace;
  if (!a.lsa_trace.empty()) {
    trace.open(a.lsa_trace, std::ios::app);
    FM_CHECK(trace.is_open(), ErrorCode::kIo, "cannot open the lsa trace ", a.lsa_trace);
  }
  eval::Progress progress(static_cast<int64_t>(items.size() * runs.size()), "eval " + a.suite);
  for (size_t i = 0; i < items.size(); ++i) {
    const SuiteItem& item = items[i];
    std::vector<const Run*> todo;
    for (const Run& r : runs) {
      if (writer.done(eval::ResultKey{item.prompt_id, r.policy, r.budget})) progress.skip(1, item.prompt_id);
      else todo.push_back(&r);
    }
    if (todo.empty()) continue;
    const std::vector<int32_t>& prompt = prompts[i];
    // Prefill once under the smallest budget any pending run has.
    const int64_t final_tokens = std::min<int64_t>(eng->n_ctx(), static_cast<int64_t>(prompt.size()) + item.max_new_tokens);
    const Run* smallest = todo.front();
    for (const Run* r : todo)
      if (resolve_budget_pages(r->memory, kc, final_tokens) < resolve_budget_pages(smallest->memory, kc, final_tokens))
        smallest = r;
    auto pre = eng->prefill(prompt, smallest->memory, item.max_new_tokens);
    std::optional<std::vector<eval::AnswerSpan>> spans;  // --lsa-trace: the answers in this prompt
    // Each pending run decodes a fork of this prefill. Those that decode step by step run
    // together, one token of each per forward pass (on the CPU each gets bit for bit what it
    // gets alone); a policy that replays a recorded pass (oracle) runs on its own.
    std::vector<GenerateOptions> gos(todo.size());
    std::vector<GenerateResult> results(todo.size());
    std::vector<const Request*> requests(todo.size(), nullptr);
    Scheduler together(*eng);
    for (size_t k = 0; k < todo.size(); ++k) {
      GenerateOptions& go = gos[k];
      go.max_new_tokens = item.max_new_tokens;
      go.memory = todo[k]->memory;
      go.stop_strings = item.stop_strings;
      go.lsa_trace = trace.is_open() && policy_traits(todo[k]->policy).needs_indexer;
      if (policy_traits(go.memory.policy).replays_trace) {
        results[k] = eng->decode(*pre, go);
        continue;
      }
      auto r = std::make_unique<Request>(*eng, *pre, go);
      requests[k] = r.get();
      together.add(std::move(r));
    }
    const int64_t n_together = static_cast<int64_t>(todo.size()) - std::count(requests.begin(), requests.end(), nullptr);
    for (const auto& done : together.run()) {
      const size_t k = static_cast<size_t>(std::find(requests.begin(), requests.end(), done.get()) - requests.begin());
      results[k] = done->result();
      FM_CHECK(results[k].stop_reason != "error", ErrorCode::kInternal, item.prompt_id, " under ", todo[k]->policy, " ",
               todo[k]->budget, ": ", results[k].error);
    }
    for (size_t k = 0; k < todo.size(); ++k) {
      const Run* r = todo[k];
      const GenerateOptions& go = gos[k];
      const GenerateResult& g = results[k];
      eval::EvalRecord rec;
      rec.suite = a.suite;
      rec.task = item.task;
      rec.length = item.length;
      rec.sample_index = item.index;
      rec.prompt_id = item.prompt_id;
      rec.seed = a.seed;
      rec.policy = r->policy;
      rec.budget = r->budget;
      rec.prompt_tokens = static_cast<int64_t>(prompt.size());
      rec.prediction = g.text;
      rec.answers = item.answers;
      rec.score = item.score(g.text);
      rec.device_kv_bytes_mean = g.kv.mean_device_bytes;
      rec.device_kv_bytes_peak = g.kv.peak.device();
      rec.full_kv_bytes = g.kv.final.full_kv;
      rec.prefill_seconds = g.prefill_seconds;
      rec.decode_seconds = g.decode_seconds;
      rec.generated_tokens = static_cast<int64_t>(g.tokens.size());
      rec.synthetic_substitute = item.synthetic_substitute;
      // Sequences this run shared its decode passes with (itself included).
      const int64_t decoded_together = requests[k] && together.stats().decode_passes > 0 ? n_together : 1;
      rec.extra = {{"budget_pages", g.kv.budget_pages}, {"page_tokens", eo.page_tokens}, {"kv_type", a.kv_type},
                   {"full_kv_bytes_f16", full_f16(g.kv.final.full_kv)}, {"stop_reason", g.stop_reason},
                   {"recalled_pages", g.kv.recall.pages}, {"cycles", g.kv.cycles},
                   {"prefill_shared", todo.size() > 1}, {"decoded_together", decoded_together},
                   {"backend", where}};
      for (const auto& [key, v] : item.extra.items()) rec.extra[key] = v;
      if (policy_traits(r->policy).needs_indexer) {
        rec.extra["widened_at_step"] = g.kv.widened_at_step;
        rec.extra["widen_reason"] = g.kv.widen_reason;
        rec.extra["lsa_kept_fraction"] = g.kv.lsa_kept_fraction;
        rec.extra["lsa_absent_mass"] = g.kv.lsa_absent_mass;
        const LsaOptions& lo = r->memory.lsa;  // as run: flags, else the checkpoint's settings
        rec.extra["lsa_threshold"] = lo.threshold;
        rec.extra["lsa_observe"] = lo.observe;
        rec.extra["lsa_observe_top_p"] = lo.observe_top_p;
        rec.extra["lsa_observe_spread"] = lo.observe_spread;
        rec.extra["lsa_widen_absent"] = lo.widen_absent;
        rec.extra["lsa_spread"] = lo.spread;
        rec.extra["lsa_contrast"] = lo.contrast;
        rec.extra["lsa_layers"] = eng->indexer()->keys_config().layers;
        rec.extra["indexer"] = indexer_id;
      }
      writer.append(rec);
      if (go.lsa_trace) {
        if (!spans) {  // once per prompt, whatever the lsa budgets
          std::vector<std::string> pieces;
          pieces.reserve(prompt.size());
          for (int32_t t : prompt) pieces.push_back(eng->tokenizer().token_bytes(t));
          spans = eval::answer_spans(pieces, item.answers);
        }
        trace << eval::trace_line(rec, eo.page_tokens, eng->indexer()->keys_config().chunk_tokens, *spans, g.lsa_trace).dump()
              << '\n';
        trace.flush();
        FM_CHECK(trace.good(), ErrorCode::kIo, "cannot write the lsa trace ", a.lsa_trace);
      }
      progress.tick(1, item.task + " " + std::to_string(item.length) + " " + r->policy + " " + r->budget);
    }
  }
  progress.finish();
  write_outputs(a.out, writer.records(), a.plot);
  return 0;
}

}  // namespace flashmem::cli

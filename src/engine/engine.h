// flashmem/engine/engine.h — a loaded model with its tokenizer, and the generation loop.
//
//   Engine eng = Engine::load({.model_path = "smollm2.gguf"});
//   auto prompt = eng.tokenizer().encode(eng.chat().render({{"user", "Hi"}}, true), true, true);
//   GenerateResult r = eng.generate(prompt, opts, [](std::string_view s) { fputs(...); });
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/query_tap.h"
#include "engine/sampler.h"
#include "io/chat_template.h"
#include "io/gguf.h"
#include "io/tokenizer.h"
#include "memory/kv_cache.h"
#include "memory/observation.h"
#include "memory/residency.h"
#include "models/model.h"
#include "ops/backend.h"

namespace flashmem {

struct IndexerModel;

struct EngineOptions {
  std::string model_path;
  // Instead of a file: a model of a known shape with generated weights, "NAME[:TYPE]"
  // (models/synthetic.h; for speed and memory measurements), drawn from synthetic_seed.
  std::string synthetic;
  uint64_t synthetic_seed = 0;
  // With a synthetic model and no indexer_path: a Memory Indexer of random weights for its shape
  // (≥ 12 heads, rank 128, three target layers), so lsa's costs can be measured.
  bool synthetic_indexer = false;
  std::string backend = "cpu";   // "cpu" or "cuda" (see make_backend)
  int n_threads = 0;             // CPU threads; 0: ThreadPool::default_threads()
  CpuDot cpu_dot = CpuDot::kQ8;  // CPU decode dot products (ops/backend.h)
  int64_t n_ctx = 0;             // 0: the model's training context
  KvType kv_type = KvType::kF16;
  int page_tokens = 64;
  std::string indexer_path;      // a trained Memory Indexer (safetensors) for policy lsa
  // Cap of the engine's device KV reserve, which every request's budget is admitted into
  // (0: the backend's memory is the cap).
  uint64_t device_kv_bytes = 0;
  // Host memory a request's KV mirror may take (0: what the OS reports available when the
  // request starts). A request whose mirror would not fit is refused before it runs.
  uint64_t host_kv_bytes = 0;
  // Cap on everything the engine allocates on its backend: weights, working memory and the KV
  // reserve (0: none; `--gpu-memory`, to show what a smaller device would serve). The reserve's
  // cap is then what the weights and Engine::working_memory() leave (or device_kv_bytes if lower).
  uint64_t gpu_memory_bytes = 0;
};

struct GenerateOptions {
  int max_new_tokens = 256;
  SamplerParams sampling;
  std::vector<std::string> stop_strings;  // generation ends before the first occurrence
  bool stop_at_eos = true;
  ResidencyOptions memory;  // policy, KV budget, cycle, sink, tail (default: full, 100%)
  // Teacher forcing: when given, step i feeds forced_tokens[i] (instead of the sampled token)
  // and counts whether the model's argmax agreed (GenerateResult::forced_agree).
  std::vector<int32_t> forced_tokens;
  // Benchmarks at contexts too long to prefill: the first N prompt tokens' K/V are random
  // values written through the store (pages, mirror, index keys) without running the model;
  // the rest of the prompt is prefilled as usual. What such a request generates is noise.
  int64_t synthetic_context = 0;
  // Observers (flashmem dump): a hook around every decode-mode attention, a call before each
  // decode forward pass with its step number (0 = the first token after the prompt), and a tap
  // on each decode token's layer inputs (Engine::prefill takes one for the prompt's last token).
  AttendHook* attend_hook = nullptr;
  std::function<void(int64_t step)> on_step;
  ActivationTap* tap = nullptr;
  // lsa: keep every Level-1 pass (chunk scores and chosen pages) in GenerateResult::lsa_trace.
  bool lsa_trace = false;
};

// What the request's KV cost, measured by the store (DESIGN.md §4: never estimated).
struct KvReport {
  std::string policy;
  std::string budget;            // as given, e.g. "10%"
  int64_t budget_pages = 0;      // device pages per layer
  uint64_t reserve_bytes = 0;    // the device reserve allocated for the request
  KvFootprint final;             // at the end
  KvFootprint peak;              // when device() was largest (prefill included)
  double mean_device_bytes = 0;  // device bytes averaged over decode steps
  RecallStats recall;
  RecallStats decode_recall;     // the decode steps' share of `recall` (the prefill's streaming left out)
  int64_t recall_steps = 0;      // decode steps that recalled pages (and so waited for them) …
  double recall_wait_seconds = 0;  // … and the time those recalls took
  int64_t cycles = 0;
  double oracle_pass_seconds = 0; // the oracle's recording pass (not in prefill/decode times)
  // lsa's needle fallback: the request moved to a full budget at this decode step (−1: never).
  int64_t widened_at_step = -1;
  std::string widen_reason;
  double lsa_kept_fraction = -1;  // middle chunks above θ at the first Level-1 pass (lsa)
  // Share of the prompt's observed attention outside the pages chosen at the first Level-1 pass
  // (lsa with the prompt observation; −1: none).
  double lsa_absent_mass = -1;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (including a final EOS, if any)
  std::string text;             // decoded text, cut before a stop string
  std::string stop_reason;      // "eos", "stop_string", "length", "context", "cancelled", "error"
  int64_t n_prompt = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;    // time of the decode loop (sampling + decode_steps forwards)
  int64_t decode_steps = 0;     // single-token forward passes run after prefill
  size_t kv_bytes_per_token = 0;
  int64_t forced_agree = 0;     // teacher forcing: steps whose argmax was the forced token
  KvReport kv;
  std::vector<LsaSelection> lsa_trace;  // GenerateOptions::lsa_trace (until a widen, if any)
  std::string error;            // stop_reason "error": what went wrong (the request alone ended)
};

// A prompt after prefill, ready to be decoded under one or more residency policies. Prefill is
// exact attention whatever the budget (it streams pages through the reserve), so one prefill
// can serve every policy whose budget is at least the prefill's: each decode forks the KV into
// a store of its own budget. Every store's device pages come from the engine's one reserve
// (Engine::kv_reserve), admitted at the store's creation.
//
// A prefill may run in chunks (Request does, between other requests' decode steps): next_chunk
// gives the next forward pass's input, advance records that it ran.
struct Prefilled {
  std::vector<int32_t> prompt;
  std::vector<float> logits;  // after the last prompt token
  int max_new_tokens = 0;     // the request length budgets are resolved for
  double seconds = 0;
  std::unique_ptr<RecallEngine> recall;
  std::unique_ptr<TieredKvStore> kv;
  IndexerQuery query;  // the last prompt token's indexer inputs (when an indexer is loaded)
  int64_t done = 0;    // prompt tokens prefilled so far
  std::unique_ptr<PromptObserver> observer;  // lsa's prompt observation, while prefilling
  std::unique_ptr<QueryTap> tap;             // fills `query` (and feeds a caller's tap)

  bool complete() const { return done == static_cast<int64_t>(prompt.size()); }
  // The next ≤ max_tokens prompt tokens (all that are left when max_tokens ≤ 0); the last chunk
  // asks for the logits.
  SequenceInput next_chunk(int64_t max_tokens);
  // After next_chunk's forward pass of n tokens took `secs`; the last one ends the observation.
  void advance(int64_t n, double secs);
};

// What a request holds at most, decided before it runs: device pages per layer under its
// budget, its KV reserve (those pages × layers × page bytes) and its host mirror at its longest.
// serve admits by it; bench --concurrency counts how many fit.
struct RequestMemory {
  int64_t budget_pages = 0;
  uint64_t device_bytes = 0;
  uint64_t host_bytes = 0;
};

class Engine {
 public:
  // Loads and checks everything; throws flashmem::Error on any problem. What the file's
  // metadata and the indexer's decide (context, vocabulary, indexer shape, page size vs the
  // indexer's chunks) is checked before any weight is prepared.
  static std::unique_ptr<Engine> load(const EngineOptions& opts);

  const ModelInfo& info() const { return model_->info(); }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  // The chat template; throws Error(kUnsupported) if the model has none flashmem knows.
  const ChatTemplate& chat() const;
  const GgufFile& file() const { return file_; }
  int64_t n_ctx() const { return n_ctx_; }
  KvType kv_type() const { return opts_.kv_type; }
  Backend& backend() { return *backend_; }
  // The Memory Indexer policy lsa scores with (loaded from opts.indexer_path, or set here).
  const std::shared_ptr<LsaScorer>& indexer() const { return indexer_; }
  // Error(kInvalidArgument) when the page size is not a multiple of the scorer's chunks.
  void set_indexer(std::shared_ptr<LsaScorer> s);
  Model& model() { return *model_; }
  // The device reserve every request's KV store takes its page slots from: one per engine,
  // growing at admission up to device_kv_cap(), shrinking as requests end.
  KvReserve& kv_reserve() { return *reserve_; }
  // The KV reserve's cap in bytes (0: none, it grows until the backend runs out).
  uint64_t device_kv_cap() const { return device_kv_cap_; }
  // Working memory set aside under --gpu-memory for the forward pass (activations of a 512-token
  // micro-batch, 64 rows of logits, split-attention partials and library workspaces).
  uint64_t working_memory() const;

  // Shape of this engine's KV (layers, heads, page size, context, precision).
  KvCacheConfig kv_config() const;
  // A fresh full-KV cache sized for this engine's context (the reference path).
  PagedKvCache new_cache() const;

  // Generates after `prompt`, streaming text pieces (complete UTF-8, with stop strings held
  // back until they are ruled out) to on_text. Throws Error(kOutOfRange) when the prompt does
  // not fit the context, Error(kInvalidArgument) for bad memory options.
  //
  // KV goes through the tiered store: a device reserve of the request's budget in front of a
  // host mirror; opts.memory picks the residency policy. The oracle policy runs a recording
  // full-attention pass first.
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                          const std::function<void(std::string_view)>& on_text = {});

  // Prefills `prompt` into a tiered store with the budget `memory` gives for a request of
  // max_new_tokens more tokens (same checks as generate). `tap` observes the last prompt token.
  std::unique_ptr<Prefilled> prefill(const std::vector<int32_t>& prompt,
                                     const ResidencyOptions& memory, int max_new_tokens,
                                     ActivationTap* tap = nullptr);
  // Writes random K/V for the first n prompt tokens of p through its store (Prefilled::done
  // becomes n), in place of their prefill (GenerateOptions::synthetic_context). n must leave
  // at least one prompt token to prefill.
  void fill_synthetic(Prefilled& p, int64_t n);
  // The same with nothing run yet: the checks done and the store allocated (its device reserve
  // is the request's admission); Prefilled::next_chunk/advance run it.
  std::unique_ptr<Prefilled> begin_prefill(const std::vector<int32_t>& prompt,
                                           const ResidencyOptions& memory, int max_new_tokens,
                                           ActivationTap* tap = nullptr);
  // Decodes a fork of `p` under opts.memory; `p` is left as it was. opts.max_new_tokens must
  // equal p.max_new_tokens and the budget must be ≥ the prefill's (Error kInvalidArgument):
  // the device then never held more than this request's budget.
  GenerateResult decode(const Prefilled& p, const GenerateOptions& opts,
                        const std::function<void(std::string_view)>& on_text = {});

  // Error(kInvalidArgument) for an empty prompt or a token outside the vocabulary,
  // Error(kOutOfRange) when it leaves no room in the context for a generated token.
  void check_prompt(const std::vector<int32_t>& prompt) const;
  // Error(kOutOfMemory), with the arithmetic, when a KV mirror of final_tokens tokens (every
  // page of every layer, in host memory) does not fit EngineOptions::host_kv_bytes or what the
  // OS has available: refused up front rather than swapped or killed part-way.
  void check_host_mirror(int64_t final_tokens) const;
  // RequestMemory of a request whose KV reaches final_tokens under `memory` (Error as
  // resolve_budget_pages for a budget too small).
  RequestMemory request_memory(const ResidencyOptions& memory, int64_t final_tokens) const;

 private:
  Engine(const EngineOptions& opts, GgufFile file, std::shared_ptr<IndexerModel> indexer);

  EngineOptions opts_;
  GgufFile file_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KvReserve> reserve_;
  uint64_t device_kv_cap_ = 0;
  std::shared_ptr<LsaScorer> indexer_;
  Tokenizer tokenizer_;
  std::optional<ChatTemplate> chat_;
  std::string chat_error_;
  int64_t n_ctx_ = 0;
};

}  // namespace flashmem

#include "engine/engine.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "memory/indexer_scorer.h"
#include "memory/observation.h"

namespace flashmem {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string: that
// much must be held back, since the next token may complete the stop string.
size_t held_back(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops)
    for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  return hold;
}

// Keeps an IndexerQuery up to date with the model's target-layer inputs (lsa's Level 1 reads it).
class QueryTap final : public ActivationTap {
 public:
  QueryTap(Model& m, IndexerQuery& q) : m_(m), q_(q) { m_.set_tap(this); }
  ~QueryTap() override { m_.set_tap(nullptr); }
  std::span<const int> layers() const override { return q_.layers; }
  void on_layer_input(int layer, int32_t position, const float* x) override {
    const auto it = std::lower_bound(q_.layers.begin(), q_.layers.end(), layer);
    std::copy_n(x, q_.d_model, q_.rows.begin() + (it - q_.layers.begin()) * q_.d_model);
    q_.position = position;
  }

 private:
  Model& m_;
  IndexerQuery& q_;
};

}  // namespace

namespace {

// The page size must be a whole number of the indexer's chunks: lsa ranks pages by the chunks
// they hold. Error(kInvalidArgument): a flag (--page-tokens) that does not fit the indexer.
void check_page_tokens(int page_tokens, int chunk_tokens, const std::string& indexer) {
  FM_CHECK(chunk_tokens >= 1 && page_tokens % chunk_tokens == 0, ErrorCode::kInvalidArgument, "--page-tokens ",
           page_tokens, " is not a multiple of the ", chunk_tokens, "-token chunks of the indexer ", indexer,
           " (use a multiple of ", chunk_tokens, ", e.g. ", 4 * chunk_tokens, ")");
}

}  // namespace

Engine::Engine(const EngineOptions& opts, GgufFile file, std::shared_ptr<IndexerModel> indexer)
    : opts_(opts),
      file_(std::move(file)),
      backend_(make_backend(opts.backend, opts.n_threads, opts.cpu_dot)),
      model_(load_model(file_, *backend_)),
      tokenizer_(Tokenizer::from_gguf(file_)) {
  try {
    chat_ = ChatTemplate::from_gguf(file_);
  } catch (const Error& e) {
    chat_error_ = e.what();  // only an error if --chat is used
  }
  const ModelInfo& mi = model_->info();
  FM_CHECK(mi.n_vocab == tokenizer_.vocab_size(), ErrorCode::kFormat, "the tokenizer has ",
           tokenizer_.vocab_size(), " tokens but the model has ", mi.n_vocab, " logits");
  n_ctx_ = opts.n_ctx > 0 ? opts.n_ctx : mi.n_ctx_train;
  if (indexer) indexer_ = make_indexer_scorer(std::move(indexer), *backend_);
}

std::unique_ptr<Engine> Engine::load(const EngineOptions& opts) {
  FM_CHECK(!opts.model_path.empty(), ErrorCode::kInvalidArgument, "no model path given");
  FM_CHECK(opts.n_ctx >= 0, ErrorCode::kInvalidArgument, "context must be ≥ 0");
  FM_CHECK(opts.page_tokens >= 1 && opts.page_tokens <= 4096, ErrorCode::kInvalidArgument,
           "page tokens must be in [1, 4096], got ", opts.page_tokens);
  GgufFile file = GgufFile::open(opts.model_path);
  // Everything the model's metadata and the indexer's decide is checked here, before the
  // backend prepares any weight (a CUDA backend uploads them all) and long before a prefill.
  const ModelInfo mi = read_model_info(file);
  const int64_t n_ctx = opts.n_ctx > 0 ? opts.n_ctx : mi.n_ctx_train;
  FM_CHECK(n_ctx <= mi.n_ctx_train, ErrorCode::kOutOfRange, "context ", n_ctx,
           " exceeds the model's training context ", mi.n_ctx_train);
  std::shared_ptr<IndexerModel> indexer;
  if (!opts.indexer_path.empty()) {
    indexer = std::make_shared<IndexerModel>(select_targets(*load_indexer(opts.indexer_path), opts.indexer_layers));
    const IndexerModel& m = *indexer;
    FM_CHECK(m.shape.d_model == mi.d_model && m.shape.n_kv_heads == mi.n_kv_heads &&
                 m.shape.head_dim == mi.head_dim && m.keys.layers.back() < mi.n_layers &&
                 m.shape.rope.n_rot == mi.rope.n_rot && m.shape.rope.freq_base == mi.rope.freq_base,
             ErrorCode::kInvalidArgument, "the indexer ", opts.indexer_path, " was trained for another model (d_model ",
             m.shape.d_model, ", kv heads ", m.shape.n_kv_heads, ", head_dim ", m.shape.head_dim, ")");
    check_page_tokens(opts.page_tokens, m.keys.chunk_tokens, opts.indexer_path);
  }
  return std::unique_ptr<Engine>(new Engine(opts, std::move(file), std::move(indexer)));
}

void Engine::set_indexer(std::shared_ptr<LsaScorer> s) {
  if (s) check_page_tokens(opts_.page_tokens, s->keys_config().chunk_tokens, "given");
  indexer_ = std::move(s);
}

const ChatTemplate& Engine::chat() const {
  FM_CHECK(chat_.has_value(), ErrorCode::kUnsupported, chat_error_);
  return *chat_;
}

KvCacheConfig Engine::kv_config() const {
  const ModelInfo& mi = model_->info();
  KvCacheConfig c;
  c.n_layers = mi.n_layers;
  c.n_kv_heads = mi.n_kv_heads;
  c.head_dim = mi.head_dim;
  c.page_tokens = opts_.page_tokens;
  c.max_tokens = n_ctx_;
  c.type = opts_.kv_type;
  return c;
}

PagedKvCache Engine::new_cache() const { return PagedKvCache(kv_config()); }

void Engine::check_prompt(const std::vector<int32_t>& prompt) const {
  FM_CHECK(!prompt.empty(), ErrorCode::kInvalidArgument, "the prompt is empty");
  FM_CHECK(static_cast<int64_t>(prompt.size()) < n_ctx_, ErrorCode::kOutOfRange, "the prompt has ",
           prompt.size(), " tokens but the context holds ", n_ctx_,
           " (prompt plus at least one generated token); raise -c (up to ",
           model_->info().n_ctx_train, ") or shorten the prompt");
  const int32_t n_vocab = model_->info().n_vocab;
  for (int32_t t : prompt)
    FM_CHECK(t >= 0 && t < n_vocab, ErrorCode::kInvalidArgument, "prompt token ", t, " out of range");
}

std::unique_ptr<Prefilled> Engine::prefill(const std::vector<int32_t>& prompt,
                                           const ResidencyOptions& memory, int max_new_tokens) {
  check_prompt(prompt);
  FM_CHECK(max_new_tokens >= 0, ErrorCode::kInvalidArgument, "-n must be ≥ 0");
  memory.validate();
  // What decode would refuse is refused before the prefill's work.
  FM_CHECK(memory.policy != "lsa" || indexer_ != nullptr, ErrorCode::kInvalidArgument,
           "policy lsa needs a trained Memory Indexer (--indexer FILE) loaded before the prefill");
  const KvCacheConfig kc = kv_config();
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  const int64_t final_tokens = std::min<int64_t>(n_ctx_, n_prompt + std::max(max_new_tokens, 1));
  const int64_t budget_pages = resolve_budget_pages(memory, kc, final_tokens);
  auto p = std::make_unique<Prefilled>();
  p->prompt = prompt;
  p->max_new_tokens = max_new_tokens;
  // One request per engine call: the reserve is exactly this request's budget.
  p->reserve = std::make_unique<KvReserve>(*backend_, kc.page_bytes(), budget_pages * kc.n_layers);
  p->recall = std::make_unique<RecallEngine>(*backend_);
  p->kv = std::make_unique<TieredKvStore>(kc, budget_pages, *p->reserve, *p->recall);
  p->logits.resize(model_->info().n_vocab);
  std::optional<QueryTap> tap;
  if (indexer_) {  // Level 1 right after prefill scores from the last prompt token
    p->query.layers = indexer_->keys_config().layers;
    p->query.d_model = model_->info().d_model;
    p->query.rows.assign(p->query.layers.size() * p->query.d_model, 0.0f);
    tap.emplace(*model_, p->query);
  }
  // lsa's prompt observation: what the last prompt tokens attend, measured as prefill runs.
  std::optional<PromptObserver> observer;
  if (indexer_ && memory.lsa.observe > 0) {
    observer.emplace(static_cast<int32_t>(std::max<int64_t>(0, n_prompt - memory.lsa.observe)),
                     indexer_->keys_config().chunk_tokens);
    p->kv->set_prompt_observer(&*observer);
  }
  const auto t0 = std::chrono::steady_clock::now();
  model_->forward(prompt, *p->kv, p->logits.data());
  if (observer) {
    p->kv->set_prompt_observer(nullptr);
    p->query.prompt_mass = observer->layer_mass();
  }
  p->seconds = seconds_since(t0);
  return p;
}

GenerateResult Engine::generate(const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                                const std::function<void(std::string_view)>& on_text) {
  auto p = prefill(prompt, opts.memory, opts.max_new_tokens);
  // oracle records first; lsa may widen to a full budget, which needs a store of its own.
  if (opts.memory.policy != "oracle" && opts.memory.policy != "lsa")
    return decode_pass(*p, opts, on_text, false, nullptr, nullptr);
  return decode(*p, opts, on_text);
}

GenerateResult Engine::decode(const Prefilled& pc, const GenerateOptions& opts,
                              const std::function<void(std::string_view)>& on_text) {
  // decode_pass only reads p through a fork.
  Prefilled& p = const_cast<Prefilled&>(pc);
  FM_CHECK(opts.max_new_tokens == p.max_new_tokens, ErrorCode::kInvalidArgument,
           "decode for ", opts.max_new_tokens, " tokens from a prefill made for ", p.max_new_tokens);
  opts.memory.validate();
  if (opts.memory.policy != "oracle") return decode_pass(p, opts, on_text, true, nullptr, nullptr);
  // The oracle replays what full attention attended: record it first, on the same prompt and
  // sampling, then generate with the recorded next-τ windows.
  AttentionTrace trace;
  GenerateOptions rec = opts;
  rec.memory.policy = "full";
  rec.memory.budget = KvBudget{};
  const auto t0 = std::chrono::steady_clock::now();
  decode_pass(p, rec, {}, true, nullptr, &trace);
  const double rec_s = seconds_since(t0);
  GenerateResult r = decode_pass(p, opts, on_text, true, &trace, nullptr);
  r.kv.oracle_pass_seconds = rec_s;
  return r;
}

GenerateResult Engine::decode_pass(Prefilled& p, const GenerateOptions& opts,
                                   const std::function<void(std::string_view)>& on_text, bool fork,
                                   const AttentionTrace* replay, AttentionTrace* record) {
  const int32_t n_vocab = model_->info().n_vocab;
  const KvCacheConfig kc = kv_config();
  const int64_t n_prompt = static_cast<int64_t>(p.prompt.size());
  const int64_t final_tokens = std::min<int64_t>(n_ctx_, n_prompt + std::max(opts.max_new_tokens, 1));
  const int64_t budget_pages = resolve_budget_pages(opts.memory, kc, final_tokens);
  std::unique_ptr<KvReserve> own_reserve;
  std::unique_ptr<RecallEngine> own_recall;
  std::unique_ptr<TieredKvStore> own_kv;
  if (fork) {
    FM_CHECK(budget_pages >= p.kv->budget_pages(), ErrorCode::kInvalidArgument, "a decode with ",
             budget_pages, " pages per layer cannot reuse a prefill made with ",
             p.kv->budget_pages(), ": prefill with the smallest budget");
    own_reserve = std::make_unique<KvReserve>(*backend_, kc.page_bytes(), budget_pages * kc.n_layers);
    own_recall = std::make_unique<RecallEngine>(*backend_);
    own_kv = std::make_unique<TieredKvStore>(*p.kv, budget_pages, *own_reserve, *own_recall);
  } else {
    FM_ICHECK(budget_pages == p.kv->budget_pages(), "prefill and decode budgets differ");
  }
  TieredKvStore* kvp = fork ? own_kv.get() : p.kv.get();
  KvReserve* reserve = fork ? own_reserve.get() : p.reserve.get();
  RecallEngine* recall = fork ? own_recall.get() : p.recall.get();
  IndexerQuery query = p.query;  // lsa: updated by every decode forward
  std::optional<QueryTap> tap;
  PolicyDeps deps;
  deps.trace = replay;
  if (opts.memory.policy == "lsa") {
    FM_CHECK(indexer_ != nullptr && query.position >= 0, ErrorCode::kInvalidArgument,
             "policy lsa needs a trained Memory Indexer (--indexer FILE) loaded before the prefill");
    deps.lsa = indexer_;
    deps.query = &query;
    deps.device = backend_.get();
    deps.lsa_options = &opts.memory.lsa;
    tap.emplace(*model_, query);
  }
  // The needle fallback's full-budget store (lsa). Declared before the residency, which unhooks
  // itself from its store when destroyed, so that the store outlives it.
  std::unique_ptr<KvReserve> wide_reserve;
  std::unique_ptr<RecallEngine> wide_recall;
  std::unique_ptr<TieredKvStore> wide_kv;
  auto residency = std::make_unique<Residency>(*kvp, make_policy(opts.memory.policy, kc, opts.memory.seed, deps),
                                               opts.memory);
  auto* lsa = dynamic_cast<LsaPolicy*>(&residency->policy());
  // What the narrow store measured before a needle fallback (lsa).
  double narrow_sum = 0;
  int64_t narrow_samples = 0;
  KvFootprint narrow_peak;
  RecallStats narrow_recall;
  std::optional<TraceRecorder> recorder;
  if (record) {
    recorder.emplace(*record);
    kvp->set_hook(&*recorder);
  }
  if (opts.attend_hook) {
    FM_CHECK(!record && !residency->policy().per_step(), ErrorCode::kInvalidArgument,
             "an attention observer cannot be combined with policy ", opts.memory.policy);
    kvp->set_hook(opts.attend_hook);
  }

  Sampler sampler(opts.sampling);
  GenerateResult r;
  if (lsa && opts.lsa_trace) lsa->trace_into(&r.lsa_trace);
  r.n_prompt = n_prompt;
  r.prefill_seconds = p.seconds;
  std::vector<float> logits = p.logits;
  auto t0 = std::chrono::steady_clock::now();

  StreamDecoder dec(tokenizer_);
  size_t emitted = 0;
  auto emit_upto = [&](size_t end) {
    if (end > emitted && on_text) on_text(std::string_view(r.text).substr(emitted, end - emitted));
    emitted = std::max(emitted, end);
  };
  r.stop_reason = "length";
  for (int i = 0; i < opts.max_new_tokens; ++i) {
    int32_t tok = sampler.sample(logits.data(), n_vocab);
    if (i < static_cast<int>(opts.forced_tokens.size())) {
      r.forced_agree += argmax(logits.data(), n_vocab) == opts.forced_tokens[i];
      tok = opts.forced_tokens[i];
    }
    r.tokens.push_back(tok);
    if (opts.stop_at_eos && tok == tokenizer_.special().eos) {
      r.stop_reason = "eos";
      break;
    }
    r.text += dec.push(tok);
    bool stopped = false;
    for (const auto& s : opts.stop_strings) {
      const size_t at = r.text.find(s);
      if (at != std::string::npos) {
        r.text.resize(at);
        stopped = true;
      }
    }
    if (stopped) {
      r.stop_reason = "stop_string";
      break;
    }
    emit_upto(r.text.size() - held_back(r.text, opts.stop_strings));
    if (i + 1 == opts.max_new_tokens) break;
    if (kvp->n_tokens() + 1 > n_ctx_) {
      r.stop_reason = "context";
      break;
    }
    const int64_t tokens_left = std::min<int64_t>(opts.max_new_tokens - 1 - i, n_ctx_ - kvp->n_tokens());
    residency->before_step(r.decode_steps, tokens_left);
    if (lsa && lsa->wants_widen() && !wide_kv) {
      // Needle fallback: the rest of the request runs with every page on the device, in a
      // full-budget fork of its KV (the narrow reserve is released).
      r.kv.widened_at_step = r.decode_steps;
      r.kv.widen_reason = lsa->widen_reason();
      if (r.kv.lsa_kept_fraction < 0) {
        r.kv.lsa_kept_fraction = lsa->last_kept_fraction();
        r.kv.lsa_absent_mass = lsa->last_absent_mass();
      }
      ResidencyOptions wide = opts.memory;
      wide.policy = "full";
      wide.budget = KvBudget{};
      const int64_t wide_pages = resolve_budget_pages(wide, kc, final_tokens);
      narrow_sum = kvp->mean_device_bytes() * static_cast<double>(kvp->samples());
      narrow_samples = kvp->samples();
      narrow_peak = kvp->peak();
      narrow_recall = recall->stats();
      wide_reserve = std::make_unique<KvReserve>(*backend_, kc.page_bytes(), wide_pages * kc.n_layers);
      wide_recall = std::make_unique<RecallEngine>(*backend_);
      wide_kv = std::make_unique<TieredKvStore>(*kvp, wide_pages, *wide_reserve, *wide_recall);
      residency.reset();
      lsa = nullptr;
      tap.reset();
      if (fork) {
        own_kv.reset();
        own_reserve.reset();
      }
      kvp = wide_kv.get();
      reserve = wide_reserve.get();
      recall = wide_recall.get();
      residency = std::make_unique<Residency>(*kvp, make_policy("full", kc, 0), wide);
      residency->before_step(r.decode_steps, tokens_left);
    }
    if (lsa && r.kv.lsa_kept_fraction < 0) {
      r.kv.lsa_kept_fraction = lsa->last_kept_fraction();
      r.kv.lsa_absent_mass = lsa->last_absent_mass();
    }
    if (recorder) recorder->set_step(r.decode_steps);
    if (opts.on_step) opts.on_step(r.decode_steps);
    const int32_t one[1] = {tok};
    model_->forward(one, *kvp, logits.data());
    kvp->sample();
    ++r.decode_steps;
  }
  r.decode_seconds = seconds_since(t0);
  if (lsa) lsa->trace_into(nullptr);
  if (r.stop_reason != "stop_string") r.text += dec.flush();
  emit_upto(r.text.size());
  r.kv_bytes_per_token = kc.bytes_per_token();
  r.kv.policy = opts.memory.policy;
  r.kv.budget = opts.memory.budget.str();
  r.kv.budget_pages = budget_pages;
  r.kv.reserve_bytes = reserve->bytes_allocated();
  r.kv.final = kvp->footprint();
  r.kv.peak = kvp->peak();
  if (narrow_peak.device() > r.kv.peak.device()) r.kv.peak = narrow_peak;
  if (fork && p.kv->peak().device() > r.kv.peak.device()) r.kv.peak = p.kv->peak();  // its prefill
  r.kv.mean_device_bytes = kvp->mean_device_bytes();
  if (narrow_samples + kvp->samples() > 0 && wide_kv)
    r.kv.mean_device_bytes = (narrow_sum + kvp->mean_device_bytes() * static_cast<double>(kvp->samples())) /
                             static_cast<double>(narrow_samples + kvp->samples());
  r.kv.recall = recall->stats();
  r.kv.recall.pages += narrow_recall.pages;
  r.kv.recall.bytes += narrow_recall.bytes;
  r.kv.recall.batches += narrow_recall.batches;
  r.kv.recall.seconds += narrow_recall.seconds;
  if (fork) {  // count the prefill's streaming too
    r.kv.recall.pages += p.recall->stats().pages;
    r.kv.recall.bytes += p.recall->stats().bytes;
    r.kv.recall.batches += p.recall->stats().batches;
    r.kv.recall.seconds += p.recall->stats().seconds;
  }
  r.kv.cycles = residency->cycles();
  return r;
}

}  // namespace flashmem

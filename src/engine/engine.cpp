#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include "core/clock.h"
#include "core/error.h"
#include "core/host_memory.h"
#include "memory/indexer_scorer.h"
#include "engine/request.h"
#include "memory/observation.h"
#include "models/synthetic.h"

namespace flashmem {

namespace {

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
      backend_([&] {
        auto be = make_backend(opts.backend, opts.n_threads, opts.cpu_dot);
        be->set_memory_cap(opts.gpu_memory_bytes);  // before the weights: they count
        return be;
      }()),
      model_(load_model(file_, *backend_)),
      tokenizer_(Tokenizer::from_gguf(file_)) {
  try {
    chat_ = ChatTemplate::from_gguf(file_);
  } catch (const Error& e) {
    chat_error_ = e.what();  // only an error if --chat is used
  }
  // A backend with its own memory (CUDA) has copied every weight when the model was built: the
  // host image (16 GB for a synthetic 8B model in bf16) goes back to the OS, for mirrors.
  if (!backend_->host_memory()) {
    backend_->synchronize();
    file_.release_tensor_data();
  }
  const ModelInfo& mi = model_->info();
  FM_CHECK(mi.n_vocab == tokenizer_.vocab_size(), ErrorCode::kFormat, "the tokenizer has ",
           tokenizer_.vocab_size(), " tokens but the model has ", mi.n_vocab, " logits");
  n_ctx_ = opts.n_ctx > 0 ? opts.n_ctx : mi.n_ctx_train;
  const size_t page_bytes = kv_config().page_bytes();
  device_kv_cap_ = opts.device_kv_bytes;
  if (opts.gpu_memory_bytes) {
    const uint64_t held = backend_->memory_held(), work = working_memory();
    const auto gib = [](uint64_t b) { return static_cast<double>(b) / (uint64_t{1} << 30); };
    FM_CHECK(held + work + page_bytes <= opts.gpu_memory_bytes, ErrorCode::kOutOfMemory, "the weights take ", gib(held),
             " GiB of the ", gib(opts.gpu_memory_bytes), " GiB --gpu-memory cap, leaving less than the ", gib(work),
             " GiB of working memory and one KV page");
    const uint64_t left = opts.gpu_memory_bytes - held - work;
    device_kv_cap_ = device_kv_cap_ ? std::min(device_kv_cap_, left) : left;
  }
  reserve_ = KvReserve::growable(*backend_, page_bytes, static_cast<int64_t>(device_kv_cap_ / page_bytes));
  FM_CHECK(device_kv_cap_ == 0 || reserve_->max_slots() > 0, ErrorCode::kInvalidArgument,
           "a device KV cap of ", device_kv_cap_, " B holds no page of ", page_bytes, " B");
  if (indexer) indexer_ = make_indexer_scorer(std::move(indexer), *backend_);
}

namespace {

// The GGUF image of opts.synthetic, refused with the arithmetic when the host cannot hold it. A
// context longer than the shape's is built in (its training context becomes opts.n_ctx): random
// weights have no trained length to exceed, and 1M-token runs need the room.
GgufFile synthetic_model(const EngineOptions& opts) {
  SyntheticSpec spec = parse_synthetic(opts.synthetic);
  spec.shape.n_ctx = std::max(spec.shape.n_ctx, opts.n_ctx);
  const uint64_t need = synthetic_image_bytes(spec);
  const std::optional<uint64_t> avail = host_memory_available();
  const auto gib = [](uint64_t b) { return static_cast<double>(b) / (uint64_t{1} << 30); };
  FM_CHECK(!avail || need <= *avail, ErrorCode::kOutOfMemory, "the synthetic ", opts.synthetic, " model takes ",
           gib(need), " GiB of host memory to build, but the OS has ", gib(avail.value_or(0)),
           " GiB available; try a smaller shape or a quantised type (NAME:q4_k)");
  const int threads = opts.n_threads > 0 ? opts.n_threads : static_cast<int>(std::thread::hardware_concurrency());
  return make_synthetic(spec, opts.synthetic_seed, threads);
}

// EngineOptions::synthetic_indexer: random weights of a real indexer's size for the model's
// shape (≥ 12 heads in whole GQA groups, rank 128, target layers at 15%, 30% and 65% depth).
IndexerModel synthetic_indexer(const ModelInfo& mi, const EngineOptions& opts) {
  IndexerShape s;
  s.d_model = mi.d_model;
  s.n_kv_heads = mi.n_kv_heads;
  s.head_dim = mi.head_dim;
  s.rank = 128;
  s.rope = mi.rope;
  s.n_heads = (12 + s.n_kv_heads - 1) / s.n_kv_heads * s.n_kv_heads;
  IndexerKeys k;
  for (const double f : {0.15, 0.3, 0.65}) k.layers.push_back(std::min(mi.n_layers - 1, static_cast<int>(f * mi.n_layers)));
  k.layers.erase(std::unique(k.layers.begin(), k.layers.end()), k.layers.end());
  check_page_tokens(opts.page_tokens, k.chunk_tokens, "random");
  return random_indexer(s, k, opts.synthetic_seed + 1);
}

}  // namespace

uint64_t Engine::working_memory() const {
  const ModelInfo& m = model_->info();
  const uint64_t ubatch = 512, rows = 64;
  const uint64_t acts = ubatch * (3 * uint64_t(m.d_model) + 2 * uint64_t(m.n_heads) * m.head_dim +
                                  2 * uint64_t(m.n_kv_heads) * m.head_dim + 2 * uint64_t(m.n_ff));
  const uint64_t logits = rows * uint64_t(m.n_vocab);
  const uint64_t partials = rows * uint64_t(m.n_heads) * 256 * (uint64_t(m.head_dim) + 1);  // ≤ 256 splits
  return 4 * (acts + logits + partials) + (uint64_t{256} << 20);
}

std::unique_ptr<Engine> Engine::load(const EngineOptions& opts) {
  FM_CHECK(!opts.model_path.empty() || !opts.synthetic.empty(), ErrorCode::kInvalidArgument, "no model path given");
  FM_CHECK(opts.model_path.empty() || opts.synthetic.empty(), ErrorCode::kInvalidArgument,
           "give a model file or a synthetic model, not both");
  FM_CHECK(opts.n_ctx >= 0, ErrorCode::kInvalidArgument, "context must be ≥ 0");
  FM_CHECK(opts.page_tokens >= 1 && opts.page_tokens <= 4096, ErrorCode::kInvalidArgument,
           "page tokens must be in [1, 4096], got ", opts.page_tokens);
  GgufFile file = opts.synthetic.empty() ? GgufFile::open(opts.model_path) : synthetic_model(opts);
  // Everything the model's metadata and the indexer's decide is checked here, before the
  // backend prepares any weight (a CUDA backend uploads them all) and long before a prefill.
  const ModelInfo mi = read_model_info(file);
  const int64_t n_ctx = opts.n_ctx > 0 ? opts.n_ctx : mi.n_ctx_train;
  FM_CHECK(n_ctx <= mi.n_ctx_train, ErrorCode::kOutOfRange, "context ", n_ctx,
           " exceeds the model's training context ", mi.n_ctx_train);
  std::shared_ptr<IndexerModel> indexer;
  if (opts.indexer_path.empty() && opts.synthetic_indexer) {
    FM_CHECK(!opts.synthetic.empty(), ErrorCode::kInvalidArgument, "a random Memory Indexer is for synthetic models only");
    indexer = std::make_shared<IndexerModel>(synthetic_indexer(mi, opts));
  } else if (!opts.indexer_path.empty()) {
    indexer = std::make_shared<IndexerModel>(*load_indexer(opts.indexer_path));
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

void Engine::check_host_mirror(int64_t final_tokens) const {
  const KvCacheConfig kc = kv_config();
  const int64_t pages = kc.pages_for(final_tokens);
  const uint64_t need = kc.mirror_bytes(final_tokens);
  const std::optional<uint64_t> os = host_memory_available();
  const uint64_t avail = opts_.host_kv_bytes ? opts_.host_kv_bytes : os.value_or(UINT64_MAX);
  const auto mib = [](uint64_t b) { return static_cast<double>(b) / (1 << 20); };
  FM_CHECK(need <= avail, ErrorCode::kOutOfMemory, "this request's host KV mirror needs ", mib(need), " MiB (",
           pages, " pages of ", kc.page_tokens, " tokens × ", kc.n_layers, " layers × ", kc.page_bytes(), " B, for ",
           final_tokens, " tokens) but ", opts_.host_kv_bytes ? "the host KV cap is " : "the OS has only ", mib(avail),
           opts_.host_kv_bytes ? " MiB" : " MiB available", "; shorten the prompt or -n, or use --kv-type q8");
}

RequestMemory Engine::request_memory(const ResidencyOptions& memory, int64_t final_tokens) const {
  const KvCacheConfig kc = kv_config();
  RequestMemory r;
  r.budget_pages = resolve_budget_pages(memory, kc, final_tokens);
  r.device_bytes = static_cast<uint64_t>(r.budget_pages) * kc.n_layers * kc.page_bytes();
  r.host_bytes = kc.mirror_bytes(final_tokens);
  return r;
}

std::unique_ptr<Prefilled> Engine::begin_prefill(const std::vector<int32_t>& prompt,
                                                 const ResidencyOptions& memory, int max_new_tokens,
                                                 ActivationTap* tap) {
  check_prompt(prompt);
  FM_CHECK(max_new_tokens >= 0, ErrorCode::kInvalidArgument, "-n must be ≥ 0");
  memory.validate();
  // What decode would refuse is refused before the prefill's work.
  FM_CHECK(!policy_traits(memory.policy).needs_indexer || indexer_ != nullptr, ErrorCode::kInvalidArgument,
           "policy ", memory.policy, " needs a trained Memory Indexer (--indexer FILE) loaded before the prefill");
  const KvCacheConfig kc = kv_config();
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  const int64_t final_tokens = std::min<int64_t>(n_ctx_, n_prompt + std::max(max_new_tokens, 1));
  const int64_t budget_pages = resolve_budget_pages(memory, kc, final_tokens);
  check_host_mirror(final_tokens);
  auto p = std::make_unique<Prefilled>();
  p->prompt = prompt;
  p->max_new_tokens = max_new_tokens;
  // The store's admission: this request's budget in the engine's reserve.
  p->recall = std::make_unique<RecallEngine>(*backend_);
  p->kv = std::make_unique<TieredKvStore>(kc, budget_pages, *reserve_, *p->recall);
  p->logits.resize(model_->info().n_vocab);
  if (indexer_) {  // Level 1 right after prefill scores from the last prompt token
    p->query.layers = indexer_->keys_config().layers;
    p->query.d_model = model_->info().d_model;
    p->query.rows.assign(p->query.layers.size() * p->query.d_model, 0.0f);
  }
  if (indexer_ || tap) p->tap = std::make_unique<QueryTap>(indexer_ ? &p->query : nullptr, tap);
  // lsa's prompt observation: what the last prompt tokens attend, measured as prefill runs.
  if (indexer_ && memory.lsa.observe > 0) {
    p->observer = std::make_unique<PromptObserver>(static_cast<int32_t>(std::max<int64_t>(0, n_prompt - memory.lsa.observe)),
                                                   indexer_->keys_config().chunk_tokens);
    p->kv->set_prompt_observer(p->observer.get());
  }
  return p;
}

std::unique_ptr<Prefilled> Engine::prefill(const std::vector<int32_t>& prompt, const ResidencyOptions& memory,
                                           int max_new_tokens, ActivationTap* tap) {
  auto p = begin_prefill(prompt, memory, max_new_tokens, tap);
  const SequenceInput in = p->next_chunk(0);
  const auto t0 = std::chrono::steady_clock::now();
  model_->forward_batch(std::span<const SequenceInput>(&in, 1));
  p->advance(static_cast<int64_t>(in.tokens.size()), seconds_since(t0));
  return p;
}

void Engine::fill_synthetic(Prefilled& p, int64_t n) {
  FM_CHECK(p.done == 0 && n >= 1 && n < static_cast<int64_t>(p.prompt.size()), ErrorCode::kInvalidArgument,
           "a synthetic context of ", n, " tokens must leave part of the ", p.prompt.size(), "-token prompt to prefill");
  const KvCacheConfig kc = kv_config();
  const int64_t row = int64_t{kc.n_kv_heads} * kc.head_dim, chunk = 512;
  // One random chunk, written again and again: attention's cost does not depend on the values.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> host(static_cast<size_t>(2 * chunk * row));
  for (float& x : host) x = u(rng);
  BackendBuffer kv(*backend_, host.size() * sizeof(float));
  backend_->upload(kv.get(), host.data(), host.size() * sizeof(float));
  const float* k = kv.as<float>();
  const float* v = k + chunk * row;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t at = 0; at < n; at += chunk) {
    const int64_t len = std::min(chunk, n - at);
    for (int l = 0; l < kc.n_layers; ++l) p.kv->append(l, len, k, v);
  }
  backend_->synchronize();
  p.done = n;
  p.seconds += seconds_since(t0);
}

SequenceInput Prefilled::next_chunk(int64_t max_tokens) {
  const int64_t left = static_cast<int64_t>(prompt.size()) - done;
  FM_ICHECK(left > 0, "the prefill is complete");
  const int64_t n = max_tokens > 0 ? std::min(max_tokens, left) : left;
  return SequenceInput{std::span<const int32_t>(prompt.data() + done, static_cast<size_t>(n)), kv.get(),
                       n == left ? logits.data() : nullptr, tap.get()};
}

void Prefilled::advance(int64_t n, double secs) {
  FM_ICHECK(n > 0 && done + n <= static_cast<int64_t>(prompt.size()), "prefill advanced past its prompt");
  done += n;
  seconds += secs;
  if (!complete()) return;
  tap.reset();
  if (observer) {
    kv->set_prompt_observer(nullptr);
    query.prompt_mass = observer->layer_mass();
    observer.reset();
  }
}

namespace {

void run_alone(Model& m, Request& r) {
  while (const auto in = r.next_input()) {
    m.forward_batch(std::span<const SequenceInput>(&*in, 1));
    r.consume();
  }
}

}  // namespace

GenerateResult Engine::generate(const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                                const std::function<void(std::string_view)>& on_text) {
  if (policy_traits(opts.memory.policy).replays_trace) {
    auto p = prefill(prompt, opts.memory, opts.max_new_tokens, opts.tap);
    return decode(*p, opts, on_text);
  }
  Request r(*this, prompt, opts, on_text);
  run_alone(*model_, r);
  return r.result();
}

GenerateResult Engine::decode(const Prefilled& p, const GenerateOptions& opts,
                              const std::function<void(std::string_view)>& on_text) {
  opts.memory.validate();
  if (!policy_traits(opts.memory.policy).replays_trace) {
    Request r(*this, p, opts, on_text);
    run_alone(*model_, r);
    return r.result();
  }
  // The oracle replays what full attention attended: record it first, on the same prompt and
  // sampling, then generate with the recorded next-τ windows.
  AttentionTrace trace;
  GenerateOptions rec = opts;
  rec.memory.policy = "full";
  rec.memory.budget = KvBudget{};
  rec.attend_hook = nullptr;
  rec.on_step = {};
  rec.tap = nullptr;
  rec.lsa_trace = false;
  const auto t0 = std::chrono::steady_clock::now();
  {
    Request recording(*this, p, rec, {}, nullptr, &trace);
    run_alone(*model_, recording);
  }
  const double rec_s = seconds_since(t0);
  Request replay(*this, p, opts, on_text, &trace, nullptr);
  run_alone(*model_, replay);
  GenerateResult r = replay.result();
  r.kv.oracle_pass_seconds = rec_s;
  return r;
}

}  // namespace flashmem

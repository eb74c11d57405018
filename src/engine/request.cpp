#include "engine/request.h"

#include <algorithm>

#include "core/clock.h"
#include "core/error.h"

namespace flashmem {

namespace {

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

}  // namespace

Request::Request(Engine& eng, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                 TextCallback on_text, int64_t prefill_chunk)
    : eng_(eng), opts_(opts), on_text_(std::move(on_text)), prefill_chunk_(prefill_chunk) {
  opts_.memory.validate();
  FM_CHECK(!policy_traits(opts_.memory.policy).replays_trace, ErrorCode::kInvalidArgument, "policy ",
           opts_.memory.policy, " replays a recorded full-attention pass of the same request, which a "
           "request decoded step by step among others cannot have (flashmem run and eval run it)");
  own_ = eng_.begin_prefill(prompt, opts_.memory, opts_.max_new_tokens, opts_.tap);
  if (opts_.synthetic_context > 0) eng_.fill_synthetic(*own_, opts_.synthetic_context);
  p_ = own_.get();
  r_.n_prompt = static_cast<int64_t>(prompt.size());
}

Request::Request(Engine& eng, const Prefilled& p, const GenerateOptions& opts, TextCallback on_text,
                 const AttentionTrace* replay, AttentionTrace* record)
    : eng_(eng), opts_(opts), on_text_(std::move(on_text)), p_(&p), fork_(true), replay_(replay), record_(record) {
  FM_CHECK(p.complete(), ErrorCode::kInvalidArgument, "a decode from a prefill that has not finished");
  FM_CHECK(opts.max_new_tokens == p.max_new_tokens, ErrorCode::kInvalidArgument, "decode for ",
           opts.max_new_tokens, " tokens from a prefill made for ", p.max_new_tokens);
  opts_.memory.validate();
  r_.n_prompt = static_cast<int64_t>(p.prompt.size());
  start_decode();
}

Request::~Request() {
  // The residency unhooks itself from its store: it goes first.
  residency_.reset();
}

void Request::start_decode() {
  const KvCacheConfig kc = eng_.kv_config();
  const Prefilled& p = *p_;
  const int64_t n_prompt = static_cast<int64_t>(p.prompt.size());
  final_tokens_ = std::min<int64_t>(eng_.n_ctx(), n_prompt + std::max(opts_.max_new_tokens, 1));
  budget_pages_ = resolve_budget_pages(opts_.memory, kc, final_tokens_);
  if (fork_) {
    FM_CHECK(budget_pages_ >= p.kv->budget_pages(), ErrorCode::kInvalidArgument, "a decode with ", budget_pages_,
             " pages per layer cannot reuse a prefill made with ", p.kv->budget_pages(),
             ": prefill with the smallest budget");
    eng_.check_host_mirror(final_tokens_);  // a fork copies the prefill's mirror
    recall_ = std::make_unique<RecallEngine>(eng_.backend());
    kv_ = std::make_unique<TieredKvStore>(*p.kv, budget_pages_, eng_.kv_reserve(), *recall_);
    kvp_ = kv_.get();
    recallp_ = recall_.get();
  } else {
    FM_ICHECK(budget_pages_ == own_->kv->budget_pages(), "prefill and decode budgets differ");
    kvp_ = own_->kv.get();
    recallp_ = own_->recall.get();
  }
  prefill_recall_ = fork_ ? p.recall->stats() : recallp_->stats();  // what decode recalls comes on top
  query_ = p.query;  // lsa: updated by every decode forward
  const PolicyTraits traits = policy_traits(opts_.memory.policy);
  PolicyDeps deps;
  deps.trace = replay_;
  if (traits.needs_indexer) {
    FM_CHECK(eng_.indexer() != nullptr && query_.position >= 0, ErrorCode::kInvalidArgument, "policy ",
             opts_.memory.policy, " needs a trained Memory Indexer (--indexer FILE) loaded before the prefill");
    deps.lsa = eng_.indexer();
    deps.query = &query_;
    deps.device = &eng_.backend();
    deps.lsa_options = &opts_.memory.lsa;
  }
  if (traits.needs_indexer || opts_.tap)
    tap_ = std::make_unique<QueryTap>(traits.needs_indexer ? &query_ : nullptr, opts_.tap);
  residency_ = std::make_unique<Residency>(*kvp_, make_policy(opts_.memory.policy, kc, opts_.memory.seed, deps),
                                           opts_.memory);
  lsa_ = dynamic_cast<LsaPolicy*>(&residency_->policy());
  if (record_) recorder_ = std::make_unique<TraceRecorder>(*record_);
  if (recorder_) kvp_->add_hook(recorder_.get());
  if (opts_.attend_hook) kvp_->add_hook(opts_.attend_hook);
  sampler_.emplace(opts_.sampling);
  dec_.emplace(eng_.tokenizer());
  if (lsa_ && opts_.lsa_trace) lsa_->trace_into(&r_.lsa_trace);
  r_.prefill_seconds = p.seconds;
  logits_ = p.logits;
  t0_ = std::chrono::steady_clock::now();
  phase_ = Phase::kDecode;
}

std::optional<SequenceInput> Request::next_input() {
  if (phase_ == Phase::kDone) return std::nullopt;
  pass_t0_ = std::chrono::steady_clock::now();
  if (phase_ == Phase::kPrefill) {
    const SequenceInput in = own_->next_chunk(prefill_chunk_);
    in_flight_ = static_cast<int64_t>(in.tokens.size());
    return in;
  }
  if (!take_token()) return std::nullopt;
  step_engine_ = recallp_;
  step_recall_ = recallp_->stats();
  const int64_t tokens_left =
      std::min<int64_t>(opts_.max_new_tokens - step_, eng_.n_ctx() - kvp_->n_tokens());
  residency_->before_step(r_.decode_steps, tokens_left);
  if (lsa_ && lsa_->wants_widen() && !widened_) widen(tokens_left);
  if (lsa_ && r_.kv.lsa_kept_fraction < 0) {
    r_.kv.lsa_kept_fraction = lsa_->last_kept_fraction();
    r_.kv.lsa_absent_mass = lsa_->last_absent_mass();
  }
  if (recorder_) recorder_->set_step(r_.decode_steps);
  if (opts_.on_step) opts_.on_step(r_.decode_steps);
  in_flight_ = 1;
  return SequenceInput{std::span<const int32_t>(&token_, 1), kvp_, logits_.data(), tap_.get()};
}

void Request::consume() {
  FM_ICHECK(in_flight_ > 0, "consume() without a pass from next_input()");
  const int64_t n = in_flight_;
  in_flight_ = 0;
  if (phase_ == Phase::kPrefill) {
    own_->advance(n, seconds_since(pass_t0_));
    if (own_->complete()) start_decode();
  } else if (phase_ == Phase::kDecode) {
    kvp_->sample();
    ++r_.decode_steps;
    // Did this step wait for pages (its selection's recall, or a policy's per-step one)?
    const RecallStats step = recallp_->stats().since(step_recall_);
    if (recallp_ == step_engine_ && step.pages > 0) {
      ++r_.kv.recall_steps;
      r_.kv.recall_wait_seconds += step.seconds;
    }
  }
}

bool Request::take_token() {
  if (step_ >= opts_.max_new_tokens) {
    finish("length");
    return false;
  }
  const int32_t n_vocab = eng_.info().n_vocab;
  int32_t tok = sampler_->sample(logits_.data(), n_vocab);
  if (step_ < static_cast<int>(opts_.forced_tokens.size())) {
    r_.forced_agree += argmax(logits_.data(), n_vocab) == opts_.forced_tokens[step_];
    tok = opts_.forced_tokens[step_];
  }
  ++step_;
  r_.tokens.push_back(tok);
  if (opts_.stop_at_eos && eng_.tokenizer().ends_generation(tok)) {
    finish("eos");
    return false;
  }
  r_.text += dec_->push(tok);
  bool stopped = false;
  for (const auto& s : opts_.stop_strings) {
    const size_t at = r_.text.find(s);
    if (at != std::string::npos) {
      r_.text.resize(at);
      stopped = true;
    }
  }
  if (stopped) {
    finish("stop_string");
    return false;
  }
  const size_t end = r_.text.size() - held_back(r_.text, opts_.stop_strings);
  if (end > emitted_ && on_text_) on_text_(std::string_view(r_.text).substr(emitted_, end - emitted_));
  emitted_ = std::max(emitted_, end);
  if (step_ == opts_.max_new_tokens) {
    finish("length");
    return false;
  }
  if (kvp_->n_tokens() + 1 > eng_.n_ctx()) {
    finish("context");
    return false;
  }
  token_ = tok;
  return true;
}

void Request::widen(int64_t tokens_left) {
  // Needle fallback: the rest of the request runs with every page on the device, in a
  // full-budget fork of its KV; the narrow store is released.
  const KvCacheConfig kc = eng_.kv_config();
  r_.kv.widened_at_step = r_.decode_steps;
  r_.kv.widen_reason = lsa_->widen_reason();
  if (r_.kv.lsa_kept_fraction < 0) {
    r_.kv.lsa_kept_fraction = lsa_->last_kept_fraction();
    r_.kv.lsa_absent_mass = lsa_->last_absent_mass();
  }
  ResidencyOptions wide = opts_.memory;
  wide.policy = "full";
  wide.budget = KvBudget{};
  const int64_t wide_pages = resolve_budget_pages(wide, kc, final_tokens_);
  narrow_sum_ = kvp_->mean_device_bytes() * static_cast<double>(kvp_->samples());
  narrow_samples_ = kvp_->samples();
  narrow_peak_ = kvp_->peak();
  narrow_recall_ = recallp_->stats();
  auto recall = std::make_unique<RecallEngine>(eng_.backend());
  auto kv = std::make_unique<TieredKvStore>(*kvp_, wide_pages, eng_.kv_reserve(), *recall);
  residency_.reset();
  lsa_ = nullptr;
  tap_ = opts_.tap ? std::make_unique<QueryTap>(nullptr, opts_.tap) : nullptr;
  if (fork_) {
    kv_.reset();
  } else {
    own_->kv.reset();
  }
  kv_ = std::move(kv);
  recall_ = std::move(recall);
  kvp_ = kv_.get();
  recallp_ = recall_.get();
  residency_ = std::make_unique<Residency>(*kvp_, make_policy("full", kc, 0), wide);
  if (recorder_) kvp_->add_hook(recorder_.get());
  if (opts_.attend_hook) kvp_->add_hook(opts_.attend_hook);
  widened_ = true;
  residency_->before_step(r_.decode_steps, tokens_left);
}

void Request::cancel() {
  if (phase_ != Phase::kDone) finish("cancelled");
}

void Request::fail(const std::string& why) {
  if (phase_ == Phase::kDone) return;
  r_.error = why;
  finish("error");
}

uint64_t Request::reserve_bytes() const {
  if (phase_ == Phase::kDone) return 0;
  uint64_t b = kv_ ? kv_->reserve_quota_bytes() : 0;
  if (own_ && own_->kv) b += own_->kv->reserve_quota_bytes();
  return b;
}

void Request::finish(const std::string& reason) {
  r_.stop_reason = reason;
  const bool ended_by_client = reason == "cancelled" || reason == "error";
  KvReport& k = r_.kv;
  k.policy = opts_.memory.policy;
  k.budget = opts_.memory.budget.str();
  r_.kv_bytes_per_token = eng_.kv_config().bytes_per_token();
  if (phase_ == Phase::kPrefill) {  // ended before its first decode step
    r_.prefill_seconds = own_->seconds;
    k.final = own_->kv->footprint();
    k.peak = own_->kv->peak();
    k.recall = own_->recall->settled_stats();
  } else if (phase_ == Phase::kDecode) {
    r_.decode_seconds = seconds_since(t0_);
    if (lsa_) lsa_->trace_into(nullptr);
    if (reason != "stop_string") r_.text += dec_->flush();
    if (!ended_by_client && r_.text.size() > emitted_ && on_text_)
      on_text_(std::string_view(r_.text).substr(emitted_));
    emitted_ = r_.text.size();
    k.budget_pages = budget_pages_;
    k.reserve_bytes = kvp_->reserve_quota_bytes();
    k.final = kvp_->footprint();
    k.peak = kvp_->peak();
    if (narrow_peak_.device() > k.peak.device()) k.peak = narrow_peak_;
    if (fork_ && p_->kv->peak().device() > k.peak.device()) k.peak = p_->kv->peak();  // its prefill
    k.mean_device_bytes = kvp_->mean_device_bytes();
    if (widened_ && narrow_samples_ + kvp_->samples() > 0)
      k.mean_device_bytes = (narrow_sum_ + kvp_->mean_device_bytes() * static_cast<double>(kvp_->samples())) /
                            static_cast<double>(narrow_samples_ + kvp_->samples());
    k.recall = recallp_->settled_stats();
    k.recall += narrow_recall_;
    if (fork_) k.recall += p_->recall->settled_stats();  // the prefill's streaming too
    k.decode_recall = k.recall.since(prefill_recall_);
    k.cycles = residency_->cycles();
  }
  phase_ = Phase::kDone;
  // Everything this request holds on the device goes now (the residency first: it unhooks
  // itself from its store).
  residency_.reset();
  tap_.reset();
  kv_.reset();
  recall_.reset();
  own_.reset();
  kvp_ = nullptr;
  recallp_ = nullptr;
  if (!fork_) p_ = nullptr;
}

}  // namespace flashmem

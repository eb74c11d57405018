// flashmem/memory/residency.h — budgets, τ-cycles and the policy driver.
//
//   ResidencyOptions o;  o.policy = "recency";  o.budget = KvBudget::parse("10%");
//   int64_t pages = resolve_budget_pages(o, kv_config, final_tokens);
//   TieredKvStore store(kv_config, pages, reserve, recall);
//   Residency res(store, make_policy(o.policy, kv_config, o.seed), o);
//   model.forward(prompt, store, ...);            // streaming prefill
//   for (step = 0; ...; ++step) { res.before_step(step, tokens_left); model.forward(tok, store, ...); }
//
// Every τ steps (and at step 0, right after prefill) each layer's resident set becomes
// sink pages ∪ tail pages ∪ the policy's choice among the middle pages, sized so that the
// pages the cycle will fill still fit the budget. Missing pages come back in one gather.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "memory/attention_labels.h"
#include "memory/lsa.h"
#include "memory/policy.h"
#include "memory/tiered_kv.h"

namespace flashmem {

struct KvBudget {
  enum class Kind { kPercent, kPages };
  Kind kind = Kind::kPercent;
  double value = 100.0;

  // "10%", "12.5%", "32pages" (or "32p"). Error(kInvalidArgument) otherwise, or for a percent
  // outside (0, 100] or a page count < 1.
  static KvBudget parse(const std::string& s);
  std::string str() const;
  bool is_full() const { return kind == Kind::kPercent && value >= 100.0; }
};

struct ResidencyOptions {
  std::string policy = "full";
  KvBudget budget;               // default: 100%
  int cycle = 64;                // τ, decode steps between selections
  int64_t sink_tokens = 64;      // first tokens, always resident
  int64_t tail_tokens = 64;      // newest tokens, always resident
  uint64_t seed = 0;             // for `random`
  LsaOptions lsa;                // for `lsa`: threshold, ensemble, needle fallback

  // Error(kInvalidArgument) for an unknown policy, cycle < 1, negative sink/tail, or a budget
  // below 100% with policy full.
  void validate() const;
};

// Device pages per layer for a request whose KV will reach `final_tokens` tokens: a percent is
// of the pages the full-KV path would hold at that length (100% ⇒ all of them). Error
// (kInvalidArgument) when the budget cannot hold sink + tail + the pages one cycle fills.
int64_t resolve_budget_pages(const ResidencyOptions& o, const KvCacheConfig& kv, int64_t final_tokens);

class Residency final : public AttendHook {
 public:
  Residency(TieredKvStore& store, std::unique_ptr<ResidencyPolicy> policy, const ResidencyOptions& o);
  ~Residency() override;

  // Before decode step `step` (0-based); `tokens_left` = tokens still to be appended by this
  // request (bounds the cycle). Runs a selection when step % τ == 0.
  void before_step(int64_t step, int64_t tokens_left);
  int64_t cycles() const { return cycles_; }
  const ResidencyPolicy& policy() const { return *policy_; }
  ResidencyPolicy& policy() { return *policy_; }

  void before_attend(TieredKvStore& s, int layer, const AttentionParams& p, const float* q,
                     const int32_t* pos, int64_t m) override;

 private:
  SelectContext context(int layer) const;
  // sink ∪ tail ∪ up to the rest of `capacity` chosen by `pick`.
  template <class Pick>
  std::vector<int32_t> compose(int layer, int64_t capacity, Pick&& pick);

  TieredKvStore& store_;
  std::unique_ptr<ResidencyPolicy> policy_;
  ResidencyOptions opts_;
  int64_t step_ = 0;
  int64_t cycle_steps_ = 0;
  int64_t cycle_start_ = 0;
  int64_t cycles_ = 0;
  std::vector<int32_t> scratch_;
};

// Records, for every decode-mode attention, the attention mass each page receives (averaged
// over query heads), computed exactly from q and the pages attention read (Backend::chunk_mass
// with page-sized chunks). It runs only in the oracle's recording pass.
class TraceRecorder final : public AttendHook {
 public:
  explicit TraceRecorder(AttentionTrace& trace) : trace_(trace) {}
  void set_step(int64_t step) { step_ = step; }
  void after_attend(Backend& be, int layer, const AttentionParams& p, const float* q,
                    const int32_t* pos, int64_t m, std::span<const KvPageRef> pages,
                    std::span<const int32_t> ids) override;

 private:
  AttentionTrace& trace_;
  int64_t step_ = 0;
  ChunkMassReader reader_;
  std::vector<float> mass_;
};

}  // namespace flashmem

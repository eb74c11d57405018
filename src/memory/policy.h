// flashmem/memory/policy.h — residency policies: which completed pages stay on the device.
//
// A policy answers, per layer, "which of the middle pages (not sink, not tail) should be
// resident", given how many fit. Sink and tail pages are always resident and are added by
// Residency; the policy never sees the budget arithmetic. Baselines (DESIGN.md §5):
//   full     every page (budget 100%)
//   recency  the newest middle pages (with sink: StreamingLLM-style)
//   random   random middle pages, redrawn every cycle from a seed
//   quest    per-page min/max key bounds; at every step, per layer, the pages whose bound
//            on q·k is highest (Quest, ICML'24), recalled on demand
//   oracle   the pages the full model actually attended during the next cycle, replayed from
//            a recorded full-attention pass (an upper bound, not a deployable policy)
//   lsa      the Memory Indexer's Level-1 selection (memory/lsa.h)
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "memory/kv_store.h"

namespace flashmem {

struct SelectContext {
  int layer = 0;
  int64_t n_pages = 0;      // completed pages of the layer
  int64_t middle_begin = 0; // first page that is not sink
  int64_t middle_end = 0;   // first tail page
  int64_t cycle = 0;        // 0 = right after prefill
  int64_t step = 0;         // decode steps done so far
  int64_t cycle_steps = 0;  // steps until the next cycle
};

class ResidencyPolicy {
 public:
  virtual ~ResidencyPolicy() = default;
  virtual const char* name() const = 0;
  // Appends at most n distinct pages from [middle_begin, middle_end) to out.
  virtual void select(const SelectContext& c, int64_t n, std::vector<int32_t>& out) = 0;
  // Query-aware policies choose again before every decode attention (q: [n_heads × head_dim]).
  virtual bool per_step() const { return false; }
  virtual void select_step(const SelectContext& c, int64_t n, const AttentionParams& /*p*/,
                           const float* /*q*/, std::vector<int32_t>& out) {
    select(c, n, out);
  }
  // Sees every page as it completes (to build page metadata).
  virtual void on_page(int /*layer*/, int32_t /*page*/, const uint8_t* /*data*/) {}
  // Device bytes of selection metadata and scratch, for the footprint.
  virtual uint64_t index_bytes() const { return 0; }
  virtual uint64_t scratch_bytes() const { return 0; }
};

// Page attention mass per decode step and layer, recorded during a full-attention pass
// (the oracle's input).
class AttentionTrace {
 public:
  // mass[i] is the attention mass (averaged over query heads) on page ids[i] at this step.
  void record(int64_t step, int layer, std::span<const int32_t> ids, std::span<const float> mass);
  // Σ of the mass on each page of `layer` over steps [s0, s1): out[page], n_pages long.
  void window_mass(int layer, int64_t s0, int64_t s1, int64_t n_pages, std::vector<float>& out) const;
  int64_t steps() const { return static_cast<int64_t>(steps_.size()); }

 private:
  struct Entry {
    std::vector<int32_t> ids;
    std::vector<float> mass;
  };
  std::vector<std::vector<Entry>> steps_;  // [step][layer]
};

class LsaScorer;
struct IndexerQuery;
struct LsaOptions;

// What some policies need beyond their name: the oracle its trace, lsa its indexer (scorer),
// the query rows the engine fills, the backend its keys live on, and its options.
struct PolicyDeps {
  const AttentionTrace* trace = nullptr;
  std::shared_ptr<LsaScorer> lsa;
  const IndexerQuery* query = nullptr;
  Backend* device = nullptr;
  const LsaOptions* lsa_options = nullptr;
};

// Appends the n highest-scoring pages of [c.middle_begin, c.middle_end) (ties: newer first);
// score is indexed by page number.
void top_pages(const SelectContext& c, int64_t n, const std::vector<float>& score, std::vector<int32_t>& out);

// Names make_policy accepts.
const std::vector<std::string>& policy_names();
// Error(kInvalidArgument) naming the known policies unless `name` is one of them.
void check_policy_name(const std::string& name);

// What running a policy asks of the request that runs it (the engine asks these, never the
// policy's name).
struct PolicyTraits {
  bool keeps_all = false;      // full: every page resident, whatever budget is asked (it is 100%)
  bool replays_trace = false;  // oracle: a recorded full-attention pass of the same request first
  bool needs_indexer = false;  // lsa: a Memory Indexer, fed each decode step's hidden state
  bool may_widen = false;      // lsa: may move the request to a full budget part-way (a new store)
};
// Error(kInvalidArgument) for an unknown name.
PolicyTraits policy_traits(const std::string& name);

// Builds a policy. `trace` is required by (and only by) oracle, `deps.lsa` and `deps.query` by
// lsa. Error(kInvalidArgument) for an unknown name or a missing dependency.
std::unique_ptr<ResidencyPolicy> make_policy(const std::string& name, const KvCacheConfig& kv,
                                             uint64_t seed, const AttentionTrace* trace = nullptr);
std::unique_ptr<ResidencyPolicy> make_policy(const std::string& name, const KvCacheConfig& kv,
                                             uint64_t seed, const PolicyDeps& deps);

}  // namespace flashmem

#include "memory/policy.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "memory/lsa.h"

namespace flashmem {

namespace {


class FullPolicy final : public ResidencyPolicy {
 public:
  const char* name() const override { return "full"; }
  void select(const SelectContext& c, int64_t n, std::vector<int32_t>& out) override {
    for (int64_t p = c.middle_begin; p < c.middle_end && n > 0; ++p, --n) out.push_back(static_cast<int32_t>(p));
  }
};

class RecencyPolicy final : public ResidencyPolicy {
 public:
  const char* name() const override { return "recency"; }
  void select(const SelectContext& c, int64_t n, std::vector<int32_t>& out) override {
    for (int64_t p = c.middle_end - 1; p >= c.middle_begin && n > 0; --p, --n) out.push_back(static_cast<int32_t>(p));
  }
};

class RandomPolicy final : public ResidencyPolicy {
 public:
  explicit RandomPolicy(uint64_t seed) : seed_(seed) {}
  const char* name() const override { return "random"; }
  void select(const SelectContext& c, int64_t n, std::vector<int32_t>& out) override {
    // One draw per cycle, shared by every layer: a page's KV is either there or not.
    std::vector<int32_t> cand(static_cast<size_t>(std::max<int64_t>(0, c.middle_end - c.middle_begin)));
    std::iota(cand.begin(), cand.end(), static_cast<int32_t>(c.middle_begin));
    std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(c.cycle) * 0xBF58476D1CE4E5B9ull + 1);
    const size_t k = static_cast<size_t>(std::clamp<int64_t>(n, 0, static_cast<int64_t>(cand.size())));
    for (size_t i = 0; i < k; ++i) {  // partial Fisher–Yates
      std::uniform_int_distribution<size_t> d(i, cand.size() - 1);
      std::swap(cand[i], cand[d(rng)]);
    }
    out.insert(out.end(), cand.begin(), cand.begin() + k);
  }

 private:
  uint64_t seed_;
};

// Quest: per page, per KV head and dim, the min and max key; the bound on q·k for a page is
// Σ_c max(q_c·min_c, q_c·max_c). Pages are ranked per query head relative to that head's best
// page (a log-space bound on the page's attention weight), then by the best head.
class QuestPolicy final : public ResidencyPolicy {
 public:
  explicit QuestPolicy(const KvCacheConfig& kv) : kv_(kv), bounds_(kv.n_layers) {}
  const char* name() const override { return "quest"; }
  bool per_step() const override { return true; }
  void select(const SelectContext&, int64_t, std::vector<int32_t>&) override {
    // Chosen per step from the query; at the cycle boundary only sink and tail are kept.
  }
  void select_step(const SelectContext& c, int64_t n, const AttentionParams& p, const float* q,
                   std::vector<int32_t>& out) override {
    const int d = kv_.head_dim, rep = p.n_heads / kv_.n_kv_heads;
    const auto& b = bounds_[c.layer];
    FM_ICHECK(b.size() >= static_cast<size_t>(c.n_pages) * kv_.n_kv_heads * d * 2,
              "quest has bounds for fewer pages than layer ", c.layer, " holds");
    score_.assign(static_cast<size_t>(c.n_pages), -INFINITY);
    head_.resize(static_cast<size_t>(c.n_pages));
    const size_t per_page = static_cast<size_t>(kv_.n_kv_heads) * d * 2;
    for (int h = 0; h < p.n_heads; ++h) {
      const float* qh = q + static_cast<size_t>(h) * d;
      const int g = h / rep;
      float best = -INFINITY;
      for (int64_t pg = c.middle_begin; pg < c.middle_end; ++pg) {
        const float* mn = b.data() + pg * per_page + static_cast<size_t>(g) * d * 2;
        const float* mx = mn + d;
        float ub = 0.0f;
        for (int i = 0; i < d; ++i) ub += std::max(qh[i] * mn[i], qh[i] * mx[i]);
        head_[pg] = ub * p.scale;
        best = std::max(best, head_[pg]);
      }
      for (int64_t pg = c.middle_begin; pg < c.middle_end; ++pg)
        score_[pg] = std::max(score_[pg], head_[pg] - best);
    }
    top_pages(c, n, score_, out);
  }
  void on_page(int layer, int32_t page, const uint8_t* data) override {
    const int d = kv_.head_dim, pt = kv_.page_tokens;
    auto& b = bounds_[layer];
    const size_t per_page = static_cast<size_t>(kv_.n_kv_heads) * d * 2;
    if (b.size() < (static_cast<size_t>(page) + 1) * per_page) b.resize((static_cast<size_t>(page) + 1) * per_page);
    const AttentionParams lay = kv_.layout();
    for (int g = 0; g < kv_.n_kv_heads; ++g)
      for (int i = 0; i < d; ++i) {
        float lo = INFINITY, hi = -INFINITY;
        for (int j = 0; j < pt; ++j) {
          const float v = kv_load_k(data, lay, g, i, j);
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
        float* dst = b.data() + page * per_page + static_cast<size_t>(g) * d * 2;
        dst[i] = lo;
        dst[d + i] = hi;
      }
  }
  uint64_t index_bytes() const override {
    uint64_t n = 0;
    for (const auto& b : bounds_) n += b.size() * sizeof(float);
    return n;
  }
  uint64_t scratch_bytes() const override {
    return (score_.capacity() + head_.capacity()) * sizeof(float);
  }

 private:
  KvCacheConfig kv_;
  std::vector<std::vector<float>> bounds_;  // [layer][page][kv head][min d | max d]
  std::vector<float> score_, head_;
};

class OraclePolicy final : public ResidencyPolicy {
 public:
  explicit OraclePolicy(const AttentionTrace& t) : trace_(t) {}
  const char* name() const override { return "oracle"; }
  void select(const SelectContext& c, int64_t n, std::vector<int32_t>& out) override {
    trace_.window_mass(c.layer, c.step, c.step + std::max<int64_t>(1, c.cycle_steps), c.n_pages, mass_);
    top_pages(c, n, mass_, out);
  }
  uint64_t scratch_bytes() const override { return mass_.capacity() * sizeof(float); }

 private:
  const AttentionTrace& trace_;
  std::vector<float> mass_;
};

}  // namespace

void top_pages(const SelectContext& c, int64_t n, const std::vector<float>& score,
               std::vector<int32_t>& out) {
  std::vector<int32_t> cand(static_cast<size_t>(std::max<int64_t>(0, c.middle_end - c.middle_begin)));
  std::iota(cand.begin(), cand.end(), static_cast<int32_t>(c.middle_begin));
  const size_t k = static_cast<size_t>(std::clamp<int64_t>(n, 0, static_cast<int64_t>(cand.size())));
  // A strict total order (ties: newer first), so selecting then sorting gives partial_sort's
  // result in O(n + k log k).
  const auto before = [&](int32_t a, int32_t b) { return score[a] != score[b] ? score[a] > score[b] : a > b; };
  if (k < cand.size()) std::nth_element(cand.begin(), cand.begin() + k, cand.end(), before);
  std::sort(cand.begin(), cand.begin() + k, before);
  out.insert(out.end(), cand.begin(), cand.begin() + k);
}

void AttentionTrace::record(int64_t step, int layer, std::span<const int32_t> ids,
                            std::span<const float> mass) {
  FM_ICHECK(step >= 0 && layer >= 0 && ids.size() == mass.size(), "bad trace record");
  if (static_cast<int64_t>(steps_.size()) <= step) steps_.resize(step + 1);
  auto& layers = steps_[step];
  if (static_cast<int>(layers.size()) <= layer) layers.resize(layer + 1);
  layers[layer].ids.assign(ids.begin(), ids.end());
  layers[layer].mass.assign(mass.begin(), mass.end());
}

void AttentionTrace::window_mass(int layer, int64_t s0, int64_t s1, int64_t n_pages,
                                 std::vector<float>& out) const {
  out.assign(static_cast<size_t>(std::max<int64_t>(n_pages, 0)), 0.0f);
  for (int64_t s = std::max<int64_t>(s0, 0); s < std::min<int64_t>(s1, steps()); ++s) {
    if (layer >= static_cast<int>(steps_[s].size())) continue;
    const Entry& e = steps_[s][layer];
    for (size_t i = 0; i < e.ids.size(); ++i)
      if (e.ids[i] < n_pages) out[e.ids[i]] += e.mass[i];
  }
}

const std::vector<std::string>& policy_names() {
  static const std::vector<std::string> names = {"full", "recency", "random", "quest", "oracle", "lsa"};
  return names;
}

void check_policy_name(const std::string& name) {
  const auto& names = policy_names();
  if (std::find(names.begin(), names.end(), name) != names.end()) return;
  std::string known;
  for (const std::string& n : names) known += (known.empty() ? "" : ", ") + n;
  FM_FAIL(ErrorCode::kInvalidArgument, "unknown policy '", name, "' (known: ", known, ")");
}

PolicyTraits policy_traits(const std::string& name) {
  check_policy_name(name);
  PolicyTraits t;
  t.keeps_all = name == "full";
  t.replays_trace = name == "oracle";
  t.needs_indexer = t.may_widen = name == "lsa";
  return t;
}

std::unique_ptr<ResidencyPolicy> make_policy(const std::string& name, const KvCacheConfig& kv,
                                             uint64_t seed, const AttentionTrace* trace) {
  PolicyDeps d;
  d.trace = trace;
  return make_policy(name, kv, seed, d);
}

std::unique_ptr<ResidencyPolicy> make_policy(const std::string& name, const KvCacheConfig& kv,
                                             uint64_t seed, const PolicyDeps& deps) {
  const AttentionTrace* trace = deps.trace;
  if (name == "full") return std::make_unique<FullPolicy>();
  if (name == "recency") return std::make_unique<RecencyPolicy>();
  if (name == "random") return std::make_unique<RandomPolicy>(seed);
  if (name == "quest") return std::make_unique<QuestPolicy>(kv);
  if (name == "oracle") {
    FM_CHECK(trace != nullptr, ErrorCode::kInvalidArgument,
             "the oracle policy needs an attention trace from a full-attention pass");
    return std::make_unique<OraclePolicy>(*trace);
  }
  if (name == "lsa") {
    FM_CHECK(deps.lsa != nullptr && deps.query != nullptr, ErrorCode::kInvalidArgument,
             "policy 'lsa' needs a trained Memory Indexer (--indexer FILE)");
    return std::make_unique<LsaPolicy>(kv, deps.lsa, *deps.query, deps.device,
                                       deps.lsa_options ? *deps.lsa_options : LsaOptions{});
  }
  check_policy_name(name);
  FM_FAIL(ErrorCode::kInternal, "policy '", name, "' has no constructor");
}

}  // namespace flashmem

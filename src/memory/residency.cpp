#include "memory/residency.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace flashmem {

KvBudget KvBudget::parse(const std::string& s) {
  KvBudget b;
  const char* p = s.c_str();
  char* end = nullptr;
  const double v = std::strtod(p, &end);
  const std::string unit = end ? std::string(end) : std::string();
  FM_CHECK(end != p && std::isfinite(v), ErrorCode::kInvalidArgument, "bad KV budget '", s,
           "': expected a percent like 10% or a page count like 32pages");
  if (unit == "%") {
    FM_CHECK(v > 0.0 && v <= 100.0, ErrorCode::kInvalidArgument, "KV budget ", s,
             " must be in (0%, 100%]");
    b.kind = Kind::kPercent;
  } else if (unit == "pages" || unit == "p" || unit == "page") {
    FM_CHECK(v >= 1.0 && v == std::floor(v) && v < 1e9, ErrorCode::kInvalidArgument, "KV budget ",
             s, " must be a whole number of pages ≥ 1");
    b.kind = Kind::kPages;
  } else {
    FM_FAIL(ErrorCode::kInvalidArgument, "bad KV budget '", s,
            "': give a percent (10%) or pages (32pages)");
  }
  b.value = v;
  return b;
}

std::string KvBudget::str() const {
  char buf[32];
  if (kind == Kind::kPercent) std::snprintf(buf, sizeof buf, "%g%%", value);
  else std::snprintf(buf, sizeof buf, "%lldpages", static_cast<long long>(value));
  return buf;
}

void ResidencyOptions::validate() const {
  check_policy_name(policy);
  lsa.validate();
  FM_CHECK(cycle >= 1 && cycle <= (1 << 20), ErrorCode::kInvalidArgument, "cycle must be ≥ 1 step, got ", cycle);
  FM_CHECK(sink_tokens >= 0 && tail_tokens >= 0, ErrorCode::kInvalidArgument,
           "sink and tail must be ≥ 0 tokens");
  FM_CHECK(policy != "full" || budget.is_full(), ErrorCode::kInvalidArgument,
           "policy full keeps every page: its budget is 100%, not ", budget.str());
}

namespace {
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

int64_t resolve_budget_pages(const ResidencyOptions& o, const KvCacheConfig& kv, int64_t final_tokens) {
  o.validate();
  const int64_t pt = kv.page_tokens;
  const int64_t full = std::max<int64_t>(1, ceil_div(final_tokens, pt));
  // Sink, tail, and the pages one cycle can fill (the open page included).
  const int64_t minimum = ceil_div(o.sink_tokens, pt) + ceil_div(o.tail_tokens, pt) + ceil_div(pt - 1 + o.cycle, pt);
  int64_t pages;
  if (o.budget.kind == KvBudget::Kind::kPercent) {
    if (o.budget.is_full()) return std::max<int64_t>(2, full);
    pages = static_cast<int64_t>(std::floor(o.budget.value / 100.0 * static_cast<double>(full) + 1e-9));
  } else {
    pages = static_cast<int64_t>(o.budget.value);
  }
  if (full <= minimum || pages >= full) return std::max<int64_t>(2, std::min(std::max(pages, full), full));
  FM_CHECK(pages >= minimum, ErrorCode::kInvalidArgument, "KV budget ", o.budget.str(), " = ", pages,
           " pages per layer (of ", full, ") is below the minimum of ", minimum, ": sink ",
           ceil_div(o.sink_tokens, pt), " + tail ", ceil_div(o.tail_tokens, pt), " + ",
           ceil_div(pt - 1 + o.cycle, pt),
           " for the pages one cycle fills; raise --kv-budget or lower --sink/--tail/--cycle");
  return std::max<int64_t>(2, pages);
}

// ---- Residency ----------------------------------------------------------------------------

Residency::Residency(TieredKvStore& store, std::unique_ptr<ResidencyPolicy> policy,
                     const ResidencyOptions& o)
    : store_(store), policy_(std::move(policy)), opts_(o) {
  o.validate();
  FM_ICHECK(policy_ != nullptr, "no policy");
  ResidencyPolicy* pol = policy_.get();
  // Pages completed before the policy came (a prefill shared between policies) are shown first.
  for (int l = 0; l < store_.config().n_layers; ++l)
    for (int32_t pg = 0; pg < store_.completed_pages(l); ++pg) pol->on_page(l, pg, store_.mirror_page(l, pg));
  // Index keys built from a page are device bytes from then on (prefill included).
  store_.set_page_listener([this, pol](int layer, int32_t page, const uint8_t* data) {
    pol->on_page(layer, page, data);
    store_.set_aux_bytes(pol->index_bytes(), pol->scratch_bytes());
  });
  store_.set_aux_bytes(pol->index_bytes(), pol->scratch_bytes());
  if (policy_->per_step()) store_.add_hook(this);
}

Residency::~Residency() {
  store_.set_page_listener(nullptr);
  store_.remove_hook(this);
}

SelectContext Residency::context(int layer) const {
  const int64_t pt = store_.config().page_tokens;
  SelectContext c;
  c.layer = layer;
  c.n_pages = store_.completed_pages(layer);
  c.middle_begin = std::min(c.n_pages, ceil_div(opts_.sink_tokens, pt));
  c.middle_end = std::max(c.middle_begin, c.n_pages - ceil_div(opts_.tail_tokens, pt));
  c.cycle = cycles_;
  c.step = step_;
  c.cycle_steps = cycle_steps_;
  return c;
}

template <class Pick>
std::vector<int32_t> Residency::compose(int layer, int64_t capacity, Pick&& pick) {
  const SelectContext c = context(layer);
  std::vector<int32_t> set;
  for (int64_t p = 0; p < c.middle_begin; ++p) set.push_back(static_cast<int32_t>(p));
  for (int64_t p = c.middle_end; p < c.n_pages; ++p) set.push_back(static_cast<int32_t>(p));
  FM_ICHECK(static_cast<int64_t>(set.size()) <= capacity, "sink and tail (", set.size(),
            " pages) exceed the selection capacity ", capacity);
  scratch_.clear();
  pick(c, capacity - static_cast<int64_t>(set.size()), scratch_);
  for (int32_t p : scratch_) {
    FM_ICHECK(p >= c.middle_begin && p < c.middle_end, "policy ", policy_->name(), " chose page ",
              p, " outside the middle [", c.middle_begin, ", ", c.middle_end, ")");
    set.push_back(p);
  }
  FM_ICHECK(static_cast<int64_t>(set.size()) <= capacity, "policy ", policy_->name(),
            " chose more pages than fit");
  return set;
}

void Residency::before_step(int64_t step, int64_t tokens_left) {
  step_ = step;
  if (step % opts_.cycle != 0 && store_.decode_mode()) return;
  cycle_steps_ = std::min<int64_t>(opts_.cycle, std::max<int64_t>(tokens_left, 0));
  cycle_start_ = step;
  const int n_layers = store_.config().n_layers;
  std::vector<std::vector<int32_t>> sets(n_layers);
  for (int l = 0; l < n_layers; ++l) {
    const int64_t cap = store_.selection_capacity(l, cycle_steps_);
    sets[l] = compose(l, cap, [&](const SelectContext& c, int64_t n, std::vector<int32_t>& out) {
      policy_->select(c, n, out);
    });
  }
  store_.select(sets);
  store_.set_aux_bytes(policy_->index_bytes(), policy_->scratch_bytes());
  ++cycles_;
}

void Residency::before_attend(TieredKvStore& s, int layer, const AttentionParams& p, const float* q,
                              const int32_t* /*pos*/, int64_t m) {
  if (!policy_->per_step() || m != 1) return;
  // This step's token is already in the cache; the rest of the cycle appends `remaining` more.
  const int64_t remaining = std::max<int64_t>(0, cycle_start_ + cycle_steps_ - step_ - 1);
  auto set = compose(layer, s.selection_capacity(layer, remaining),
                     [&](const SelectContext& c, int64_t n, std::vector<int32_t>& out) {
                       policy_->select_step(c, n, p, q, out);
                     });
  s.select_layer(layer, set);
  s.set_aux_bytes(policy_->index_bytes(), policy_->scratch_bytes());
}

// ---- TraceRecorder ------------------------------------------------------------------------

void TraceRecorder::after_attend(Backend& be, int layer, const AttentionParams& p, const float* q,
                                 const int32_t* pos, int64_t m, std::span<const KvPageRef> pages,
                                 std::span<const int32_t> ids) {
  if (m != 1) return;
  const int64_t n_pages = pos[0] / p.page_tokens + 1;
  reader_.read(be, p, q, pos[0], pages, p.page_tokens, n_pages);
  mass_.assign(pages.size(), 0.0f);
  for (size_t i = 0; i < pages.size(); ++i) {
    if (ids[i] >= n_pages) continue;  // after the query: no mass
    double sum = 0.0;
    for (int h = 0; h < p.n_heads; ++h) sum += reader_.mass()[static_cast<size_t>(h) * n_pages + ids[i]];
    mass_[i] = static_cast<float>(sum / p.n_heads);
  }
  trace_.record(step_, layer, ids, mass_);
}

}  // namespace flashmem

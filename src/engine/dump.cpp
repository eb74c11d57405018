#include "engine/dump.h"

#include <algorithm>

#include "core/dtype.h"
#include "core/error.h"
#include "memory/attention_labels.h"
#include "memory/index_keys.h"

namespace flashmem {

namespace {

// The target layers' inputs of the latest forward pass (its last token).
class LatestInputs final : public ActivationTap {
 public:
  LatestInputs(std::vector<int> layers, int d) : layers_(std::move(layers)), d_(d), rows_(layers_.size() * d) {}
  std::span<const int> layers() const override { return layers_; }
  void on_layer_input(int layer, int32_t position, const float* x) override {
    const size_t t = static_cast<size_t>(std::lower_bound(layers_.begin(), layers_.end(), layer) - layers_.begin());
    std::copy_n(x, d_, rows_.begin() + t * d_);
    position_ = position;
  }
  const std::vector<float>& rows() const { return rows_; }
  int32_t position() const { return position_; }

 private:
  std::vector<int> layers_;
  int d_;
  std::vector<float> rows_;
  int32_t position_ = -1;
};

}  // namespace

train::DumpDoc dump_document(Engine& eng, const DumpInput& in, const DumpSettings& s, DumpTiming* timing) {
  const ModelInfo& mi = eng.info();
  const KvCacheConfig kc = eng.kv_config();
  FM_CHECK(s.tau >= 1 && s.point_stride >= 1 && s.max_new_tokens >= 1 && s.top_p > 0.0f && s.top_p <= 1.0f,
           ErrorCode::kInvalidArgument, "bad dump settings (tau, point stride, -n ≥ 1; top-p in (0, 1])");
  std::vector<IndexKeys> keys;
  for (const std::string& p : s.poolings) {
    IndexKeyConfig ic;
    ic.chunk_tokens = s.chunk_tokens;
    ic.layers = s.target_layers;
    ic.pooling = parse_pooling(p);
    ic.rope = mi.rope;
    keys.emplace_back(kc, ic, nullptr);  // validates layers and chunk size
  }

  ResidencyOptions full;  // policy full, budget 100%
  const int n_new = in.forced.empty() ? s.max_new_tokens : static_cast<int>(in.forced.size());
  LatestInputs tap(s.target_layers, mi.d_model);
  auto pre = eng.prefill(in.prompt, full, n_new, &tap);

  train::DumpDoc d;
  d.name = in.name;
  d.source = in.source;
  d.split = train::split_of(in.name);
  d.model = mi.name;
  d.d_model = mi.d_model;
  d.n_kv_heads = mi.n_kv_heads;
  d.head_dim = mi.head_dim;
  d.n_layers = mi.n_layers;
  d.n_heads = mi.n_heads;
  d.page_tokens = kc.page_tokens;
  d.chunk_tokens = s.chunk_tokens;
  d.tau = s.tau;
  d.top_p = s.top_p;
  d.rope = mi.rope;
  d.target_layers = s.target_layers;
  d.poolings = s.poolings;
  d.n_prompt = static_cast<int64_t>(in.prompt.size());

  // Index keys of the prompt's completed pages (the decode's own pages are never candidates of
  // the decisions recorded here for more than a few steps).
  for (auto& k : keys)
    for (int l : s.target_layers)
      for (int32_t pg = 0; pg < pre->kv->completed_pages(l); ++pg) k.on_page(l, pg, pre->kv->mirror_page(l, pg));
  d.n_chunks = keys.front().n_chunks(0);
  for (auto& k : keys) {
    d.keys.emplace_back();
    d.scales.emplace_back();
    for (int t = 0; t < k.n_targets(); ++t) {
      d.keys.back().emplace_back(k.host_keys(t).begin(), k.host_keys(t).end());
      d.scales.back().emplace_back(k.host_scales(t).begin(), k.host_scales(t).end());
    }
  }

  ChunkHitRecorder hits(s.chunk_tokens, s.top_p);
  auto add_point = [&](int64_t step) {
    d.point_step.push_back(static_cast<int32_t>(step));
    d.point_pos.push_back(tap.position());
    for (float x : tap.rows()) d.hidden.push_back(fp32_to_fp16(x));
  };
  GenerateOptions go;
  go.max_new_tokens = n_new;
  go.memory = full;
  go.forced_tokens = in.forced;
  go.stop_strings = in.stop_strings;
  go.stop_at_eos = in.forced.empty();
  go.attend_hook = &hits;
  go.tap = &tap;
  go.on_step = [&](int64_t step) {
    if (step % s.point_stride == 0) add_point(step);  // the hidden state Level 1 would read now
    hits.set_step(step);
  };
  const GenerateResult g = eng.decode(*pre, go);
  d.n_steps = g.decode_steps;
  if (timing) {
    timing->prefill_seconds += pre->seconds;
    timing->decode_seconds += g.decode_seconds;
    timing->prompt_tokens += d.n_prompt;
    timing->decode_steps += g.decode_steps;
  }
  d.hit_ptr.push_back(0);
  for (int64_t t = 0; t < d.n_steps; ++t) {
    for (const auto& [c, n] : hits.step_hits(t)) {
      d.hit_chunk.push_back(c);
      d.hit_count.push_back(n);
    }
    d.hit_ptr.push_back(static_cast<int32_t>(d.hit_chunk.size()));
  }
  d.mass_ptr.push_back(0);
  for (int64_t t = 0; t < d.n_steps; ++t) {
    for (const auto& [c, m] : hits.step_mass(t)) {
      d.mass_chunk.push_back(c);
      d.mass_value.push_back(m);
    }
    d.mass_ptr.push_back(static_cast<int32_t>(d.mass_chunk.size()));
  }
  d.check();
  return d;
}

}  // namespace flashmem

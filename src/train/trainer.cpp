#include "train/trainer.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/fp8.h"
#include "core/hadamard.h"
#include "core/thread_pool.h"
#include "ops/cpu/elementwise.h"
#include "train/metrics.h"

namespace flashmem::train {

namespace {

constexpr int kShards = 8;  // gradient shards, reduced in order (thread-count independent)

// Every parameter of a layer as one flat list of spans (AdamW, clipping, reductions).
std::vector<std::pair<float*, size_t>> spans(IndexerLayer& l) {
  return {{l.wq_a.data(), l.wq_a.size()}, {l.q_norm.data(), l.q_norm.size()}, {l.wq_b.data(), l.wq_b.size()},
          {l.weights_proj.data(), l.weights_proj.size()}, {&l.bias, 1}};
}

IndexerLayer zeros_like(const IndexerLayer& l) {
  IndexerLayer z;
  z.wq_a.assign(l.wq_a.size(), 0.0f);
  z.q_norm.assign(l.q_norm.size(), 0.0f);
  z.wq_b.assign(l.wq_b.size(), 0.0f);
  z.weights_proj.assign(l.weights_proj.size(), 0.0f);
  z.bias = 0.0f;
  return z;
}

void zero(IndexerLayer& l) {
  for (auto [p, n] : spans(l)) std::fill(p, p + n, 0.0f);
}

void add_into(IndexerLayer& dst, IndexerLayer& src) {
  auto d = spans(dst), s = spans(src);
  for (size_t k = 0; k < d.size(); ++k)
    for (size_t i = 0; i < d[k].second; ++i) d[k].first[i] += s[k].first[i];
}

double log_sigmoid(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }

}  // namespace

double focal_loss(double logit, double label, double gamma, double* dlogit) {
  // With u = ±logit (the label's side), p_t = σ(u): L = −(1 − p_t)^γ · log p_t.
  const double sign = label > 0.5 ? 1.0 : -1.0;
  const double u = sign * logit;
  const double lpt = log_sigmoid(u), pt = std::exp(lpt), q = 1.0 - pt;
  const double qg = std::pow(q, gamma);
  if (dlogit) *dlogit = sign * (gamma * pt * qg * lpt - qg * q);
  return -qg * lpt;
}

IndexerModel init_model(const IndexerDataset& ds, const TrainOptions& o) {
  FM_CHECK(o.n_heads > 0 && o.n_heads % ds.n_kv_heads == 0, ErrorCode::kInvalidArgument, "--heads ", o.n_heads,
           " must be a multiple of the model's ", ds.n_kv_heads, " kv heads");
  FM_CHECK(o.rank > 0, ErrorCode::kInvalidArgument, "--rank must be > 0");
  IndexerModel m;
  m.shape.d_model = ds.d_model;
  m.shape.n_heads = o.n_heads;
  m.shape.n_kv_heads = ds.n_kv_heads;
  m.shape.head_dim = ds.head_dim;
  m.shape.rank = o.rank;
  m.shape.rope = ds.rope;
  m.keys.layers = ds.target_layers;
  m.keys.chunk_tokens = ds.chunk_tokens;
  m.keys.pooling = o.pooling;
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + 11);
  auto fill = [&](std::vector<float>& v, size_t n, int fan_in) {
    std::normal_distribution<float> nd(0.0f, 1.0f / std::sqrt(static_cast<float>(fan_in)));
    v.resize(n);
    for (float& x : v) x = nd(rng);
  };
  const size_t qd = static_cast<size_t>(o.n_heads) * ds.head_dim;
  for (int t = 0; t < ds.n_targets; ++t) {
    IndexerLayer l;
    fill(l.wq_a, static_cast<size_t>(o.rank) * ds.d_model, ds.d_model);
    l.q_norm.assign(o.rank, 1.0f);
    fill(l.wq_b, qd * o.rank, o.rank);
    fill(l.weights_proj, static_cast<size_t>(o.n_heads) * ds.d_model, ds.d_model);
    m.layers.push_back(std::move(l));
  }
  return m;
}

double point_loss_grad(const IndexerModel& m, int t, const float* h, int32_t position, const float* keys,
                       const float* labels, const float* weights, int64_t n, float gamma, IndexerLayer* grad) {
  const IndexerShape& s = m.shape;
  const IndexerLayer& L = m.layers[t];
  const int D = s.d_model, R = s.rank, H = s.n_heads, d = s.head_dim, rep = s.n_heads / s.n_kv_heads;
  const int QD = H * d;
  const int kd = s.n_kv_heads * d;
  // Forward (the inference encoder), keeping what backward needs.
  std::vector<float> q(QD), wv(H);
  IndexerModel::Activations act;
  m.encode_query(t, h, position, q.data(), wv.data(), &act);
  const std::vector<float>& ahat = act.a_hat;
  const std::vector<float>& an = act.an;
  const float inv = act.inv_rms;
  const float ws = 1.0f / std::sqrt(static_cast<float>(QD));
  std::vector<float> dots(static_cast<size_t>(n) * H);
  double loss = 0.0;
  std::vector<float> dq(QD, 0.0f), dwv(H, 0.0f);
  float dbias = 0.0f;
  for (int64_t c = 0; c < n; ++c) {
    const float* kc = keys + c * kd;
    double logit = L.bias;
    for (int hh = 0; hh < H; ++hh) {
      const float* k = kc + (hh / rep) * d;
      const float* qh = q.data() + hh * d;
      float dot = 0.0f;
      for (int i = 0; i < d; ++i) dot += qh[i] * k[i];
      dots[c * H + hh] = dot;
      logit += static_cast<double>(wv[hh]) * (dot > 0.0f ? dot : 0.0f);
    }
    double dl = 0.0;
    loss += weights[c] * focal_loss(logit, labels[c], gamma, &dl);
    const float delta = static_cast<float>(weights[c] * dl);
    dbias += delta;
    for (int hh = 0; hh < H; ++hh) {
      const float dot = dots[c * H + hh];
      if (dot <= 0.0f) continue;
      dwv[hh] += delta * dot;
      const float g = delta * wv[hh];
      const float* k = kc + (hh / rep) * d;
      float* dqh = dq.data() + hh * d;
      for (int i = 0; i < d; ++i) dqh[i] += g * k[i];
    }
  }
  // Backward through Hadamard (symmetric, orthonormal) and RoPE (a rotation: transpose = −pos).
  for (int hh = 0; hh < H; ++hh) hadamard_inplace(dq.data() + static_cast<size_t>(hh) * d, d);
  cpu::rope(dq.data(), H, d, -position, s.rope);
  grad->bias += dbias;
  for (int hh = 0; hh < H; ++hh) {
    float* row = grad->weights_proj.data() + static_cast<size_t>(hh) * D;
    const float g = dwv[hh] * ws;
    for (int i = 0; i < D; ++i) row[i] += g * h[i];
  }
  std::vector<float> dan(R, 0.0f);
  for (int o = 0; o < QD; ++o) {
    const float g = dq[o];
    if (g == 0.0f) continue;
    const float* row = L.wq_b.data() + static_cast<size_t>(o) * R;
    float* grow = grad->wq_b.data() + static_cast<size_t>(o) * R;
    for (int r = 0; r < R; ++r) {
      grow[r] += g * an[r];
      dan[r] += g * row[r];
    }
  }
  // an = ahat ⊙ g, ahat = a · inv: da = inv · (dahat − ahat · mean(dahat ⊙ ahat)).
  double dot_ah = 0.0;
  std::vector<float> dahat(R);
  for (int r = 0; r < R; ++r) {
    grad->q_norm[r] += dan[r] * ahat[r];
    dahat[r] = dan[r] * L.q_norm[r];
    dot_ah += static_cast<double>(dahat[r]) * ahat[r];
  }
  const float mean_dot = static_cast<float>(dot_ah / R);
  for (int r = 0; r < R; ++r) {
    const float da = inv * (dahat[r] - ahat[r] * mean_dot);
    if (da == 0.0f) continue;
    float* grow = grad->wq_a.data() + static_cast<size_t>(r) * D;
    for (int i = 0; i < D; ++i) grow[i] += da * h[i];
  }
  return loss;
}

TrainResult train_indexer(const IndexerDataset& train, const IndexerDataset* val, const TrainOptions& o,
                          const std::function<void(const TrainProgress&)>& progress) {
  FM_CHECK(!train.docs.empty(), ErrorCode::kInvalidArgument, "no training documents");
  FM_CHECK(o.epochs >= 1 && o.batch >= 1 && o.lr > 0 && o.neg_ratio >= 0 && o.max_pos >= 1, ErrorCode::kInvalidArgument,
           "bad training options");
  TrainResult res;
  res.model = init_model(train, o);
  IndexerModel& m = res.model;
  const int nt = train.n_targets;
  const size_t kd = static_cast<size_t>(train.key_dim());
  struct Point {
    const IndexerDoc* doc;
    int64_t s;
  };
  std::vector<Point> pts;
  for (const auto& d : train.docs)
    for (int64_t s = 0; s < d.n_points(); ++s)
      if (d.label_ptr[s + 1] > d.label_ptr[s]) pts.push_back({&d, s});
  FM_CHECK(!pts.empty(), ErrorCode::kInvalidArgument, "no decision point has a golden chunk");
  const int64_t steps_per_epoch = (static_cast<int64_t>(pts.size()) + o.batch - 1) / o.batch;
  const int64_t total = steps_per_epoch * o.epochs;

  // AdamW state, per layer.
  std::vector<IndexerLayer> mom, var;
  for (const auto& l : m.layers) {
    mom.push_back(zeros_like(l));
    var.push_back(zeros_like(l));
  }
  // Gradient shards [shard][layer].
  std::vector<std::vector<IndexerLayer>> shard_grad(kShards);
  for (auto& sg : shard_grad)
    for (const auto& l : m.layers) sg.push_back(zeros_like(l));
  std::vector<double> shard_loss(kShards), shard_elems(kShards);
  ThreadPool pool(o.threads > 0 ? o.threads : ThreadPool::default_threads());
  std::mt19937_64 rng(o.seed * 0xD1B54A32D192ED03ull + 5);
  std::vector<size_t> order(pts.size());
  std::iota(order.begin(), order.end(), 0);
  double best_auc = -1.0;
  IndexerModel best = m;
  int64_t step = 0;
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    double epoch_loss = 0.0;
    int64_t epoch_steps = 0;
    for (int64_t b0 = 0; b0 < static_cast<int64_t>(order.size()); b0 += o.batch) {
      const int64_t b1 = std::min<int64_t>(b0 + o.batch, static_cast<int64_t>(order.size()));
      // Per-point sample seeds come from the main generator, in order (reproducible).
      std::vector<uint64_t> seeds(b1 - b0);
      for (auto& sd : seeds) sd = rng();
      pool.run(kShards, [&](int64_t sh, int) {
        for (auto& g : shard_grad[sh]) zero(g);
        shard_loss[sh] = 0.0;
        shard_elems[sh] = 0.0;
        std::vector<float> keys, labels, weights;
        for (int64_t i = b0 + sh; i < b1; i += kShards) {
          const Point& p = pts[order[i]];
          const IndexerDoc& d = *p.doc;
          std::mt19937_64 prng(seeds[i - b0]);
          const int32_t cb = d.cand_begin[p.s], ce = d.cand_end[p.s];
          std::vector<int32_t> pos(d.label_idx.begin() + d.label_ptr[p.s], d.label_idx.begin() + d.label_ptr[p.s + 1]);
          std::vector<float> hits(d.label_hits.begin() + d.label_ptr[p.s], d.label_hits.begin() + d.label_ptr[p.s + 1]);
          if (static_cast<int>(pos.size()) > o.max_pos) {  // a random subset, hits kept aligned
            std::vector<size_t> ix(pos.size());
            std::iota(ix.begin(), ix.end(), 0);
            std::shuffle(ix.begin(), ix.end(), prng);
            ix.resize(o.max_pos);
            std::vector<int32_t> p2;
            std::vector<float> h2;
            for (size_t k : ix) {
              p2.push_back(pos[k]);
              h2.push_back(hits[k]);
            }
            pos.swap(p2);
            hits.swap(h2);
          }
          // Negatives: distinct candidates that are not golden.
          std::vector<uint8_t> golden(static_cast<size_t>(ce - cb), 0);
          for (int32_t k = d.label_ptr[p.s]; k < d.label_ptr[p.s + 1]; ++k) golden[d.label_idx[k] - cb] = 1;
          std::vector<int32_t> neg;
          for (int32_t c = cb; c < ce; ++c)
            if (!golden[c - cb]) neg.push_back(c);
          const size_t want = std::min(neg.size(), pos.size() * static_cast<size_t>(o.neg_ratio));
          for (size_t k = 0; k < want; ++k) std::swap(neg[k], neg[std::uniform_int_distribution<size_t>(k, neg.size() - 1)(prng)]);
          neg.resize(want);
          const int64_t n = static_cast<int64_t>(pos.size() + neg.size());
          labels.assign(n, 0.0f);
          weights.assign(n, 1.0f);
          for (size_t k = 0; k < pos.size(); ++k) {
            labels[k] = 1.0f;
            if (o.hit_weighting && train.max_hits > 1.0f)
              weights[k] = std::clamp(0.5f + 1.5f * (hits[k] - 1.0f) / (train.max_hits - 1.0f), 0.5f, 2.0f);
          }
          keys.resize(static_cast<size_t>(n) * kd);
          for (int t = 0; t < nt; ++t) {
            for (int64_t k = 0; k < n; ++k) {
              const int32_t c = k < static_cast<int64_t>(pos.size()) ? pos[k] : neg[k - pos.size()];
              const uint8_t* src = d.keys[t].data() + static_cast<size_t>(c) * kd;
              const float sc = d.scales[t][c];
              for (size_t j = 0; j < kd; ++j) keys[k * kd + j] = fp8_e4m3_to_fp32(src[j]) * sc;
            }
            const float* h = d.hidden.data() + (static_cast<size_t>(p.s) * nt + t) * train.d_model;
            shard_loss[sh] += point_loss_grad(m, t, h, d.position[p.s], keys.data(), labels.data(), weights.data(),
                                              n, o.gamma, &shard_grad[sh][t]) / nt;
          }
          shard_elems[sh] += static_cast<double>(n);
        }
      });
      double loss = 0.0, elems = 0.0;
      for (int sh = 0; sh < kShards; ++sh) {
        loss += shard_loss[sh];
        elems += shard_elems[sh];
      }
      for (int sh = 1; sh < kShards; ++sh)
        for (int t = 0; t < nt; ++t) add_into(shard_grad[0][t], shard_grad[sh][t]);
      // Mean over elements (and layers: the per-layer grads are summed, each /nt).
      const float scale = static_cast<float>(1.0 / std::max(elems, 1.0) / nt);
      double norm2 = 0.0;
      for (int t = 0; t < nt; ++t)
        for (auto [g, len] : spans(shard_grad[0][t]))
          for (size_t i = 0; i < len; ++i) {
            g[i] *= scale;
            norm2 += static_cast<double>(g[i]) * g[i];
          }
      const double norm = std::sqrt(norm2);
      const float clip = o.clip > 0 && norm > o.clip ? static_cast<float>(o.clip / norm) : 1.0f;
      ++step;
      const double warm = o.warmup_steps > 0 ? std::min(1.0, static_cast<double>(step) / o.warmup_steps) : 1.0;
      const double lr = o.lr * warm * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step - 1) / static_cast<double>(total)));
      const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
      const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
      for (int t = 0; t < nt; ++t) {
        auto P = spans(m.layers[t]), G = spans(shard_grad[0][t]), M1 = spans(mom[t]), V = spans(var[t]);
        for (size_t k = 0; k < P.size(); ++k) {
          const bool decay = k == 0 || k == 2 || k == 3;  // matrices only
          for (size_t i = 0; i < P[k].second; ++i) {
            const float g = G[k].first[i] * clip;
            float& mm = M1[k].first[i];
            float& vv = V[k].first[i];
            mm = o.beta1 * mm + (1.0f - o.beta1) * g;
            vv = o.beta2 * vv + (1.0f - o.beta2) * g * g;
            float& w = P[k].first[i];
            if (decay) w -= static_cast<float>(lr * o.weight_decay) * w;
            w -= static_cast<float>(lr * (mm / bc1) / (std::sqrt(vv / bc2) + o.adam_eps));
          }
        }
      }
      const double step_loss = loss / std::max(elems, 1.0);
      res.step_losses.push_back(step_loss);
      epoch_loss += step_loss;
      ++epoch_steps;
      if (progress) progress(TrainProgress{epoch, step, total, epoch_loss / epoch_steps, lr});
    }
    EpochLog el;
    el.epoch = epoch;
    el.train_loss = epoch_loss / std::max<int64_t>(epoch_steps, 1);
    if (val && !val->docs.empty()) {
      const IndexerMetrics vm = evaluate_indexer(m, *val, o.threads);
      el.val_auc = vm.rows[nt + 1].auc;  // mean ensemble
      if (el.val_auc > best_auc) {
        best_auc = el.val_auc;
        best = m;
        res.best_epoch = epoch;
      }
    }
    res.log.push_back(el);
  }
  if (best_auc >= 0.0) m = best;
  else res.best_epoch = o.epochs;
  auto& md = res.metadata;
  auto put = [&](const char* k, double v) {
    char b[64];
    std::snprintf(b, sizeof b, "%.9g", v);
    md[std::string("train.") + k] = b;
  };
  put("epochs", o.epochs);
  put("best_epoch", res.best_epoch);
  put("batch", o.batch);
  put("lr", o.lr);
  put("weight_decay", o.weight_decay);
  put("warmup_steps", o.warmup_steps);
  put("clip", o.clip);
  put("gamma", o.gamma);
  put("neg_ratio", o.neg_ratio);
  put("max_pos", o.max_pos);
  put("hit_weighting", o.hit_weighting ? 1 : 0);
  put("seed", static_cast<double>(o.seed));
  put("points", static_cast<double>(pts.size()));
  put("documents", static_cast<double>(train.docs.size()));
  return res;
}

}  // namespace flashmem::train

// The Memory Indexer: forward against an independent float64 evaluation, backward against
// central finite differences, the focal loss's derivative, reproducible training that learns a
// planted rule, metrics against brute force, checkpoints (round trip, malformed files), and
// the lsa policy's Level-1 selection and needle fallback with a scripted scorer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "core/error.h"
#include "core/fp8.h"
#include "core/hadamard.h"
#include "io/safetensors.h"
#include "memory/lsa.h"
#include "ops/cpu/cpu_backend.h"
#include "indexer/indexer_model.h"
#include "train/metrics.h"
#include "train/trainer.h"
#include "test_util.h"

namespace flashmem {
namespace {

train::IndexerDataset tiny_shapes() {
  train::IndexerDataset ds;
  ds.d_model = 12;
  ds.n_kv_heads = 2;
  ds.head_dim = 8;
  ds.n_targets = 2;
  ds.target_layers = {1, 3};
  ds.rope.n_rot = 8;
  ds.rope.freq_base = 10000.0f;
  ds.chunk_tokens = 4;
  ds.max_hits = 10.0f;
  return ds;
}

train::TrainOptions tiny_options() {
  train::TrainOptions o;
  o.n_heads = 4;
  o.rank = 6;
  o.seed = 7;
  return o;
}

// The loss of one point, all in double from the definition (no shared code with the trainer
// beyond the RoPE angles and the Hadamard sign pattern).
double loss_double(const IndexerModel& m, int t, const std::vector<float>& h, int32_t pos,
                   const std::vector<float>& keys, const std::vector<float>& lab, const std::vector<float>& wt,
                   double gamma) {
  const auto& s = m.shape;
  const auto& L = m.layers[t];
  const int D = s.d_model, R = s.rank, H = s.n_heads, d = s.head_dim, rep = H / s.n_kv_heads, kd = s.n_kv_heads * d;
  std::vector<double> a(R), q(H * d, 0.0), w(H, 0.0);
  double ss = 0;
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < D; ++i) a[r] += static_cast<double>(L.wq_a[r * D + i]) * h[i];
    ss += a[r] * a[r];
  }
  for (int r = 0; r < R; ++r) a[r] = a[r] / std::sqrt(ss / R + s.eps) * L.q_norm[r];
  for (int o = 0; o < H * d; ++o)
    for (int r = 0; r < R; ++r) q[o] += static_cast<double>(L.wq_b[o * R + r]) * a[r];
  for (int hh = 0; hh < H; ++hh) {
    double* v = q.data() + hh * d;
    for (int i = 0; i < d / 2; ++i) {
      const double th = pos * std::pow(static_cast<double>(s.rope.freq_base), -2.0 * i / s.rope.n_rot);
      const double x = v[2 * i], y = v[2 * i + 1];
      v[2 * i] = x * std::cos(th) - y * std::sin(th);
      v[2 * i + 1] = x * std::sin(th) + y * std::cos(th);
    }
    std::vector<double> u(d, 0.0);
    for (int r = 0; r < d; ++r)
      for (int c = 0; c < d; ++c) u[r] += (__builtin_popcount(r & c) % 2 ? -1.0 : 1.0) * v[c] / std::sqrt(d * 1.0);
    std::copy(u.begin(), u.end(), v);
  }
  for (int hh = 0; hh < H; ++hh) {
    for (int i = 0; i < D; ++i) w[hh] += static_cast<double>(L.weights_proj[hh * D + i]) * h[i];
    w[hh] /= std::sqrt(static_cast<double>(H * d));
  }
  double loss = 0;
  for (size_t c = 0; c < lab.size(); ++c) {
    double z = L.bias;
    for (int hh = 0; hh < H; ++hh) {
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += q[hh * d + i] * keys[c * kd + (hh / rep) * d + i];
      z += w[hh] * std::max(dot, 0.0);
    }
    const double p = 1.0 / (1.0 + std::exp(-z)), pt = lab[c] > 0.5 ? p : 1.0 - p;
    loss += wt[c] * -std::pow(1.0 - pt, gamma) * std::log(pt);
  }
  return loss;
}

TEST(IndexerTrain, FocalLossDerivativeMatchesFiniteDifferences) {
  for (double gamma : {0.0, 1.0, 2.0})
    for (double y : {0.0, 1.0})
      for (double z : {-6.0, -1.3, -0.2, 0.4, 2.5, 7.0}) {
        double d = 0;
        const double l = train::focal_loss(z, y, gamma, &d);
        const double p = 1 / (1 + std::exp(-z)), pt = y > 0.5 ? p : 1 - p;
        EXPECT_NEAR(l, -std::pow(1 - pt, gamma) * std::log(pt), 1e-12);
        const double e = 1e-5;
        const double fd = (train::focal_loss(z + e, y, gamma, nullptr) - train::focal_loss(z - e, y, gamma, nullptr)) / (2 * e);
        EXPECT_NEAR(d, fd, 1e-7 + 1e-5 * std::fabs(fd)) << "gamma " << gamma << " y " << y << " z " << z;
      }
}

TEST(IndexerTrain, ForwardAndGradientsMatchFloat64AndFiniteDifferences) {
  const train::IndexerDataset ds = tiny_shapes();
  IndexerModel m = train::init_model(ds, tiny_options());
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& l : m.layers) {
    for (float& x : l.q_norm) x = 1.0f + 0.3f * nd(rng);
    l.bias = 0.2f;
  }
  const int n = 9, kd = ds.key_dim();
  std::vector<float> h(ds.d_model), keys(static_cast<size_t>(n) * kd), lab(n), wt(n);
  for (float& x : h) x = nd(rng);
  for (float& x : keys) x = nd(rng);
  for (int c = 0; c < n; ++c) {
    lab[c] = c % 3 == 0 ? 1.0f : 0.0f;
    wt[c] = 0.5f + 0.25f * c;
  }
  const int32_t pos = 37;
  for (int t = 0; t < 2; ++t) {
    IndexerLayer g = m.layers[t];
    for (auto* v : {&g.wq_a, &g.q_norm, &g.wq_b, &g.weights_proj}) std::fill(v->begin(), v->end(), 0.0f);
    g.bias = 0;
    const double loss = train::point_loss_grad(m, t, h.data(), pos, keys.data(), lab.data(), wt.data(), n, 2.0f, &g);
    const double ref = loss_double(m, t, h, pos, keys, lab, wt, 2.0);
    ASSERT_TRUE(std::isfinite(loss));
    EXPECT_NEAR(loss, ref, 1e-4 * std::fabs(ref) + 1e-6);
    // Central differences in double on the float64 reference, a sample of every tensor.
    auto check = [&](std::vector<float>& param, const std::vector<float>& grad, const char* name) {
      std::uniform_int_distribution<size_t> pick(0, param.size() - 1);
      for (int k = 0; k < 12; ++k) {
        const size_t i = pick(rng);
        const float keep = param[i];
        const float e = 1e-3f * std::max(1.0f, std::fabs(keep));
        param[i] = keep + e;
        const double up = loss_double(m, t, h, pos, keys, lab, wt, 2.0);
        param[i] = keep - e;
        const double dn = loss_double(m, t, h, pos, keys, lab, wt, 2.0);
        param[i] = keep;
        const double fd = (up - dn) / (2.0 * e);
        EXPECT_NEAR(grad[i], fd, 2e-3 + 2e-2 * std::fabs(fd)) << name << "[" << i << "] layer " << t;
      }
    };
    IndexerLayer& L = m.layers[t];
    check(L.wq_a, g.wq_a, "wq_a");
    check(L.q_norm, g.q_norm, "q_norm");
    check(L.wq_b, g.wq_b, "wq_b");
    check(L.weights_proj, g.weights_proj, "weights_proj");
    std::vector<float> b = {L.bias}, gb = {g.bias};
    const float keep = L.bias;
    L.bias = keep + 1e-3f;
    const double up = loss_double(m, t, h, pos, keys, lab, wt, 2.0);
    L.bias = keep - 1e-3f;
    const double dn = loss_double(m, t, h, pos, keys, lab, wt, 2.0);
    L.bias = keep;
    EXPECT_NEAR(g.bias, (up - dn) / 2e-3, 1e-3 + 1e-2 * std::fabs(g.bias));
  }
}

// Documents whose golden chunks are the ones a hidden teacher indexer scores highest.
train::IndexerDataset planted(uint64_t seed, int n_docs) {
  train::IndexerDataset ds = tiny_shapes();
  train::TrainOptions to = tiny_options();
  to.seed = 999;
  const IndexerModel teacher = train::init_model(ds, to);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int kd = ds.key_dim(), n_chunks = 40;
  for (int di = 0; di < n_docs; ++di) {
    train::IndexerDoc d;
    d.name = "doc" + std::to_string(di);
    d.n_chunks = n_chunks;
    for (int t = 0; t < ds.n_targets; ++t) {
      d.keys.emplace_back(static_cast<size_t>(n_chunks) * kd);
      d.scales.emplace_back(n_chunks, 1.0f / 64.0f);
      for (auto& b : d.keys[t]) b = fp32_to_fp8_e4m3(64.0f * nd(rng));
    }
    d.label_ptr.push_back(0);
    for (int s = 0; s < 4; ++s) {
      d.position.push_back(160 + s);
      d.cand_begin.push_back(2);
      d.cand_end.push_back(n_chunks - 2);
      for (int t = 0; t < ds.n_targets; ++t)
        for (int i = 0; i < ds.d_model; ++i) d.hidden.push_back(nd(rng));
      std::vector<float> lg;
      train::score_candidates(teacher, 0, ds, d, s, lg);  // layer 0's teacher decides
      std::vector<int> idx(lg.size());
      for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int>(i);
      std::sort(idx.begin(), idx.end(), [&](int a, int b) { return lg[a] > lg[b]; });
      std::vector<int32_t> gold;
      for (int k = 0; k < 4; ++k) gold.push_back(2 + idx[k]);
      std::sort(gold.begin(), gold.end());
      for (int32_t c : gold) {
        d.label_idx.push_back(c);
        d.label_hits.push_back(5.0f);
      }
      d.label_ptr.push_back(static_cast<int32_t>(d.label_idx.size()));
    }
    ds.docs.push_back(std::move(d));
  }
  return ds;
}

TEST(IndexerTrain, LearnsAPlantedRuleReproduciblyForAnyThreadCount) {
  const train::IndexerDataset tr = planted(1, 120), va = planted(2, 8), te = planted(3, 12);
  train::TrainOptions o = tiny_options();
  o.epochs = 30;
  o.batch = 16;
  o.lr = 2e-2f;
  o.threads = 1;
  const IndexerModel init = train::init_model(tr, o);
  const double before = train::evaluate_indexer(init, te, 1).rows[0].auc;
  const train::TrainResult a = train::train_indexer(tr, &va, o);
  o.threads = 3;
  const train::TrainResult b = train::train_indexer(tr, &va, o);
  ASSERT_EQ(a.step_losses.size(), b.step_losses.size());
  EXPECT_EQ(a.step_losses, b.step_losses);  // bit for bit
  for (double l : a.step_losses) ASSERT_TRUE(std::isfinite(l));
  // The loss falls and the held-out layer-0 AUC (the layer the rule was planted in) rises.
  const double first = (a.step_losses[0] + a.step_losses[1]) / 2;
  const double last = (a.step_losses.back() + a.step_losses[a.step_losses.size() - 2]) / 2;
  EXPECT_LT(last, 0.7 * first);
  const train::IndexerMetrics m = train::evaluate_indexer(a.model, te, 2);
  EXPECT_GT(m.rows[0].auc, 0.9) << "before training " << before;
  EXPECT_GT(m.rows[0].auc, before + 0.1);
  ASSERT_EQ(m.rows.size(), 5u);  // two layers, max, mean, the mean in the lsa policy's order
  EXPECT_EQ(m.rows[3].name, "mean");
  EXPECT_NE(m.rows[4].name.find("lsa order"), std::string::npos);
  // The same chunks pass θ in both orders; only the ranking (AUC, recall@b) may differ.
  EXPECT_EQ(m.rows[4].precision, m.rows[3].precision);
  EXPECT_EQ(m.rows[4].recall, m.rows[3].recall);
  for (double v : {m.rows[4].auc, m.rows[4].recall5, m.rows[4].recall10, m.rows[4].recall15}) {
    EXPECT_FALSE(std::isnan(v));
    EXPECT_GE(v, 0.0);
    EXPECT_LE(v, 1.0);
  }
  EXPECT_GE(a.best_epoch, 1);
}

TEST(IndexerMetrics, AucAndRecallAgainstBruteForce) {
  const std::vector<float> s = {0.9f, 0.1f, 0.5f, 0.5f, 0.3f, 0.5f};
  const std::vector<uint8_t> g = {1, 0, 1, 0, 0, 1};
  // Brute force: P(score_pos > score_neg) + ½ P(tie) over all pairs.
  double wins = 0;
  int pairs = 0;
  for (size_t i = 0; i < s.size(); ++i)
    for (size_t j = 0; j < s.size(); ++j)
      if (g[i] && !g[j]) {
        wins += s[i] > s[j] ? 1.0 : s[i] == s[j] ? 0.5 : 0.0;
        ++pairs;
      }
  EXPECT_DOUBLE_EQ(train::auc(s, g), wins / pairs);
  EXPECT_DOUBLE_EQ(train::auc({1, 2, 3}, {0, 0, 1}), 1.0);
  EXPECT_TRUE(std::isnan(train::auc({1, 2}, {1, 1})));
  EXPECT_DOUBLE_EQ(train::recall_at(s, g, 1), 1.0 / 3);
  EXPECT_DOUBLE_EQ(train::recall_at(s, g, 6), 1.0);
  EXPECT_DOUBLE_EQ(train::recall_at({3, 2, 1}, {0, 1, 1}, 2), 0.5);
}

TEST(IndexerCheckpoint, RoundTripAndMalformedFiles) {
  const train::IndexerDataset ds = tiny_shapes();
  const IndexerModel m = train::init_model(ds, tiny_options());
  const std::string path = (std::filesystem::temp_directory_path() / "flashmem_ix.safetensors").string();
  save_indexer(path, m, {{"train.seed", "7"}});
  const auto r = load_indexer(path);
  EXPECT_EQ(r->keys.layers, m.keys.layers);
  EXPECT_EQ(indexer_metadata(path).at("train.seed"), "7");
  std::vector<float> q1(32), w1(4), q2(32), w2(4), h(12, 0.5f);
  m.encode_query(1, h.data(), 99, q1.data(), w1.data());
  r->encode_query(1, h.data(), 99, q2.data(), w2.data());
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(w1, w2);
  // Malformed: each must be refused with kFormat.
  std::vector<char> bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto refused = [&](const std::vector<char>& b, const char* what) {
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(b.data(), static_cast<std::streamsize>(b.size()));
    }
    try {
      load_indexer(path);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << what << ": " << e.what();
    }
  };
  refused(std::vector<char>(bytes.begin(), bytes.begin() + 5), "shorter than the length field");
  refused(std::vector<char>(bytes.begin(), bytes.end() - 4), "truncated data");
  std::vector<char> b = bytes;
  b[0] = static_cast<char>(0xFF);
  b[5] = 0x7F;
  refused(b, "absurd header length");
  b = bytes;
  b[9] = '[';
  refused(b, "bad JSON");
  // A valid safetensors file that is not an indexer.
  SafeTensorsFile f;
  f.tensors["x"] = SafeTensor{"F32", {2}, std::vector<uint8_t>(8, 0)};
  write_safetensors(path, f);
  EXPECT_THROW(load_indexer(path), Error);
  const SafeTensorsFile back = read_safetensors(path);
  EXPECT_EQ(back.tensors.at("x").shape, (std::vector<int64_t>{2}));
  f.tensors["y"] = SafeTensor{"F32", {3}, std::vector<uint8_t>(8, 0)};  // wrong byte count
  EXPECT_THROW(write_safetensors(path, f), Error);
}

TEST(IndexerCheckpoint, SelectTargetsKeepsTheChosenScorersWeights) {
  const train::IndexerDataset ds = tiny_shapes();
  const IndexerModel m = train::init_model(ds, tiny_options());
  ASSERT_GE(m.keys.layers.size(), 2u);
  const int keep = m.keys.layers[1];
  const IndexerModel s = select_targets(m, {keep});
  EXPECT_EQ(s.keys.layers, std::vector<int>{keep});
  ASSERT_EQ(s.layers.size(), 1u);
  EXPECT_EQ(s.keys.chunk_tokens, m.keys.chunk_tokens);
  EXPECT_EQ(s.keys.pooling, m.keys.pooling);
  // Target 0 of the subset is target 1 of the whole: the same query, bit for bit.
  std::vector<float> q1(32), w1(4), q2(32), w2(4), h(12);
  for (size_t i = 0; i < h.size(); ++i) h[i] = 0.1f * static_cast<float>(i) - 0.4f;
  m.encode_query(1, h.data(), 77, q1.data(), w1.data());
  s.encode_query(0, h.data(), 77, q2.data(), w2.data());
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(w1, w2);
  EXPECT_NE(q1, std::vector<float>(32, 0.0f));
  // Saved and loaded (what `train-indexer --select` ships), the subset still encodes the same.
  const std::string path = (std::filesystem::temp_directory_path() / "flashmem_ix_select.safetensors").string();
  save_indexer(path, s, {{"train.labels", "mass"}});
  const auto back = load_indexer(path);
  EXPECT_EQ(back->keys.layers, std::vector<int>{keep});
  back->encode_query(0, h.data(), 77, q2.data(), w2.data());
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(w1, w2);
  EXPECT_EQ(indexer_metadata(path).at("train.labels"), "mass");
  EXPECT_EQ(indexer_metadata(path).at("target_layers"), std::to_string(keep));
  // Order does not matter; empty means all; unknown and repeated layers are refused.
  const std::vector<int> rev(m.keys.layers.rbegin(), m.keys.layers.rend());
  EXPECT_EQ(select_targets(m, rev).keys.layers, m.keys.layers);
  EXPECT_EQ(select_targets(m, {}).keys.layers, m.keys.layers);
  for (const std::vector<int>& bad : {std::vector<int>{m.keys.layers.back() + 1}, std::vector<int>{keep, keep}}) {
    try {
      select_targets(m, bad);
      ADD_FAILURE() << "accepted a bad layer list";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    }
  }
}

// Every tensor's shape is checked against the metadata, not just its element count: a
// transposed wq_a ([d_model, rank] for [rank, d_model]) used to load and run (issue #25).
TEST(IndexerCheckpoint, TensorsOfTheWrongShapeAreRefusedNamingBothShapes) {
  const IndexerModel m = train::init_model(tiny_shapes(), tiny_options());  // rank 6, d_model 12
  const std::string path = (std::filesystem::temp_directory_path() / "flashmem_ix_shape.safetensors").string();
  save_indexer(path, m);
  const SafeTensorsFile good = read_safetensors(path);
  auto refused = [&](const std::function<void(SafeTensorsFile&)>& edit, std::initializer_list<std::string> needles) {
    SafeTensorsFile f = good;
    edit(f);
    write_safetensors(path, f);
    try {
      load_indexer(path);
      ADD_FAILURE() << "accepted: " << *needles.begin();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << e.what();
      for (const std::string& n : needles)
        EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "\"" << e.what() << "\" lacks \"" << n << "\"";
    }
  };
  refused([](SafeTensorsFile& f) { f.tensors.at("layers.1.wq_a").shape = {12, 6}; },
          {path, "tensor layers.1.wq_a has shape [12, 6], expected [6, 12] (rank × d_model"});
  refused([](SafeTensorsFile& f) { f.tensors.at("layers.3.wq_b").shape = {8, 4, 6}; },
          {"layers.3.wq_b has shape [8, 4, 6], expected [32, 6]"});
  refused([](SafeTensorsFile& f) { f.tensors.at("layers.1.bias").shape = {1, 1}; }, {"layers.1.bias", "[1, 1]"});
  refused([](SafeTensorsFile& f) { f.tensors["layers.2.wq_a"] = f.tensors.at("layers.1.wq_a"); },
          {"tensor layers.2.wq_a is not a weight of the target layers 1,3"});
  refused([](SafeTensorsFile& f) { f.metadata["chunk_tokens"] = "0"; }, {"chunk_tokens 0"});
  refused([](SafeTensorsFile& f) { f.metadata["target_layers"] = "3,1"; }, {"target_layers '3,1'"});
  refused([](SafeTensorsFile& f) { f.metadata["rope_freq_base"] = "nan"; }, {"rope_freq_base", "finite"});
  // The untouched file still loads.
  write_safetensors(path, good);
  EXPECT_EQ(load_indexer(path)->keys.layers, m.keys.layers);
}

// Through the CLI: the shipped indexer with one wq_a transposed is refused with one line and
// exit 1 (a bad file) by run and eval, before any prefill and before eval writes anything.
TEST(IndexerCheckpoint, TheCliRefusesATransposedIndexer) {
  SafeTensorsFile f = read_safetensors(std::string(FLASHMEM_SOURCE_DIR) + "/indexers/SmolLM2-135M-Instruct.safetensors");
  std::string name;
  for (auto& [n, t] : f.tensors)
    if (name.empty() && n.size() > 5 && n.substr(n.size() - 5) == ".wq_a") name = n;
  ASSERT_FALSE(name.empty());
  std::vector<int64_t>& shape = f.tensors.at(name).shape;
  ASSERT_EQ(shape.size(), 2u);
  const std::string want = "tensor " + name + " has shape [" + std::to_string(shape[1]) + ", " +
                           std::to_string(shape[0]) + "], expected [" + std::to_string(shape[0]) + ", " +
                           std::to_string(shape[1]) + "]";
  std::swap(shape[0], shape[1]);
  const auto tmp = std::filesystem::temp_directory_path();
  const std::string path = (tmp / "flashmem_ix_transposed.safetensors").string();
  write_safetensors(path, f);
  const std::string out = (tmp / "flashmem_ix_transposed_eval").string();
  std::filesystem::remove_all(out);
  const std::string m = "-m " + test::require_default_model();
  for (const std::string& args : {"run " + m + " -p hi --policy lsa --kv-budget 50% --indexer " + path,
                                  "eval " + m + " --out " + out + " --tasks vt --lengths 1k --samples 1 --policy lsa"
                                  " --kv-budget 50% --indexer " + path}) {
    const test::CmdResult r = test::run_cli(args);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
    EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "not one line: " << r.out;
  }
  EXPECT_FALSE(std::filesystem::exists(out + "/results.jsonl"));
}

// ---- the lsa policy with a scripted scorer ---------------------------------------------------

class ScriptedScorer final : public LsaScorer {
 public:
  explicit ScriptedScorer(IndexKeyConfig c) : c_(std::move(c)) {}
  const IndexKeyConfig& keys_config() const override { return c_; }
  void score(int t, const float* /*row*/, int32_t /*position*/, IndexKeys& keys, std::vector<float>& prob) override {
    prob.assign(static_cast<size_t>(keys.n_chunks(0)), low);
    for (size_t c = 0; c < profile.size() && c < prob.size(); ++c) prob[c] = profile[c];
    for (auto [c, p] : per_target.empty() ? high : per_target[static_cast<size_t>(t)])
      if (c < static_cast<int64_t>(prob.size())) prob[c] = p;
    ++calls;
  }
  IndexKeyConfig c_;
  float low = 0.1f;
  std::vector<float> profile;                            // per chunk, when given (else `low`)
  std::vector<std::pair<int64_t, float>> high;           // every target
  std::vector<std::vector<std::pair<int64_t, float>>> per_target;  // instead of `high`, per target
  int calls = 0;
};

TEST(LsaPolicy, RanksPagesByKeptChunksAndWidensWhenItCannotChoose) {
  KvCacheConfig kv;
  kv.n_layers = 2;
  kv.n_kv_heads = 1;
  kv.head_dim = 8;
  kv.page_tokens = 8;
  kv.max_tokens = 256;
  IndexKeyConfig ic;
  ic.chunk_tokens = 4;
  ic.layers = {1};
  ic.rope.n_rot = 8;
  auto scorer = std::make_shared<ScriptedScorer>(ic);
  IndexerQuery q;
  q.layers = {1};
  q.d_model = 4;
  q.rows.assign(4, 0.0f);
  q.position = 100;
  LsaOptions o;
  o.spread = 0;  // the chunks' own scores rank the pages (spread is tested below)
  o.contrast = 0;  // (contrast too)
  CpuBackend be(1);
  LsaPolicy pol(kv, scorer, q, &be, o);
  std::vector<float> page(static_cast<size_t>(2) * 8 * 8, 0.25f);
  for (int32_t pg = 0; pg < 10; ++pg) pol.on_page(1, pg, reinterpret_cast<const uint8_t*>(page.data()));
  EXPECT_GT(pol.index_bytes(), 0u);  // keys live in backend memory
  // Page 6 has two chunks above θ, page 3 one (with the best score), page 8 one.
  scorer->high = {{12, 0.9f}, {13, 0.8f}, {6, 0.95f}, {16, 0.7f}};
  SelectContext c;
  c.n_pages = 10;
  c.middle_begin = 1;
  c.middle_end = 9;
  std::vector<int32_t> out;
  pol.select(c, 2, out);
  EXPECT_EQ(out, (std::vector<int32_t>{6, 3}));
  c.layer = 1;  // the same cycle: no second scoring, same pages
  out.clear();
  pol.select(c, 3, out);
  EXPECT_EQ(out, (std::vector<int32_t>{6, 3, 8}));
  EXPECT_EQ(scorer->calls, 1);
  EXPECT_FALSE(pol.wants_widen());
  // Next cycle: most chunks pass θ → the needle fallback asks for the whole KV.
  scorer->low = 0.8f;
  c.cycle = 1;
  out.clear();
  pol.select(c, 2, out);
  EXPECT_TRUE(pol.wants_widen());
  EXPECT_NE(pol.widen_reason().find("kept"), std::string::npos);
  EXPECT_GT(pol.last_kept_fraction(), 0.5);
  o.widen = false;
  LsaPolicy quiet(kv, scorer, q, &be, o);
  for (int32_t pg = 0; pg < 10; ++pg) quiet.on_page(1, pg, reinterpret_cast<const uint8_t*>(page.data()));
  out.clear();
  quiet.select(c, 2, out);
  EXPECT_FALSE(quiet.wants_widen());
}

// One-chunk pages over n_pages pages of a KV with the given layers; `targets` are the indexer's.
struct ScriptedLsa {
  ScriptedLsa(int n_layers, std::vector<int> targets, int32_t n_pages) {
    kv.n_layers = n_layers;
    kv.n_kv_heads = 1;
    kv.head_dim = 8;
    kv.page_tokens = 4;
    kv.max_tokens = 256;
    ic.chunk_tokens = 4;
    ic.layers = targets;
    ic.rope.n_rot = 8;
    scorer = std::make_shared<ScriptedScorer>(ic);
    q.layers = targets;
    q.d_model = 4;
    q.rows.assign(4 * targets.size(), 0.0f);
    q.position = 4 * n_pages;
    pages = n_pages;
  }
  std::unique_ptr<LsaPolicy> policy(const LsaOptions& o) {
    auto pol = std::make_unique<LsaPolicy>(kv, scorer, q, &be, o);
    std::vector<float> page(static_cast<size_t>(2) * 4 * 8, 0.25f);
    for (int layer : ic.layers)
      for (int32_t pg = 0; pg < pages; ++pg) pol->on_page(layer, pg, reinterpret_cast<const uint8_t*>(page.data()));
    return pol;
  }
  // Every page completed; sink and tail one page each.
  SelectContext context() const {
    SelectContext c;
    c.n_pages = pages;
    c.middle_begin = 1;
    c.middle_end = pages - 1;
    return c;
  }
  KvCacheConfig kv;
  IndexKeyConfig ic;
  std::shared_ptr<ScriptedScorer> scorer;
  IndexerQuery q;
  CpuBackend be{1};
  int32_t pages = 0;
};

TEST(LsaPolicy, ThePromptObservationComesFirstAndItsMissedMassWidens) {
  // Ten one-chunk pages, sink and tail one page each. The indexer likes pages 2 and 3; the
  // prompt's last tokens attended page 7 most, then page 5 (0.05 on page 4 and the rest on the
  // sink and tail pages).
  ScriptedLsa s(2, {0}, 10);
  s.scorer->high = {{2, 0.9f}, {3, 0.8f}};
  s.q.prompt_mass.assign(2, std::vector<float>(10, 0.0f));
  std::vector<float>& m = s.q.prompt_mass[1];  // layer 1; layer 0 attended page 6 alone
  m[0] = 0.3f;
  m[9] = 0.2f;
  m[7] = 0.3f;
  m[5] = 0.15f;
  m[4] = 0.05f;
  s.q.prompt_mass[0][6] = 1.0f;
  SelectContext c = s.context();
  // Layer 1's pages (selected after layer 0's, as Residency does); the absent mass is the mean
  // of both layers'.
  auto pick = [&](LsaOptions o, int64_t n, double* absent = nullptr, bool* widened = nullptr) {
    o.contrast = 0;
    o.spread = 0;
    o.observe_spread = 0;  // TheObservationSpreadsToNeighbouringPages
    auto pol = s.policy(o);
    std::vector<int32_t> first, out;
    c.layer = 0;
    pol->select(c, n, first);
    EXPECT_EQ(first.front(), o.observe > 0 ? 6 : 2);
    c.layer = 1;
    pol->select(c, n, out);
    if (absent) *absent = pol->last_absent_mass();
    if (widened) *widened = pol->wants_widen();
    return out;
  };
  LsaOptions o;
  double absent = 0;
  bool widened = true;
  // Top-p 0.5 of the middle mass (0.5): page 7 (0.3) is enough; then the indexer's order.
  EXPECT_EQ(pick(o, 3, &absent, &widened), (std::vector<int32_t>{7, 2, 3}));
  EXPECT_NEAR(absent, 0.1, 1e-6);  // layer 1 misses pages 5 and 4 (0.2), layer 0 nothing
  EXPECT_FALSE(widened);           // the default threshold never widens
  // Top-p 0.9: pages 7 and 5 (0.45 of 0.5), most mass first.
  o.observe_top_p = 0.9f;
  EXPECT_EQ(pick(o, 3, &absent), (std::vector<int32_t>{7, 5, 2}));
  EXPECT_NEAR(absent, 0.025, 1e-6);
  // The fallback: one slot misses 0.2 of layer 1's observed attention, 0.1 on average, above 0.05.
  o.widen_absent = 0.05f;
  EXPECT_EQ(pick(o, 1, &absent, &widened), (std::vector<int32_t>{7}));
  EXPECT_TRUE(widened);
  EXPECT_FALSE(pick(o, 3, &absent, &widened).empty());
  EXPECT_FALSE(widened);  // 0.025 missed
  // Off: the indexer alone, no absent mass measured.
  o.observe = 0;
  EXPECT_EQ(pick(o, 2, &absent, &widened), (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(absent, -1.0);
  LsaOptions bad;
  bad.observe_top_p = 0.0f;
  EXPECT_THROW(bad.validate(), Error);
  bad = LsaOptions{};
  bad.widen_absent = 1.5f;
  EXPECT_THROW(bad.validate(), Error);
}

// observe_spread: the pages either side of an observed page rank next to it, as if they held
// 0.9^d of its share, ahead of the indexer's pages and of observed pages with less than that.
TEST(LsaPolicy, TheObservationSpreadsToNeighbouringPages) {
  ScriptedLsa s(1, {0}, 12);  // middle pages 1..10
  s.scorer->high = {{2, 0.9f}, {3, 0.8f}};
  s.q.prompt_mass.assign(1, std::vector<float>(12, 0.0f));
  std::vector<float>& m = s.q.prompt_mass[0];
  m[0] = 0.4f;   // sink
  m[11] = 0.2f;  // tail
  m[6] = 0.25f;  // 0.625 of the middle's 0.4
  m[9] = 0.15f;  // 0.375
  const SelectContext c = s.context();
  auto pick = [&](int spread, float top_p, int64_t n) {
    LsaOptions o;
    o.contrast = 0;
    o.spread = 0;
    o.observe_spread = spread;
    o.observe_top_p = top_p;
    auto pol = s.policy(o);
    std::vector<int32_t> out;
    pol->select(c, n, out);
    return out;
  };
  // Top-p 0.5: page 6 alone; without spread the indexer's pages come next.
  EXPECT_EQ(pick(0, 0.5f, 3), (std::vector<int32_t>{6, 2, 3}));
  EXPECT_EQ(pick(1, 0.5f, 4), (std::vector<int32_t>{6, 7, 5, 2}));  // ties: newer first
  EXPECT_EQ(pick(2, 0.5f, 6), (std::vector<int32_t>{6, 7, 5, 8, 4, 2}));
  // Top-p 1: page 9 (0.375) ranks below page 6's neighbours (0.5625) and above its own (0.3375).
  EXPECT_EQ(pick(1, 1.0f, 8), (std::vector<int32_t>{6, 7, 5, 9, 10, 8, 2, 3}));
  LsaOptions bad;
  bad.observe_spread = -1;
  EXPECT_THROW(bad.validate(), Error);
}

TEST(LsaPolicy, SpreadPullsInTheNeighboursOfAChosenChunkFirst) {
  // Pages of one chunk (the RULER runs' setting): chunk 4 scores 0.9, chunk 7 0.6, chunk 5 0.2.
  ScriptedLsa s(1, {0}, 10);
  s.scorer->high = {{4, 0.9f}, {7, 0.6f}, {5, 0.2f}};
  SelectContext c = s.context();
  auto pick = [&](int spread, int64_t n) {
    LsaOptions o;
    o.spread = spread;
    o.contrast = 0;
    auto pol = s.policy(o);
    std::vector<int32_t> out;
    pol->select(c, n, out);
    EXPECT_DOUBLE_EQ(pol->last_kept_fraction(), 2.0 / 8.0);  // statistics use the chunks' own scores
    return out;
  };
  EXPECT_EQ(pick(0, 3), (std::vector<int32_t>{4, 7, 5}));
  // Spread 1: 3 and 5 rank at 0.9·0.9, above chunk 7 (0.6); 6 and 8 at 0.9·0.6 (ties: newer first).
  EXPECT_EQ(pick(1, 3), (std::vector<int32_t>{4, 5, 3}));
  EXPECT_EQ(pick(1, 5), (std::vector<int32_t>{4, 5, 3, 7, 8}));
  // Spread 2: chunk 2 and 6 reach 0.9·0.81.
  EXPECT_EQ(pick(2, 5), (std::vector<int32_t>{4, 5, 3, 6, 2}));
  LsaOptions bad;
  bad.spread = 65;
  EXPECT_THROW(bad.validate(), Error);
  bad.spread = -1;
  EXPECT_THROW(bad.validate(), Error);
}

TEST(LsaPolicy, TheTraceRecordsEachLevelOnePassAsSelected) {
  // Two layers, one target; chunk 4 scores 0.9, chunk 6 0.7; pages of one chunk.
  ScriptedLsa s(2, {0}, 10);
  s.scorer->high = {{4, 0.9f}, {6, 0.7f}};
  LsaOptions o;
  o.spread = 0;
  o.contrast = 0;
  auto pol = s.policy(o);
  std::vector<LsaSelection> trace;
  pol->trace_into(&trace);
  SelectContext c = s.context();
  c.step = 0;
  std::vector<int32_t> out;
  pol->select(c, 3, out);
  c.layer = 1;  // same cycle: no new pass, no new record
  std::vector<int32_t> out1;
  pol->select(c, 3, out1);
  ASSERT_EQ(trace.size(), 1u);
  const LsaSelection& t = trace[0];
  EXPECT_EQ(t.cycle, 0);
  EXPECT_EQ(t.step, 0);
  EXPECT_EQ(t.middle_begin, 1);
  EXPECT_EQ(t.middle_end, 9);
  EXPECT_EQ(t.slots, 3);
  EXPECT_EQ(t.pages, out);
  EXPECT_EQ(t.pages, (std::vector<int32_t>{4, 6, 8}));  // then the newest of the rest
  ASSERT_EQ(t.chunk_scores.size(), 10u);  // every completed page's chunk, sink and tail too
  for (int ch = 0; ch < 10; ++ch) EXPECT_FLOAT_EQ(t.chunk_scores[ch], ch == 4 ? 0.9f : ch == 6 ? 0.7f : 0.1f) << ch;
  EXPECT_DOUBLE_EQ(t.kept_fraction, pol->last_kept_fraction());
  EXPECT_DOUBLE_EQ(t.kept_fraction, 2.0 / 8.0);
  // The next cycle, 64 steps on, with the scores moved: a second record.
  s.scorer->high = {{2, 0.95f}};
  c.cycle = 1;
  c.step = 64;
  c.layer = 0;
  out.clear();
  pol->select(c, 1, out);
  ASSERT_EQ(trace.size(), 2u);
  EXPECT_EQ(trace[1].cycle, 1);
  EXPECT_EQ(trace[1].step, 64);
  EXPECT_EQ(trace[1].pages, (std::vector<int32_t>{2}));
  // Stopped: nothing more is appended.
  pol->trace_into(nullptr);
  c.cycle = 2;
  out.clear();
  pol->select(c, 1, out);
  EXPECT_EQ(trace.size(), 2u);
}

// Two target layers' scores meet in their mean: every layer gets the same pages.
TEST(LsaPolicy, TheTargetLayersMeetInTheirMeanAndEveryLayerSharesThePick) {
  // Target layers 1 and 4 of six; layer 1's indexer wants page 3 (0.95), layer 4's page 6.
  ScriptedLsa s(6, {1, 4}, 10);
  s.scorer->per_target = {{{3, 0.95f}}, {{6, 0.95f}}};
  SelectContext c = s.context();
  LsaOptions o;
  o.spread = 0;
  auto pol = s.policy(o);
  for (int layer = 0; layer < 6; ++layer) {
    c.layer = layer;
    std::vector<int32_t> out;
    pol->select(c, 1, out);
    // The mean (0.525 on both pages) ties; ties go to the newer page.
    EXPECT_EQ(out, std::vector<int32_t>{6}) << "layer " << layer;
  }
  EXPECT_EQ(s.scorer->calls, 2);  // one Level-1 pass: each target scored once
}

TEST(LsaPolicy, ContrastRanksAChunkThatStandsOutAboveAUniformlyHighStretch) {
  // Chunks 1..13 score 0.1 except chunk 5 (0.6); the stretch 14..19 before the tail scores 0.8.
  ScriptedLsa s(1, {0}, 21);
  s.scorer->profile.assign(21, 0.1f);
  s.scorer->profile[5] = 0.6f;
  for (int ch = 14; ch < 20; ++ch) s.scorer->profile[ch] = 0.8f;
  SelectContext c = s.context();
  auto pick = [&](int contrast, int64_t n) {
    LsaOptions o;
    o.spread = 0;
    o.contrast = contrast;
    auto pol = s.policy(o);
    std::vector<int32_t> out;
    pol->select(c, n, out);
    return out;
  };
  // Raw scores: the newest of the stretch.
  EXPECT_EQ(pick(0, 3), (std::vector<int32_t>{19, 18, 17}));
  // Contrast 4: chunk 5 rises 0.5 above its window's lower quartile (0.1); inside the stretch
  // the quartile is 0.8 (rise 0), while its first two chunks still see 0.1 (rise 0.7).
  EXPECT_EQ(pick(4, 3), (std::vector<int32_t>{15, 14, 5}));
  // Chunks above θ come first: the far chunks at 0.1 never outrank the stretch.
  auto seven = pick(4, 7);
  std::sort(seven.begin(), seven.end());
  EXPECT_EQ(seven, (std::vector<int32_t>{5, 14, 15, 16, 17, 18, 19}));
  // Random scores, every window shape at the edges: the order is the reference's (the rise
  // over each chunk's window sorted in full; θ above every score, so the rise alone ranks).
  ScriptedLsa r(1, {0}, 60);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.0f, 0.9f);
  r.scorer->profile.resize(60);
  for (float& x : r.scorer->profile) x = u(rng);
  const SelectContext rc = r.context();
  for (int w : {1, 3, 7, 40}) {
    LsaOptions o;
    o.spread = 0;
    o.contrast = w;
    o.threshold = 0.95f;
    auto pol = r.policy(o);
    std::vector<int32_t> got;
    pol->select(rc, rc.middle_end - rc.middle_begin, got);
    std::vector<std::pair<float, int32_t>> ref;
    const auto& p = r.scorer->profile;
    for (int64_t ch = rc.middle_begin; ch < rc.middle_end; ++ch) {
      std::vector<float> win(p.begin() + std::max<int64_t>(rc.middle_begin, ch - w),
                             p.begin() + std::min<int64_t>(rc.middle_end, ch + w + 1));
      std::sort(win.begin(), win.end());
      ref.emplace_back(std::max(0.0f, p[ch] - win[win.size() / 4]), static_cast<int32_t>(ch));
    }
    std::sort(ref.begin(), ref.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second > b.second;  // ties: newer first
    });
    std::vector<int32_t> want;
    for (const auto& [rise, ch] : ref) want.push_back(ch);
    EXPECT_EQ(got, want) << "window " << w;
  }
  LsaOptions bad;
  bad.contrast = -1;
  EXPECT_THROW(bad.validate(), Error);
  bad.contrast = 5000;
  EXPECT_THROW(bad.validate(), Error);
}

}  // namespace
}  // namespace flashmem

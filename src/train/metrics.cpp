#include "train/metrics.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/error.h"
#include "core/fp8.h"
#include "core/thread_pool.h"
#include "indexer/ranking.h"

namespace flashmem::train {

double auc(const std::vector<float>& score, const std::vector<uint8_t>& golden) {
  // Mann–Whitney U with midranks for ties.
  const size_t n = score.size();
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return score[a] < score[b]; });
  double rank_sum = 0.0;
  int64_t npos = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && score[idx[j]] == score[idx[i]]) ++j;
    const double mid = (static_cast<double>(i) + static_cast<double>(j - 1)) / 2.0 + 1.0;
    for (size_t k = i; k < j; ++k)
      if (golden[idx[k]]) {
        rank_sum += mid;
        ++npos;
      }
    i = j;
  }
  const int64_t nneg = static_cast<int64_t>(n) - npos;
  if (npos == 0 || nneg == 0) return NAN;
  return (rank_sum - static_cast<double>(npos) * (npos + 1) / 2.0) / (static_cast<double>(npos) * nneg);
}

double recall_at(const std::vector<float>& score, const std::vector<uint8_t>& golden, int64_t k) {
  const int64_t npos = std::count(golden.begin(), golden.end(), 1);
  if (npos == 0) return NAN;
  std::vector<size_t> idx(score.size());
  std::iota(idx.begin(), idx.end(), 0);
  k = std::clamp<int64_t>(k, 0, static_cast<int64_t>(idx.size()));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](size_t a, size_t b) { return score[a] != score[b] ? score[a] > score[b] : a > b; });
  int64_t hit = 0;
  for (int64_t i = 0; i < k; ++i) hit += golden[idx[i]];
  return static_cast<double>(hit) / static_cast<double>(npos);
}

void score_candidates(const IndexerModel& m, int t, const IndexerDataset& ds, const IndexerDoc& doc,
                      int64_t s, std::vector<float>& logits) {
  const IndexerShape& sh = m.shape;
  std::vector<float> q(static_cast<size_t>(sh.n_heads) * sh.head_dim), w(sh.n_heads);
  m.encode_query(t, doc.hidden.data() + (static_cast<size_t>(s) * ds.n_targets + t) * ds.d_model,
                 doc.position[s], q.data(), w.data());
  const int64_t cb = doc.cand_begin[s], n = doc.cand_end[s] - cb;
  logits.resize(static_cast<size_t>(std::max<int64_t>(n, 0)));
  if (n <= 0) return;
  const size_t kd = static_cast<size_t>(ds.key_dim());
  index_logits_reference(sh, q.data(), w.data(), m.layers[t].bias, doc.keys[t].data() + cb * kd,
                         doc.scales[t].data() + cb, n, logits.data());
}

IndexerMetrics evaluate_indexer(const IndexerModel& m, const IndexerDataset& ds, int threads) {
  const int nt = ds.n_targets;
  struct Point {
    const IndexerDoc* doc;
    int64_t s;
  };
  std::vector<Point> pts;
  for (const auto& d : ds.docs)
    for (int64_t s = 0; s < d.n_points(); ++s)
      if (d.label_ptr[s + 1] > d.label_ptr[s] && d.cand_end[s] > d.cand_begin[s]) pts.push_back({&d, s});
  const int n_rows = nt + 3;  // layers, max, mean, the lsa ranking of the mean
  const int window = kContrastWindow;
  // Per point and row: auc, r5, r10, r15, tp, fp, positives (micro counts) — summed in order.
  std::vector<std::array<double, 7>> acc(pts.size() * n_rows);
  std::vector<double> cand(pts.size()), pos(pts.size());
  ThreadPool pool(threads > 0 ? threads : ThreadPool::default_threads());
  pool.run(static_cast<int64_t>(pts.size()), [&](int64_t i, int) {
    const IndexerDoc& d = *pts[i].doc;
    const int64_t s = pts[i].s, cb = d.cand_begin[s], n = d.cand_end[s] - cb;
    std::vector<uint8_t> gold(static_cast<size_t>(n), 0);
    for (int32_t k = d.label_ptr[s]; k < d.label_ptr[s + 1]; ++k) gold[d.label_idx[k] - cb] = 1;
    std::vector<std::vector<float>> prob(n_rows);
    std::vector<float> lg;
    prob[nt].assign(n, 0.0f);
    prob[nt + 1].assign(n, 0.0f);
    for (int t = 0; t < nt; ++t) {
      score_candidates(m, t, ds, d, s, lg);
      prob[t].resize(n);
      for (int64_t c = 0; c < n; ++c) {
        const float p = 1.0f / (1.0f + std::exp(-lg[c]));
        prob[t][c] = p;
        prob[nt][c] = std::max(prob[nt][c], p);
        prob[nt + 1][c] += p / nt;
      }
    }
    // The lsa policy's order (contrast): chunks above θ first, then by their rise above the
    // lower quartile of their surroundings (indexer/ranking.h).
    std::vector<float> sorted;
    contrast_rise(prob[nt + 1], 0, n, window, prob[nt + 2], sorted);
    for (int64_t c = 0; c < n; ++c) prob[nt + 2][c] += prob[nt + 1][c] > 0.5f ? 1.0f : 0.0f;
    const int64_t npos = std::count(gold.begin(), gold.end(), 1);
    cand[i] = static_cast<double>(n);
    pos[i] = static_cast<double>(npos);
    for (int r = 0; r < n_rows; ++r) {
      auto& a = acc[i * n_rows + r];
      a[0] = auc(prob[r], gold);
      for (int b = 0; b < 3; ++b)
        a[1 + b] = recall_at(prob[r], gold, static_cast<int64_t>(std::ceil((0.05 * (b + 1)) * n - 1e-9)));
      double tp = 0, fp = 0;
      const std::vector<float>& at_theta = r == nt + 2 ? prob[nt + 1] : prob[r];  // same chunks pass θ
      for (int64_t c = 0; c < n; ++c)
        if (at_theta[c] > 0.5f) (gold[c] ? tp : fp) += 1;
      a[4] = tp;
      a[5] = fp;
      a[6] = static_cast<double>(npos);
    }
  });
  IndexerMetrics out;
  out.points = static_cast<int64_t>(pts.size());
  double sc = 0, sp = 0;
  for (size_t i = 0; i < pts.size(); ++i) {
    sc += cand[i];
    sp += pos[i];
  }
  out.candidates = pts.empty() ? 0 : sc / static_cast<double>(pts.size());
  out.positive_rate = sc > 0 ? sp / sc : 0;
  for (int r = 0; r < n_rows; ++r) {
    ScorerMetrics sm;
    sm.name = r < nt    ? "layer " + std::to_string(ds.target_layers[r])
              : r == nt ? "max"
              : r == nt + 1 ? "mean"
                            : "mean, lsa order (contrast " + std::to_string(window) + ")";
    double auc_sum = 0, r5 = 0, r10 = 0, r15 = 0, tp = 0, fp = 0, np = 0;
    int64_t auc_n = 0;
    for (size_t i = 0; i < pts.size(); ++i) {
      const auto& a = acc[i * n_rows + r];
      if (!std::isnan(a[0])) {
        auc_sum += a[0];
        ++auc_n;
      }
      r5 += a[1];
      r10 += a[2];
      r15 += a[3];
      tp += a[4];
      fp += a[5];
      np += a[6];
    }
    const double n = std::max<double>(1.0, static_cast<double>(pts.size()));
    sm.auc = auc_n ? auc_sum / static_cast<double>(auc_n) : NAN;
    sm.recall5 = r5 / n;
    sm.recall10 = r10 / n;
    sm.recall15 = r15 / n;
    sm.precision = tp + fp > 0 ? tp / (tp + fp) : 0.0;
    sm.recall = np > 0 ? tp / np : 0.0;
    out.rows.push_back(sm);
  }
  return out;
}

std::string render_metrics(const IndexerMetrics& r) {
  std::string s;
  char b[256];
  std::snprintf(b, sizeof b, "%lld decision points, %.1f candidate chunks each, %.1f%% golden\n\n",
                static_cast<long long>(r.points), r.candidates, 100.0 * r.positive_rate);
  s += b;
  s += "| scorer | AUC | recall@5% | recall@10% | recall@15% | precision@0.5 | recall@0.5 |\n";
  s += "|---|---|---|---|---|---|---|\n";
  for (const auto& m : r.rows) {
    std::snprintf(b, sizeof b, "| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", m.name.c_str(), m.auc,
                  m.recall5, m.recall10, m.recall15, m.precision, m.recall);
    s += b;
  }
  return s;
}

}  // namespace flashmem::train

#include "memory/indexer_scorer.h"

#include <cmath>

#include "core/error.h"

namespace flashmem {

IndexKeyConfig keys_config_of(const IndexerModel& m) {
  IndexKeyConfig c;
  c.chunk_tokens = m.keys.chunk_tokens;
  c.layers = m.keys.layers;
  c.pooling = parse_pooling(m.keys.pooling);
  c.rope = m.shape.rope;
  return c;
}

namespace {

class IndexerScorer final : public LsaScorer {
 public:
  IndexerScorer(std::shared_ptr<const IndexerModel> m, Backend& be)
      : m_(std::move(m)), be_(be), keys_cfg_(keys_config_of(*m_)),
        q_(static_cast<size_t>(m_->shape.n_heads) * m_->shape.head_dim), w_(m_->shape.n_heads),
        qw_dev_(be, (q_.size() + w_.size()) * sizeof(float)) {}
  const IndexKeyConfig& keys_config() const override { return keys_cfg_; }
  void score(int t, const float* row, int32_t position, IndexKeys& keys, std::vector<float>& prob) override {
    m_->encode_query(t, row, position, q_.data(), w_.data());
    float* qd = qw_dev_.as<float>();
    be_.upload(qd, q_.data(), q_.size() * sizeof(float));
    be_.upload(qd + q_.size(), w_.data(), w_.size() * sizeof(float));
    const int64_t n = keys.n_chunks(t);
    if (logits_dev_.bytes() < static_cast<size_t>(n) * sizeof(float))
      logits_dev_ = BackendBuffer(be_, static_cast<size_t>(std::max<int64_t>(n, 1024)) * sizeof(float));
    IndexScoreParams p;
    p.n_heads = m_->shape.n_heads;
    p.n_kv_heads = m_->shape.n_kv_heads;
    p.head_dim = m_->shape.head_dim;
    p.bias = m_->layers[t].bias;
    be_.index_scores(p, qd, qd + q_.size(), keys.device_keys(t), keys.device_scales(t), n, logits_dev_.as<float>());
    prob.resize(static_cast<size_t>(n));
    be_.download(prob.data(), logits_dev_.get(), static_cast<size_t>(n) * sizeof(float));
    for (float& x : prob) x = 1.0f / (1.0f + std::exp(-x));
  }
  uint64_t device_bytes() const override { return qw_dev_.bytes() + logits_dev_.bytes(); }

 private:
  std::shared_ptr<const IndexerModel> m_;
  Backend& be_;
  IndexKeyConfig keys_cfg_;
  std::vector<float> q_, w_;
  BackendBuffer qw_dev_, logits_dev_;
};

}  // namespace


std::shared_ptr<LsaScorer> make_indexer_scorer(std::shared_ptr<const IndexerModel> m, Backend& be) {
  m->check();
  return std::make_shared<IndexerScorer>(std::move(m), be);
}

}  // namespace flashmem

// flashmem/engine/query_tap.h — one sequence's activation tap: keeps its IndexerQuery (what lsa's
// Level 1 scores from) up to date, and passes the same layer inputs on to another observer
// (flashmem dump's), each seeing only the layers it asked for.
#pragma once

#include <algorithm>
#include <vector>

#include "memory/lsa.h"
#include "models/model.h"

namespace flashmem {

class QueryTap final : public ActivationTap {
 public:
  // Either may be null; both must outlive the tap.
  QueryTap(IndexerQuery* query, ActivationTap* also) : q_(query), also_(also) {
    if (q_) layers_ = q_->layers;
    if (also_) layers_.insert(layers_.end(), also_->layers().begin(), also_->layers().end());
    std::sort(layers_.begin(), layers_.end());
    layers_.erase(std::unique(layers_.begin(), layers_.end()), layers_.end());
  }
  bool empty() const { return layers_.empty(); }
  std::span<const int> layers() const override { return layers_; }
  void on_layer_input(int layer, int32_t position, const float* x) override {
    if (q_) {
      const auto it = std::lower_bound(q_->layers.begin(), q_->layers.end(), layer);
      if (it != q_->layers.end() && *it == layer) {
        std::copy_n(x, q_->d_model, q_->rows.begin() + (it - q_->layers.begin()) * q_->d_model);
        q_->position = position;
      }
    }
    if (also_) {
      const auto ls = also_->layers();
      if (std::binary_search(ls.begin(), ls.end(), layer)) also_->on_layer_input(layer, position, x);
    }
  }

 private:
  IndexerQuery* q_;
  ActivationTap* also_;
  std::vector<int> layers_;
};

}  // namespace flashmem

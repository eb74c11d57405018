// flashmem/memory/absent_summary.h — what the pages left off the device contribute to attention,
// computed on the host once per selection and folded into every decode step until it changes.
//
// A sparse decode attends over the resident pages only, so the softmax renormalises over them:
// the share of attention the absent pages held goes to the pages that stay. The summary restores
// the share, per query head, as it was at the selection (measured on RULER 4K in docs/accuracy.md,
// session 12):
//
//   at the first decode attention of a layer after its selection changes, the host attends the
//   step's queries over the absent pages (every completed page not selected) in the host mirror,
//   and keeps, per query head, the normalised output o_abs and log-sum-exp lse_abs on the device;
//   every step of the cycle then merges (o_abs, lse_abs) into attention over the resident pages.
//
// The first step of a cycle is therefore exact (full attention); later steps carry the absent
// keys' contribution as the cycle's first query saw it, instead of none. The device holds
// n_heads × (head_dim + 1) floats per layer (counted in the footprint); the host reads every
// absent page once per cycle and layer, from host memory (no PCIe traffic for the pages).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "ops/backend.h"

namespace flashmem {

class ThreadPool;

class AbsentSummary {
 public:
  // `be`: the backend attention runs on (the summary lives in its memory). host_threads: CPU
  // threads for the host attention (1: inline on the caller).
  AbsentSummary(Backend& be, int n_layers, int host_threads = 1);
  ~AbsentSummary();
  AbsentSummary(const AbsentSummary&) = delete;
  AbsentSummary& operator=(const AbsentSummary&) = delete;

  // Whether `layer`'s summary no longer describes the absent pages: none yet, another query
  // shape (`rows` = queries × heads), a different selection among the pages that were
  // completed when it was made, or a page completed since that is not selected (pages
  // completed since and still selected leave it valid). `selected`: the layer's sorted
  // resident selection; `completed`: its completed pages now.
  bool stale(int layer, std::span<const int32_t> selected, int32_t completed, int64_t rows) const;

  // Attends the host queries q [m × n_heads × head_dim] at host positions pos over `absent`
  // (pages in host memory: every completed page of the layer not in `selected`) and stores the
  // result for `layer`. `completed`: the layer's completed pages now.
  void refresh(int layer, const AttentionParams& p, const float* q, const int32_t* pos, int64_t m,
               std::span<const KvPageRef> absent, std::span<const int32_t> selected,
               int32_t completed);

  // (out, lse) ← their merge with `layer`'s summary; rows × head_dim / rows floats in the
  // backend's memory. Requires a refresh with the same rows.
  void fold(int layer, int64_t rows, int head_dim, float* out, float* lse);

  uint64_t device_bytes() const;
  int64_t refreshes() const { return refreshes_; }
  double seconds() const { return seconds_; }  // spent in refresh

 private:
  struct Layer {
    std::vector<int32_t> selected;  // the selection among [0, completed) when made
    int32_t completed = -1;
    int64_t rows = 0;
    BackendBuffer o, lse;
  };
  Backend& be_;
  std::unique_ptr<ThreadPool> pool_;
  std::vector<Layer> layers_;
  std::vector<float> host_o_, host_lse_;
  int64_t refreshes_ = 0;
  double seconds_ = 0;
};

}  // namespace flashmem

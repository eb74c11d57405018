// flashmem/ops/cpu/cpu_backend.h — the CPU implementation of Backend (the reference backend).
#pragma once

#include <memory>

#include "core/thread_pool.h"
#include "ops/backend.h"

namespace flashmem {

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(int n_threads = ThreadPool::default_threads(), CpuDot dot = CpuDot::kQ8);
  CpuDot dot() const { return dot_; }
  const char* name() const override { return "cpu"; }
  ThreadPool& pool() { return pool_; }

  bool host_memory() const override { return true; }
  std::optional<uint64_t> memory_free() const override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void fill_zero(void* p, size_t bytes) override;
  void copy_pages(CopyDir dir, std::span<const PageCopy> copies, size_t bytes) override;

  void matmul(const WeightMatrix& w, const float* x, int64_t m, float* y) override;
  void matmul_n(std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
                std::span<float* const> ys) override;
  // Decode: SwiGLU and the residual add run in the products' parallel region, on each task's
  // rows (the same bits as the product, then the elementwise step).
  void matmul_add(const WeightMatrix& w, const float* x, int64_t m, float* y, float* tmp) override;
  void matmul_swiglu(const WeightMatrix& gate, const WeightMatrix& up, const float* x, int64_t m, float* gate_out,
                     float* up_tmp) override;
  void get_rows(const WeightMatrix& w, const int32_t* ids, int64_t m, float* out) override;
  void rms_norm(const float* x, const float* weight, int64_t m, int64_t n, float eps,
                float* y) override;
  void rope(float* x, int64_t m, int n_heads, int head_dim, const int32_t* pos,
            const RopeParams& p) override;
  void swiglu(const float* gate, const float* up, int64_t n, float* out) override;
  void add(float* x, const float* y, int64_t n) override;
  void attention(const AttentionParams& p, const float* q, const int32_t* pos, int64_t m,
                 std::span<const KvPageRef> pages, float* out, float* lse = nullptr) override;
  void merge_attention(int64_t rows, int head_dim, float* out, float* lse, const float* out2,
                       const float* lse2) override;
  void index_scores(const IndexScoreParams& p, const float* q, const float* w, const uint8_t* keys,
                    const float* scales, int64_t n, float* logits) override;
  void write_kv(const AttentionParams& p, void* k_page, void* v_page, int slot0, int64_t n,
                const float* k, const float* v) override;
  void chunk_mass(const AttentionParams& p, const float* q, int32_t pos, std::span<const KvPageRef> pages,
                  int chunk_tokens, int64_t n_chunks, float* mass) override;

 protected:
  void* alloc_raw(size_t bytes) override;
  void dealloc_raw(void* p) noexcept override;

 private:
  ThreadPool pool_;
  CpuDot dot_;
};

}  // namespace flashmem

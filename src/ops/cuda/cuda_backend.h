// flashmem/ops/cuda/cuda_backend.h — the CUDA implementation of Backend.
//
// Backend memory is device memory; every op runs on one stream in issue order, and download()
// waits for it. Weights stay on the device in their stored type (GGUF blocks, f16, bf16, f32).
// Decode-sized products read them through flashmem's own kernels, fused with Q/K/V, SwiGLU and
// the residual add: one activation row through the dequantising GEMV (ops/cuda/matvec.cuh, the
// RMSNorm inside), 2–64 rows on tensor cores (ops/cuda/matmul_mma.cuh: Q4_0, Q4_1, Q8_0, BF16),
// other types' few rows through the GEMV too; larger products (prefill) dequantise tiles of rows
// into f32 and run cuBLAS SGEMM with full f32 math (no TF32). A decode batch writes its K/V in one launch and attends in one
// (ops/cuda/decode_attention.cuh); page copies of a batch are one gather kernel. Checked against
// the CPU backend op by op and end to end by the GPU tests (scripts/gpu-check).
//
// This header needs no CUDA headers: it is included where the backend is chosen.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ops/backend.h"

namespace flashmem::cuda {
struct DevPage;  // ops/cuda/attention.cuh
struct DevSlot;  // ops/cuda/decode_attention.cuh
struct DecodeSlots;
struct MatvecSeg;  // ops/cuda/matvec.cuh
}

namespace flashmem {

class CudaBackend final : public Backend {
 public:
  // Uses the first visible GPU. Throws Error(kUnsupported) when there is none.
  CudaBackend();
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const override { return "cuda"; }
  // Which kernel a product of m activation rows takes: the tensor-core one for
  // mma_min ≤ m ≤ mma_max where the weight allows it (mma_min 0: never), else the GEMV for
  // m ≤ gemv, else GEMM. Within one kernel a row's product does not depend on the rest of the
  // batch; mma_min = 1 puts single rows on tensor cores too, so a sequence gets the same bits
  // alone and in any batch. FLASHMEM_CUDA_GEMV_ROWS, FLASHMEM_CUDA_MMA_MIN_ROWS and
  // FLASHMEM_CUDA_MMA_MAX_ROWS set them at construction, for measurements.
  struct ProductRows {
    int64_t gemv = 16;
    // H100, 2026-12-06, synthetic 8B bf16 at depth 0: 4 rows 383 tok/s through the GEMV against
    // 302 on tensor cores, 8 rows 440 against 552, 16 rows 475 against 718; one row 131 against 83.
    int64_t mma_min = 8;
    int64_t mma_max = 64;
  };
  void set_product_rows(const ProductRows& r) { rows_ = r; }
  const ProductRows& product_rows() const { return rows_; }
  const std::string& device_name() const { return device_name_; }
  // Device memory the backend holds for prepared weights (their stored bytes).
  size_t weight_bytes() const { return weight_bytes_; }

  bool host_memory() const override { return false; }
  std::optional<uint64_t> memory_free() const override;
  void* alloc_host(size_t bytes) override;  // page-locked (cudaHostAlloc)
  void free_host(void* p) noexcept override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void fill_zero(void* p, size_t bytes) override;
  void copy_pages(CopyDir dir, std::span<const PageCopy> copies, size_t bytes) override;
  void synchronize() override;
  uint64_t mark() override;
  std::optional<double> seconds_between(uint64_t a, uint64_t b, bool wait) override;

  WeightMatrix prepare(const WeightMatrix& w) override;
  const float* prepare(const float* v, int64_t n) override;

  void matmul(const WeightMatrix& w, const float* x, int64_t m, float* y) override;
  void matmul_n(std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
                std::span<float* const> ys) override;
  void matmul_add(const WeightMatrix& w, const float* x, int64_t m, float* y, float* tmp) override;
  void matmul_swiglu(const WeightMatrix& gate, const WeightMatrix& up, const float* x, int64_t m,
                     float* gate_out, float* up_tmp) override;
  void rms_norm_matmul_n(const float* x, const float* norm_w, int64_t m, float eps, float* xn,
                         std::span<const WeightMatrix* const> ws, std::span<float* const> ys) override;
  void rms_norm_matmul_swiglu(const float* x, const float* norm_w, int64_t m, float eps, float* xn,
                              const WeightMatrix& gate, const WeightMatrix& up, float* gate_out,
                              float* up_tmp) override;
  void get_rows(const WeightMatrix& w, const int32_t* ids, int64_t m, float* out) override;
  void rms_norm(const float* x, const float* weight, int64_t m, int64_t n, float eps,
                float* y) override;
  void rope(float* x, int64_t m, int n_heads, int head_dim, const int32_t* pos,
            const RopeParams& p) override;
  void rope_qk(float* q, float* k, int64_t m, int n_heads, int n_kv_heads, int head_dim, const int32_t* pos,
               const RopeParams& p) override;
  void swiglu(const float* gate, const float* up, int64_t n, float* out) override;
  void add(float* x, const float* y, int64_t n) override;
  void add_rows(float* x, const float* b, int64_t m, int64_t n) override;
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
  void attention_rows(const AttentionParams& p, const float* q, const int32_t* pos, int64_t m,
                      std::span<const int32_t> page_begin, std::span<const KvPageRef> pages,
                      float* out) override;
  void write_kv_rows(const AttentionParams& p, std::span<const KvSlotRef> slots, const float* k,
                     const float* v) override;
  void rope_write_kv_rows(const AttentionParams& p, const RopeParams& rp, const int32_t* pos,
                          std::span<const KvSlotRef> slots, float* q, float* k, const float* v) override;

 protected:
  void* alloc_raw(size_t bytes) override;
  void dealloc_raw(void* p) noexcept override;

 private:
  // Uploads host positions unless the device copy already holds the same values.
  const int32_t* device_positions(const int32_t* pos, int64_t m);
  // The page list in device memory (DevPage has KvPageRef's layout), in a kept scratch buffer.
  const cuda::DevPage* device_pages(std::span<const KvPageRef> pages);
  // The slots of a K/V write (checked against the page size): into `inl`, returning nullptr,
  // when they fit a launch's parameters, else staged in device-readable memory.
  const cuda::DevSlot* device_slots(const AttentionParams& p, std::span<const KvSlotRef> slots,
                                    cuda::DecodeSlots& inl);
  // Whether w's product with m rows of x takes the tensor-core kernel, the GEMV.
  bool use_mma(const WeightMatrix& w, const float* x, int64_t m) const;
  bool use_gemv(const WeightMatrix& w, const float* x, int64_t m) const;
  // Whether w goes through one of the decode product kernels for m rows of x.
  bool use_matvec(const WeightMatrix& w, const float* x, int64_t m) const;
  // Whether the weights ws go through one decode product launch for m rows of x (1 to 3 of one
  // type and width, all taking the tensor-core kernel or all the GEMV).
  bool use_matvec_n(std::span<const WeightMatrix* const> ws, const float* x, int64_t m) const;
  // That launch: segs[k] is ws[k]'s product (cuda::MatvecSeg), `epi` a cuda::MatvecEpilogue.
  void product(std::span<const WeightMatrix* const> ws, const cuda::MatvecSeg* segs, int epi, const float* x,
               int64_t m);
  // y (=, or += when accumulate) x · wᵀ through cuBLAS: f32 weights directly, others a tile of
  // rows at a time dequantised into wtile_.
  void gemm(const WeightMatrix& w, const float* x, int64_t m, float* y, bool accumulate);
  // `bytes` of the current staging slab (moving to the next once the ops that read it are done).
  uint8_t* slab_space(size_t bytes);
  // A device-readable copy of a small host array for the ops issued next that read it about
  // once (slots, copy lists): page-locked staging memory the kernels read in place (one copy
  // less in the stream than an upload), or, above a slab, `fallback` after an upload.
  const void* stage(BackendBuffer& fallback, const void* host_src, size_t bytes);
  // A device-memory copy of a host array in `b` (grown on demand), stream-ordered: for lists that
  // many warps read.
  const void* device_copy(BackendBuffer& b, const void* host_src, size_t bytes);
  // Scratch for the partial results of attention split `parts` ways over `items` (row, head)
  // pairs: outputs and log-sum-exps (none when parts ≤ 1).
  std::pair<float*, float*> partials(int64_t items, int parts, int head_dim);
  // A device scratch buffer of at least `bytes` (grown on demand, kept).
  void* scratch(BackendBuffer& b, size_t bytes);
  // True when [p, p + bytes) lies in one alloc_host() allocation.
  bool page_locked(const void* p, size_t bytes) const;

  void* stream_ = nullptr;  // cudaStream_t
  void* cublas_ = nullptr;  // cublasHandle_t
  std::string device_name_;
  std::unordered_map<const void*, WeightMatrix> prepared_;     // by host data
  std::unordered_map<const void*, const float*> prepared_vec_;  // by host data
  std::vector<void*> owned_;
  size_t weight_bytes_ = 0;
  BackendBuffer pos_dev_, ids_dev_, pages_dev_;
  BackendBuffer part_o_, part_lse_;  // split attention's partial results
  BackendBuffer mass_scores_;        // chunk_mass's scores
  BackendBuffer wtile_;              // gemm's dequantised weight rows
  BackendBuffer rows_dev_, slots_dev_, copies_dev_;  // attention_rows' page_begin, write_kv_rows' slots, copy lists
  std::vector<int32_t> pos_host_;  // what pos_dev_ holds
  std::map<uintptr_t, size_t> host_blocks_;  // alloc_host() allocations: start → bytes
  // upload() stages small host arrays (positions, page lists, token ids) in page-locked slabs,
  // so the copy is DMA the call does not wait for. A slab is reused only after the event
  // recorded when the previous slab was left has passed.
  static constexpr size_t kSlabBytes = size_t{1} << 18;
  static constexpr int kSlabs = 8;
  uint8_t* staging_ = nullptr;
  std::array<void*, kSlabs> slab_done_{};  // cudaEvent_t per slab
  std::array<bool, kSlabs> slab_pending_{};
  int slab_ = 0;
  ProductRows rows_;  // which kernel a product takes (set_product_rows)
  std::vector<void*> marks_;  // cudaEvent_t ring of Backend::kMarks, created on first use
  uint64_t n_marks_ = 0;
  size_t slab_used_ = 0;
};

}  // namespace flashmem

// flashmem/ops/cuda/attention.cuh — causal GQA attention over paged KV on the GPU, the
// log-sum-exp merge of partial results, and the KV page writer. Same page layout and math as
// the CPU ops (ops/backend.h: KvPageRef; ops/cpu/attention.cpp).
//
// Launchers only: included by the C++20 backend. Every pointer is device memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace flashmem::cuda {

// A page as the kernels read it: the device twin of KvPageRef (same layout).
struct DevPage {
  const void* k;
  const void* v;
  int32_t pos0;
  int32_t n_tokens;
};

// How KV is stored (KvType): f32, f16, or q8 (int8 values; each K/V half-page has its f32
// scales [n_kv_heads × page_tokens] at byte scale_offset).
enum DevKv : int { kDevF32 = 0, kDevF16 = 1, kDevQ8 = 2 };

struct DevAttention {
  int n_heads, n_kv_heads, head_dim, page_tokens;
  int64_t head_stride;
  int kv;               // DevKv
  int64_t scale_offset;  // q8 only
  float scale;
};

// How many page chunks attention splits each (query, head) over: 1 when there are enough
// queries to fill the GPU, more for decode (flash-decoding), at most n_pages.
int attention_chunks(int64_t m, int n_heads, int n_pages);
// out[m × n_heads × head_dim]; lse (optional) as Backend::attention defines it. Supports
// head_dim 64 and 128 (cudaErrorInvalidValue otherwise). When attention_chunks(...) > 1,
// part_o (items × chunks × head_dim floats) and part_lse (items × chunks) are scratch.
cudaError_t attention(const DevAttention& p, const float* q, const int32_t* pos, int64_t m,
                      const DevPage* pages, int n_pages, float* out, float* lse, float* part_o,
                      float* part_lse, cudaStream_t s);
// Prefill attention on tensor cores (ops/cuda/attention_mma.cu): f16 KV, head_dim 64 or 128,
// m ≥ 64 rows; queries rounded to f16 after scaling (outputs within ~1e-3 of the f32 kernels).
// attention() uses it where supported.
bool attention_mma_supported(const DevAttention& p, int64_t m);
cudaError_t attention_mma(const DevAttention& p, const float* q, const int32_t* pos, int64_t m,
                          const DevPage* pages, int n_pages, float* out, float* lse, cudaStream_t s);
cudaError_t merge_attention(int64_t rows, int head_dim, float* out, float* lse, const float* out2,
                            const float* lse2, cudaStream_t s);
// Backend::chunk_mass for one query q [n_heads × head_dim] (head_dim ≤ 256; page_tokens a
// multiple of chunk_tokens; cudaErrorInvalidValue otherwise). scores is scratch of
// n_heads × n_pages × page_tokens floats; mass [n_heads × n_chunks].
cudaError_t chunk_mass(const DevAttention& p, const float* q, int32_t pos, const DevPage* pages, int n_pages,
                       int chunk_tokens, int64_t n_chunks, float* scores, float* mass, cudaStream_t s);
cudaError_t write_kv(const DevAttention& p, void* k_page, void* v_page, int slot0, int64_t n,
                     const float* k, const float* v, cudaStream_t s);

}  // namespace flashmem::cuda

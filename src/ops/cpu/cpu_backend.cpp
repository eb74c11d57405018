#include "ops/cpu/cpu_backend.h"

#include <cstring>
#include <new>

#include "core/error.h"
#include "core/host_memory.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/elementwise.h"
#include "ops/cpu/indexer.h"
#include "ops/cpu/matmul.h"

#ifdef FLASHMEM_HAVE_BLAS
// OpenBLAS would otherwise start its own threads inside ours; declared weak so that another
// BLAS without this symbol still links.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
#endif

namespace flashmem {

CpuBackend::CpuBackend(int n_threads, CpuDot dot) : pool_(n_threads), dot_(dot) {
#ifdef FLASHMEM_HAVE_BLAS
  if (openblas_set_num_threads) openblas_set_num_threads(1);
#endif
}

void* CpuBackend::alloc_raw(size_t bytes) {
  void* p = ::operator new(bytes ? bytes : 1, std::align_val_t{256}, std::nothrow);
  FM_CHECK(p != nullptr, ErrorCode::kOutOfMemory, "cannot allocate ",
           static_cast<double>(bytes) / (1 << 20), " MiB of host memory");
  return p;
}

std::optional<uint64_t> CpuBackend::memory_free() const { return host_memory_available(); }

void CpuBackend::dealloc_raw(void* p) noexcept { ::operator delete(p, std::align_val_t{256}); }

void CpuBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes) std::memcpy(dst, host_src, bytes);
}

void CpuBackend::download(void* host_dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(host_dst, src, bytes);
}

void CpuBackend::fill_zero(void* p, size_t bytes) {
  if (bytes) std::memset(p, 0, bytes);
}

void CpuBackend::copy_pages(CopyDir /*dir*/, std::span<const PageCopy> copies, size_t bytes) {
  // Small batches are not worth waking the pool for.
  if (copies.size() * bytes < (size_t{1} << 20)) {
    for (const PageCopy& c : copies) std::memcpy(c.dst, c.src, bytes);
    return;
  }
  pool_.run(static_cast<int64_t>(copies.size()),
            [&](int64_t i, int) { std::memcpy(copies[i].dst, copies[i].src, bytes); });
}

void CpuBackend::matmul(const WeightMatrix& w, const float* x, int64_t m, float* y) {
  cpu::matmul(pool_, w, x, m, y, dot_);
}

void CpuBackend::matmul_n(std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
                          std::span<float* const> ys) {
  cpu::matmul_n(pool_, ws, x, m, ys, dot_);
}

void CpuBackend::matmul_add(const WeightMatrix& w, const float* x, int64_t m, float* y, float* tmp) {
  if (m > cpu::kDecodeMaxRows) return Backend::matmul_add(w, x, m, y, tmp);
  const WeightMatrix* ws[1] = {&w};
  float* ys[1] = {tmp};
  cpu::matmul_ranges(pool_, ws, x, m, ys, dot_, [&](int64_t r0, int64_t r1) {
    for (int64_t i = 0; i < m; ++i) cpu::add(y + i * w.rows + r0, tmp + i * w.rows + r0, r1 - r0);
  });
}

void CpuBackend::matmul_swiglu(const WeightMatrix& gate, const WeightMatrix& up, const float* x, int64_t m,
                               float* gate_out, float* up_tmp) {
  if (m > cpu::kDecodeMaxRows) return Backend::matmul_swiglu(gate, up, x, m, gate_out, up_tmp);
  const WeightMatrix* ws[2] = {&gate, &up};
  float* ys[2] = {gate_out, up_tmp};
  const int64_t n = gate.rows;
  cpu::matmul_ranges(pool_, ws, x, m, ys, dot_, [&](int64_t r0, int64_t r1) {
    for (int64_t i = 0; i < m; ++i) {
      float* g = gate_out + i * n + r0;
      cpu::swiglu(g, up_tmp + i * n + r0, r1 - r0, g);
    }
  });
}

void CpuBackend::get_rows(const WeightMatrix& w, const int32_t* ids, int64_t m, float* out) {
  for (int64_t i = 0; i < m; ++i) {
    FM_CHECK(ids[i] >= 0 && ids[i] < w.rows, ErrorCode::kInvalidArgument, "token id ", ids[i],
             " is outside the vocabulary [0, ", w.rows, ")");
    dequantize_row(w.type, w.data + ids[i] * w.row_bytes, out + i * w.cols,
                   static_cast<uint64_t>(w.cols));
  }
}

void CpuBackend::rms_norm(const float* x, const float* weight, int64_t m, int64_t n, float eps,
                          float* y) {
  pool_.parallel_for(m, 16, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) cpu::rms_norm(x + i * n, weight, n, eps, y + i * n);
  });
}

void CpuBackend::rope(float* x, int64_t m, int n_heads, int head_dim, const int32_t* pos,
                      const RopeParams& p) {
  pool_.parallel_for(m, 16, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i)
      cpu::rope(x + i * n_heads * head_dim, n_heads, head_dim, pos[i], p);
  });
}

void CpuBackend::swiglu(const float* gate, const float* up, int64_t n, float* out) {
  pool_.parallel_for(n, 4096, [&](int64_t b, int64_t e, int) {
    cpu::swiglu(gate + b, up + b, e - b, out + b);
  });
}

void CpuBackend::add(float* x, const float* y, int64_t n) { cpu::add(x, y, n); }

void CpuBackend::attention(const AttentionParams& p, const float* q, const int32_t* pos,
                           int64_t m, std::span<const KvPageRef> pages, float* out, float* lse) {
  cpu::attention(pool_, p, q, pos, m, pages, out, lse);
}

void CpuBackend::merge_attention(int64_t rows, int head_dim, float* out, float* lse,
                                 const float* out2, const float* lse2) {
  cpu::merge_attention(rows, head_dim, out, lse, out2, lse2);
}

void CpuBackend::index_scores(const IndexScoreParams& p, const float* q, const float* w,
                              const uint8_t* keys, const float* scales, int64_t n, float* logits) {
  pool_.parallel_for(n, 256, [&](int64_t b, int64_t e, int) {
    cpu::index_scores(p, q, w, keys, scales, b, e, logits);
  });
}

void CpuBackend::chunk_mass(const AttentionParams& p, const float* q, int32_t pos,
                            std::span<const KvPageRef> pages, int chunk_tokens, int64_t n_chunks, float* mass) {
  cpu::chunk_mass(pool_, p, q, pos, pages, chunk_tokens, n_chunks, mass);
}

void CpuBackend::write_kv(const AttentionParams& p, void* k_page, void* v_page, int slot0,
                          int64_t n, const float* k, const float* v) {
  cpu::write_kv(p, k_page, v_page, slot0, n, k, v);
}

}  // namespace flashmem

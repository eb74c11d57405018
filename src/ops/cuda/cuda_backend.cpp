#include "ops/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "ops/cuda/attention.cuh"
#include "ops/cuda/decode_attention.cuh"
#include "ops/cuda/dequant.cuh"
#include "ops/cuda/elementwise.cuh"
#include "ops/cuda/indexer.cuh"
#include "ops/cuda/matmul_mma.cuh"
#include "ops/cuda/matvec.cuh"
#include "ops/cuda/page_copy.cuh"

namespace flashmem {

namespace {

#define FM_CUDA(call)                                                                        \
  do {                                                                                       \
    const cudaError_t err_ = (call);                                                         \
    FM_CHECK(err_ == cudaSuccess, ErrorCode::kInternal, "CUDA: ", #call, " failed: ",       \
             cudaGetErrorString(err_));                                                      \
  } while (0)

#define FM_CUBLAS(call)                                                                      \
  do {                                                                                       \
    const cublasStatus_t st_ = (call);                                                       \
    FM_CHECK(st_ == CUBLAS_STATUS_SUCCESS, ErrorCode::kInternal, "cuBLAS: ", #call,         \
             " failed with status ", static_cast<int>(st_));                                 \
  } while (0)

static_assert(sizeof(cuda::DevSlot) == sizeof(KvSlotRef) && offsetof(cuda::DevSlot, slot) == offsetof(KvSlotRef, slot) &&
              sizeof(cuda::DevCopy) == sizeof(PageCopy) && offsetof(cuda::DevCopy, dst) == offsetof(PageCopy, dst) &&
              std::is_trivially_copyable_v<KvSlotRef> && std::is_trivially_copyable_v<PageCopy>);
static_assert(sizeof(cuda::DevPage) == sizeof(KvPageRef) &&
              offsetof(cuda::DevPage, pos0) == offsetof(KvPageRef, pos0) &&
              offsetof(cuda::DevPage, n_tokens) == offsetof(KvPageRef, n_tokens) &&
              std::is_trivially_copyable_v<KvPageRef>);

// Rows of f32 gemm() dequantises at a time (128 MiB).
constexpr size_t kTileFloats = size_t{32} << 20;

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

cuda::DevAttention dev_params(const AttentionParams& p) {
  const int kv = p.kv_type == KvType::kF16 ? cuda::kDevF16 : p.kv_type == KvType::kQ8 ? cuda::kDevQ8 : cuda::kDevF32;
  return cuda::DevAttention{p.n_heads,     p.n_kv_heads, p.head_dim, p.page_tokens, p.head_stride, kv,
                            static_cast<int64_t>(kv_scale_offset(p.n_kv_heads, p.page_tokens, p.head_dim)),
                            p.scale};
}

}  // namespace

#define STREAM static_cast<cudaStream_t>(stream_)
#define CUBLAS static_cast<cublasHandle_t>(cublas_)

CudaBackend::CudaBackend() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  FM_CHECK(e == cudaSuccess && n > 0, ErrorCode::kUnsupported, "no usable CUDA GPU (",
           e == cudaSuccess ? "none found" : cudaGetErrorString(e), ")");
  FM_CUDA(cudaSetDevice(0));
  cudaDeviceProp prop{};
  FM_CUDA(cudaGetDeviceProperties(&prop, 0));
  device_name_ = prop.name;
  cudaStream_t s = nullptr;
  FM_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  cublasHandle_t h = nullptr;
  const cublasStatus_t st = cublasCreate(&h);
  if (st != CUBLAS_STATUS_SUCCESS) {
    cudaStreamDestroy(s);
    FM_FAIL(ErrorCode::kUnsupported, "cuBLAS could not start (status ", static_cast<int>(st), ")");
  }
  cublas_ = h;
  if (const char* v = std::getenv("FLASHMEM_CUDA_GEMV_ROWS"); v && *v) rows_.gemv = std::atoi(v);
  if (const char* v = std::getenv("FLASHMEM_CUDA_MMA_MIN_ROWS"); v && *v) rows_.mma_min = std::atoi(v);
  if (const char* v = std::getenv("FLASHMEM_CUDA_MMA_MAX_ROWS"); v && *v) rows_.mma_max = std::atoi(v);
  cublasSetStream(h, s);
  cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);  // full f32 products: no TF32
  try {
    staging_ = static_cast<uint8_t*>(alloc_host(kSlabBytes * kSlabs));
    for (void*& slot : slab_done_) {
      cudaEvent_t ev = nullptr;
      FM_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
      slot = ev;
    }
  } catch (...) {
    for (void* ev : slab_done_)
      if (ev) cudaEventDestroy(static_cast<cudaEvent_t>(ev));
    if (staging_) cudaFreeHost(staging_);
    cublasDestroy(h);
    cudaStreamDestroy(s);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(STREAM);
  pos_dev_.reset();
  ids_dev_.reset();
  pages_dev_.reset();
  part_o_.reset();
  part_lse_.reset();
  mass_scores_.reset();
  wtile_.reset();
  rows_dev_.reset();
  slots_dev_.reset();
  copies_dev_.reset();  // every scratch buffer before the stream its dealloc waits on
  for (void* p : owned_) cudaFree(p);
  for (void* e : slab_done_) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  for (void* e : marks_) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  cudaFreeHost(staging_);
  cublasDestroy(CUBLAS);
  cudaStreamDestroy(STREAM);
}

// ---- memory --------------------------------------------------------------------------------

void* CudaBackend::alloc_raw(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state
    FM_FAIL(ErrorCode::kOutOfMemory, "cannot allocate ", static_cast<double>(bytes) / (1 << 20),
            " MiB of GPU memory: ", cudaGetErrorString(e));
  }
  return p;
}

std::optional<uint64_t> CudaBackend::memory_free() const {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
    cudaGetLastError();
    return std::nullopt;
  }
  return free;
}

void CudaBackend::dealloc_raw(void* p) noexcept {
  if (!p) return;
  cudaStreamSynchronize(STREAM);  // no op in flight may still use it
  cudaFree(p);
}

void* CudaBackend::alloc_host(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocMapped);
  if (e != cudaSuccess) {
    cudaGetLastError();
    FM_FAIL(ErrorCode::kOutOfMemory, "cannot allocate ", static_cast<double>(bytes) / (1 << 20),
            " MiB of page-locked host memory: ", cudaGetErrorString(e));
  }
  host_blocks_[reinterpret_cast<uintptr_t>(p)] = bytes;
  return p;
}

void CudaBackend::free_host(void* p) noexcept {
  if (!p) return;
  cudaStreamSynchronize(STREAM);  // no copy in flight may still use it
  host_blocks_.erase(reinterpret_cast<uintptr_t>(p));
  cudaFreeHost(p);
}

bool CudaBackend::page_locked(const void* p, size_t bytes) const {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = host_blocks_.upper_bound(a);
  if (it == host_blocks_.begin()) return false;
  --it;
  return a + bytes <= it->first + it->second;
}

uint8_t* CudaBackend::slab_space(size_t bytes) {
  if (slab_used_ + bytes > kSlabBytes) {  // move to the next slab once the ops that read it are done
    FM_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(slab_done_[slab_]), STREAM));
    slab_pending_[slab_] = true;
    slab_ = (slab_ + 1) % kSlabs;
    if (slab_pending_[slab_]) FM_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(slab_done_[slab_])));
    slab_pending_[slab_] = false;
    slab_used_ = 0;
  }
  uint8_t* at = staging_ + static_cast<size_t>(slab_) * kSlabBytes + slab_used_;
  slab_used_ += (bytes + 255) & ~size_t{255};
  return at;
}

void CudaBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (!bytes) return;
  if (bytes > kSlabBytes) {
    // Large (weights, once): from pageable memory, staged by the driver before it returns.
    FM_CUDA(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, STREAM));
    return;
  }
  uint8_t* at = slab_space(bytes);
  std::memcpy(at, host_src, bytes);
  FM_CUDA(cudaMemcpyAsync(dst, at, bytes, cudaMemcpyHostToDevice, STREAM));
}

const void* CudaBackend::stage(BackendBuffer& fallback, const void* host_src, size_t bytes) {
  if (bytes > kSlabBytes) {
    scratch(fallback, bytes);
    upload(fallback.get(), host_src, bytes);
    return fallback.get();
  }
  uint8_t* at = slab_space(bytes);
  std::memcpy(at, host_src, bytes);
  return at;  // page-locked and mapped: the kernels read it where it is
}

void CudaBackend::download(void* host_dst, const void* src, size_t bytes) {
  if (!bytes) return;
  FM_CUDA(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, STREAM));
  FM_CUDA(cudaStreamSynchronize(STREAM));
}

void CudaBackend::fill_zero(void* p, size_t bytes) {
  if (bytes) FM_CUDA(cudaMemsetAsync(p, 0, bytes, STREAM));
}

void CudaBackend::copy_pages(CopyDir dir, std::span<const PageCopy> copies, size_t bytes) {
  if (copies.empty()) return;
  // Host sides in page-locked memory (the KV mirror) or none: one gather kernel, stream-ordered,
  // nothing to wait for here (the contract: synchronize() before the host reads or rewrites
  // them). The GPU reads and writes page-locked memory directly.
  bool gather = cuda::page_copy_supported(bytes);
  for (size_t i = 0; gather && i < copies.size(); ++i) {
    const PageCopy& c = copies[i];
    gather = aligned16(c.src) && aligned16(c.dst) &&
             (dir != CopyDir::kHostToBackend || page_locked(c.src, bytes)) &&
             (dir != CopyDir::kBackendToHost || page_locked(c.dst, bytes));
  }
  if (gather) {
    const auto* list = static_cast<const cuda::DevCopy*>(stage(copies_dev_, copies.data(), copies.size_bytes()));
    FM_CUDA(cuda::copy_pages(list, static_cast<int64_t>(copies.size()), bytes, STREAM));
    return;
  }
  const cudaMemcpyKind kind = dir == CopyDir::kHostToBackend   ? cudaMemcpyHostToDevice
                              : dir == CopyDir::kBackendToHost ? cudaMemcpyDeviceToHost
                                                               : cudaMemcpyDeviceToDevice;
  // One DMA copy each. Pageable host memory must be done with when the call returns.
  bool wait = false;
  for (const PageCopy& c : copies) {
    FM_CUDA(cudaMemcpyAsync(c.dst, c.src, bytes, kind, STREAM));
    if (dir == CopyDir::kHostToBackend) wait = wait || !page_locked(c.src, bytes);
    if (dir == CopyDir::kBackendToHost) wait = wait || !page_locked(c.dst, bytes);
  }
  if (wait) FM_CUDA(cudaStreamSynchronize(STREAM));
}

void CudaBackend::synchronize() { FM_CUDA(cudaStreamSynchronize(STREAM)); }

uint64_t CudaBackend::mark() {
  if (marks_.empty()) {
    marks_.resize(kMarks);
    for (void*& e : marks_) {
      cudaEvent_t ev = nullptr;
      FM_CUDA(cudaEventCreate(&ev));
      e = ev;
    }
  }
  const uint64_t id = n_marks_++;
  FM_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(marks_[id % kMarks]), STREAM));
  return id;
}

std::optional<double> CudaBackend::seconds_between(uint64_t a, uint64_t b, bool wait) {
  FM_CHECK(a <= b && b < n_marks_ && n_marks_ - a <= kMarks, ErrorCode::kInternal, "marks ", a, " and ", b,
           " are not both among the last ", kMarks);
  const auto ev = [&](uint64_t i) { return static_cast<cudaEvent_t>(marks_[i % kMarks]); };
  if (wait) {
    FM_CUDA(cudaEventSynchronize(ev(b)));
  } else {
    const cudaError_t q = cudaEventQuery(ev(b));
    if (q == cudaErrorNotReady) return std::nullopt;
    FM_CUDA(q);
  }
  float ms = 0.0f;
  FM_CUDA(cudaEventElapsedTime(&ms, ev(a), ev(b)));
  return static_cast<double>(ms) * 1e-3;
}

const cuda::DevPage* CudaBackend::device_pages(std::span<const KvPageRef> pages) {
  // in device memory: these kernels read every page's descriptor many times
  return static_cast<const cuda::DevPage*>(device_copy(pages_dev_, pages.data(), pages.size_bytes()));
}

const void* CudaBackend::device_copy(BackendBuffer& b, const void* host_src, size_t bytes) {
  if (bytes) {
    scratch(b, bytes);
    upload(b.get(), host_src, bytes);
  }
  return b.get();
}

std::pair<float*, float*> CudaBackend::partials(int64_t items, int parts, int head_dim) {
  if (parts <= 1) return {nullptr, nullptr};
  const size_t rows = static_cast<size_t>(items) * parts;
  return {static_cast<float*>(scratch(part_o_, rows * head_dim * sizeof(float))),
          static_cast<float*>(scratch(part_lse_, rows * sizeof(float)))};
}

void* CudaBackend::scratch(BackendBuffer& b, size_t bytes) {
  if (b.bytes() < bytes) {
    b.reset();
    b = BackendBuffer(*this, std::max<size_t>(bytes, 4096));
  }
  return b.get();
}

const int32_t* CudaBackend::device_positions(const int32_t* pos, int64_t m) {
  const size_t bytes = static_cast<size_t>(m) * sizeof(int32_t);
  if (static_cast<int64_t>(pos_host_.size()) == m && std::memcmp(pos_host_.data(), pos, bytes) == 0)
    return pos_dev_.as<int32_t>();
  scratch(pos_dev_, bytes);
  upload(pos_dev_.get(), pos, bytes);
  pos_host_.assign(pos, pos + m);
  return pos_dev_.as<int32_t>();
}

// ---- weights -------------------------------------------------------------------------------

WeightMatrix CudaBackend::prepare(const WeightMatrix& w) {
  if (auto it = prepared_.find(w.data); it != prepared_.end()) return it->second;
  // The GEMM path (dequantised tiles) takes every type the GEMV takes, and more widths.
  FM_CHECK(cuda::dequant_supported(w.type, w.cols), ErrorCode::kUnsupported, "weight ", w.name, " (",
           ggml_type_name(w.type), ", ", w.cols, " columns) cannot be used on the GPU");
  const size_t raw = static_cast<size_t>(w.rows) * w.row_bytes;
  void* dst = alloc(raw);
  owned_.push_back(dst);
  weight_bytes_ += raw;
  upload(dst, w.data, raw);
  WeightMatrix r = w;
  r.data = static_cast<const uint8_t*>(dst);
  prepared_[w.data] = r;
  return r;
}

const float* CudaBackend::prepare(const float* v, int64_t n) {
  if (auto it = prepared_vec_.find(v); it != prepared_vec_.end()) return it->second;
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  void* dst = alloc(bytes);
  owned_.push_back(dst);
  weight_bytes_ += bytes;
  upload(dst, v, bytes);
  prepared_vec_[v] = static_cast<const float*>(dst);
  return static_cast<const float*>(dst);
}

// ---- ops -----------------------------------------------------------------------------------

bool CudaBackend::use_mma(const WeightMatrix& w, const float* x, int64_t m) const {
  return rows_.mma_min > 0 && m >= rows_.mma_min && m <= rows_.mma_max && aligned16(x) && aligned16(w.data) &&
         cuda::matmul_mma_supported(w.type, w.rows, w.cols);
}

bool CudaBackend::use_gemv(const WeightMatrix& w, const float* x, int64_t m) const {
  return m <= rows_.gemv && aligned16(x) && aligned16(w.data) && w.cols % 4 == 0 &&
         cuda::matvec_supported(w.type, w.cols, w.row_bytes);
}

bool CudaBackend::use_matvec(const WeightMatrix& w, const float* x, int64_t m) const {
  return use_mma(w, x, m) || use_gemv(w, x, m);
}

void CudaBackend::gemm(const WeightMatrix& w, const float* x, int64_t m, float* y, bool accumulate) {
  // Row-major y[m × rows] = x[m × cols] · wᵀ is column-major yᵀ = w · xᵀ, with w read as the
  // transpose of its column-major [cols × rows] self; a tile of rows r0 … writes the columns
  // of yᵀ from r0 (leading dimension rows).
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const int ldc = static_cast<int>(w.rows);
  if (w.type == GgmlType::F32) {
    FM_CUBLAS(cublasSgemm(CUBLAS, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows), static_cast<int>(m),
                          static_cast<int>(w.cols), &one, reinterpret_cast<const float*>(w.data),
                          static_cast<int>(w.cols), x, static_cast<int>(w.cols), &beta, y, ldc));
    return;
  }
  const int64_t tile_rows = std::min<int64_t>(w.rows, std::max<int64_t>(1, kTileFloats / w.cols));
  float* tile = static_cast<float*>(scratch(wtile_, static_cast<size_t>(tile_rows * w.cols) * sizeof(float)));
  for (int64_t r0 = 0; r0 < w.rows; r0 += tile_rows) {
    const int64_t n = std::min(tile_rows, w.rows - r0);
    FM_CUDA(cuda::dequantize_rows(w.type, w.data + r0 * w.row_bytes, w.row_bytes, tile, n, w.cols, STREAM));
    FM_CUBLAS(cublasSgemm(CUBLAS, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                          static_cast<int>(w.cols), &one, tile, static_cast<int>(w.cols), x,
                          static_cast<int>(w.cols), &beta, y + r0, ldc));
  }
}

void CudaBackend::matmul(const WeightMatrix& w, const float* x, int64_t m, float* y) {
  if (m <= 0) return;
  if (use_matvec(w, x, m)) {
    const cuda::MatvecSeg seg{w.data, w.row_bytes, w.rows, y};
    const WeightMatrix* ws[1] = {&w};
    product(ws, &seg, cuda::kMvStore, x, m);
    return;
  }
  gemm(w, x, m, y, false);
}

bool CudaBackend::use_matvec_n(std::span<const WeightMatrix* const> ws, const float* x, int64_t m) const {
  bool one_launch = m > 0 && ws.size() >= 1 && ws.size() <= 3, mma = true, gemv = true;
  for (size_t k = 0; one_launch && k < ws.size(); ++k) {
    one_launch = ws[k]->type == ws[0]->type && ws[k]->cols == ws[0]->cols;
    mma = mma && use_mma(*ws[k], x, m);
    gemv = gemv && use_gemv(*ws[k], x, m);
  }
  return one_launch && (mma || gemv);
}

void CudaBackend::product(std::span<const WeightMatrix* const> ws, const cuda::MatvecSeg* segs, int epi,
                          const float* x, int64_t m) {
  bool mma = true;
  for (const WeightMatrix* w : ws) mma = mma && use_mma(*w, x, m);
  const int n = static_cast<int>(ws.size());
  if (mma) FM_CUDA(cuda::matmul_mma(ws[0]->type, segs, n, epi, x, m, ws[0]->cols, STREAM));
  else FM_CUDA(cuda::matvec(ws[0]->type, segs, n, epi, x, m, ws[0]->cols, STREAM));
}

void CudaBackend::matmul_n(std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
                           std::span<float* const> ys) {
  if (!use_matvec_n(ws, x, m)) return Backend::matmul_n(ws, x, m, ys);
  cuda::MatvecSeg segs[3];
  for (size_t k = 0; k < ws.size(); ++k) segs[k] = {ws[k]->data, ws[k]->row_bytes, ws[k]->rows, ys[k]};
  product(ws, segs, cuda::kMvStore, x, m);
}

void CudaBackend::rms_norm_matmul_n(const float* x, const float* norm_w, int64_t m, float eps, float* xn,
                                    std::span<const WeightMatrix* const> ws, std::span<float* const> ys) {
  // One row (a single sequence's decode step): the norm in the GEMV. With more rows every block
  // would normalise all of them again, and a separate rms_norm launch costs less (H100,
  // 2026-12-05: 16 × depth 0 decode 1,806 tok/s fused against 2,197).
  bool gemv = m == 1 && use_matvec_n(ws, x, m) && aligned16(norm_w);
  for (size_t k = 0; gemv && k < ws.size(); ++k) gemv = !use_mma(*ws[k], x, m);  // mma_min = 1: tensor cores
  if (!gemv) return Backend::rms_norm_matmul_n(x, norm_w, m, eps, xn, ws, ys);
  cuda::MatvecSeg segs[3];
  for (size_t k = 0; k < ws.size(); ++k) segs[k] = {ws[k]->data, ws[k]->row_bytes, ws[k]->rows, ys[k]};
  FM_CUDA(cuda::matvec(ws[0]->type, segs, static_cast<int>(ws.size()), cuda::kMvStore, x, m, ws[0]->cols, STREAM,
                       cuda::MatvecNorm{norm_w, eps, xn}));
}

void CudaBackend::rms_norm_matmul_swiglu(const float* x, const float* norm_w, int64_t m, float eps, float* xn,
                                         const WeightMatrix& gate, const WeightMatrix& up, float* gate_out,
                                         float* up_tmp) {
  if (m == 1 && use_gemv(gate, x, m) && use_gemv(up, x, m) && !use_mma(gate, x, m) && !use_mma(up, x, m) &&
      gate.type == up.type && gate.cols == up.cols && gate.rows == up.rows &&
      aligned16(norm_w)) {  // one row only, as rms_norm_matmul_n
    const cuda::MatvecSeg segs[2] = {{gate.data, gate.row_bytes, gate.rows, gate_out},
                                     {up.data, up.row_bytes, up.rows, up_tmp}};
    FM_CUDA(cuda::matvec(gate.type, segs, 2, cuda::kMvSwiglu, x, m, gate.cols, STREAM,
                         cuda::MatvecNorm{norm_w, eps, xn}));
    return;
  }
  Backend::rms_norm_matmul_swiglu(x, norm_w, m, eps, xn, gate, up, gate_out, up_tmp);
}

void CudaBackend::matmul_add(const WeightMatrix& w, const float* x, int64_t m, float* y, float* tmp) {
  if (m <= 0) return;
  if (use_matvec(w, x, m)) {
    const cuda::MatvecSeg seg{w.data, w.row_bytes, w.rows, y};
    const WeightMatrix* ws[1] = {&w};
    product(ws, &seg, cuda::kMvAdd, x, m);
    return;
  }
  (void)tmp;
  gemm(w, x, m, y, true);
}

void CudaBackend::matmul_swiglu(const WeightMatrix& gate, const WeightMatrix& up, const float* x, int64_t m,
                                float* gate_out, float* up_tmp) {
  const WeightMatrix* ws[2] = {&gate, &up};
  if (m > 0 && use_matvec_n(ws, x, m) && gate.rows == up.rows) {
    const cuda::MatvecSeg segs[2] = {{gate.data, gate.row_bytes, gate.rows, gate_out},
                                     {up.data, up.row_bytes, up.rows, up_tmp}};
    product(ws, segs, cuda::kMvSwiglu, x, m);
    return;
  }
  Backend::matmul_swiglu(gate, up, x, m, gate_out, up_tmp);
}

void CudaBackend::get_rows(const WeightMatrix& w, const int32_t* ids, int64_t m, float* out) {
  for (int64_t i = 0; i < m; ++i)
    FM_CHECK(ids[i] >= 0 && ids[i] < w.rows, ErrorCode::kInvalidArgument, "token id ", ids[i],
             " is outside the vocabulary [0, ", w.rows, ")");
  const size_t bytes = static_cast<size_t>(m) * sizeof(int32_t);
  scratch(ids_dev_, bytes);
  upload(ids_dev_.get(), ids, bytes);
  FM_CUDA(cuda::dequantize_rows_by_id(w.type, w.data, w.row_bytes, ids_dev_.as<int32_t>(), m, w.cols, out, STREAM));
}

void CudaBackend::rms_norm(const float* x, const float* weight, int64_t m, int64_t n, float eps,
                           float* y) {
  FM_CUDA(cuda::rms_norm(x, weight, m, n, eps, y, STREAM));
}

void CudaBackend::rope(float* x, int64_t m, int n_heads, int head_dim, const int32_t* pos,
                       const RopeParams& p) {
  FM_CUDA(cuda::rope(x, m, n_heads, head_dim, device_positions(pos, m), p.n_rot, p.freq_base,
                     p.freq_scale, p.neox, STREAM));
}

void CudaBackend::rope_qk(float* q, float* k, int64_t m, int n_heads, int n_kv_heads, int head_dim,
                          const int32_t* pos, const RopeParams& p) {
  FM_CUDA(cuda::rope_qk(q, n_heads, k, n_kv_heads, m, head_dim, device_positions(pos, m), p.n_rot, p.freq_base,
                        p.freq_scale, p.neox, STREAM));
}

void CudaBackend::swiglu(const float* gate, const float* up, int64_t n, float* out) {
  FM_CUDA(cuda::swiglu(gate, up, n, out, STREAM));
}

void CudaBackend::add(float* x, const float* y, int64_t n) { FM_CUDA(cuda::add(x, y, n, STREAM)); }
void CudaBackend::add_rows(float* x, const float* b, int64_t m, int64_t n) {
  FM_CUDA(cuda::add_rows(x, b, m, n, STREAM));
}

void CudaBackend::attention(const AttentionParams& p, const float* q, const int32_t* pos,
                            int64_t m, std::span<const KvPageRef> pages, float* out, float* lse) {
  FM_CHECK(p.head_dim == 64 || p.head_dim == 128, ErrorCode::kUnsupported,
           "the CUDA attention supports head_dim 64 and 128, not ", p.head_dim);
  FM_ICHECK(p.n_heads > 0 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 &&
                p.head_stride == int64_t{p.page_tokens} * p.head_dim,
            "bad attention parameters");
  const cuda::DevPage* dev_pages = device_pages(pages);
  const int n_pages = static_cast<int>(pages.size());
  const int chunks = cuda::attention_chunks(m, p.n_heads, n_pages);
  auto [part_o, part_lse] = partials(m * p.n_heads, chunks, p.head_dim);
  FM_CUDA(cuda::attention(dev_params(p), q, device_positions(pos, m), m,
                          dev_pages, n_pages, out, lse, part_o, part_lse,
                          STREAM));
}

void CudaBackend::chunk_mass(const AttentionParams& p, const float* q, int32_t pos,
                             std::span<const KvPageRef> pages, int chunk_tokens, int64_t n_chunks, float* mass) {
  FM_CHECK(p.head_dim <= 256, ErrorCode::kUnsupported, "the CUDA chunk_mass supports head_dim ≤ 256, not ",
           p.head_dim);
  check_chunk_mass(p, pos, chunk_tokens, n_chunks);
  const cuda::DevPage* dev_pages = device_pages(pages);
  const size_t slots = pages.size() * static_cast<size_t>(p.page_tokens);
  float* scores = static_cast<float*>(scratch(mass_scores_, std::max<size_t>(1, slots * p.n_heads) * sizeof(float)));
  FM_CUDA(cuda::chunk_mass(dev_params(p), q, pos, dev_pages, static_cast<int>(pages.size()),
                           chunk_tokens, n_chunks, scores, mass, STREAM));
}

void CudaBackend::merge_attention(int64_t rows, int head_dim, float* out, float* lse,
                                  const float* out2, const float* lse2) {
  FM_CUDA(cuda::merge_attention(rows, head_dim, out, lse, out2, lse2, STREAM));
}

void CudaBackend::index_scores(const IndexScoreParams& p, const float* q, const float* w,
                               const uint8_t* keys, const float* scales, int64_t n, float* logits) {
  FM_CUDA(cuda::index_scores(p.n_heads, p.n_kv_heads, p.head_dim, p.bias, q, w, keys, scales, n, logits,
                             STREAM));
}

void CudaBackend::write_kv(const AttentionParams& p, void* k_page, void* v_page, int slot0,
                           int64_t n, const float* k, const float* v) {
  FM_ICHECK(slot0 >= 0 && slot0 + n <= p.page_tokens, "write_kv past the page");
  FM_CUDA(cuda::write_kv(dev_params(p), k_page, v_page, slot0, n, k, v, STREAM));
}

void CudaBackend::attention_rows(const AttentionParams& p, const float* q, const int32_t* pos, int64_t m,
                                 std::span<const int32_t> page_begin, std::span<const KvPageRef> pages,
                                 float* out) {
  const cuda::DevAttention dp = dev_params(p);
  const bool aligned =
      std::all_of(pages.begin(), pages.end(), [](const KvPageRef& r) { return aligned16(r.k) && aligned16(r.v); });
  if (!cuda::decode_attention_supported(dp) || m > 65535 || !aligned)
    return Backend::attention_rows(p, q, pos, m, page_begin, pages, out);
  FM_ICHECK(static_cast<int64_t>(page_begin.size()) == m + 1 && page_begin.back() == static_cast<int32_t>(pages.size()),
            "attention_rows: page_begin does not describe the pages");
  int max_pages = 0;
  for (int64_t i = 0; i < m; ++i) max_pages = std::max(max_pages, page_begin[i + 1] - page_begin[i]);
  if (max_pages == 0) return;
  // A small batch's lists go in the launch itself; larger ones are copied to device memory:
  // every warp reads its chunk's page descriptors, from page-locked host memory a PCIe round
  // trip each (H100, 2026-12-05: 16 × 8000 decode 1,385 ± 153 tok/s read in place, 1,560 ± 70
  // from a device copy).
  cuda::DecodeBatch b;
  cuda::DecodeRows rows;
  cuda::DecodePages inl;
  if (m <= cuda::kInlineRows) {
    std::copy(page_begin.begin(), page_begin.end(), rows.page_begin);
    std::copy(pos, pos + m, rows.pos);
    b.rows = &rows;
  } else {
    b.page_begin = static_cast<const int32_t*>(device_copy(rows_dev_, page_begin.data(), page_begin.size_bytes()));
    b.pos = device_positions(pos, m);
  }
  if (pages.size() <= static_cast<size_t>(cuda::kInlinePages)) {
    std::memcpy(inl.pages, pages.data(), pages.size_bytes());
    b.inline_pages = &inl;
  } else {
    b.pages = static_cast<const cuda::DevPage*>(device_copy(pages_dev_, pages.data(), pages.size_bytes()));
  }
  const int splits = cuda::decode_attention_splits(dp, max_pages);
  auto [part_o, part_lse] = partials(m * p.n_heads, splits, p.head_dim);
  FM_CUDA(cuda::decode_attention(dp, q, m, b, max_pages, splits, out, part_o, part_lse, STREAM));
}

const cuda::DevSlot* CudaBackend::device_slots(const AttentionParams& p, std::span<const KvSlotRef> slots,
                                               cuda::DecodeSlots& inl) {
  for (const KvSlotRef& s : slots)
    FM_ICHECK(!s.k || (s.slot >= 0 && s.slot < p.page_tokens), "write_kv_rows past the page");
  if (slots.size() <= static_cast<size_t>(cuda::kInlineRows)) {  // in the launch itself
    std::memcpy(inl.slots, slots.data(), slots.size_bytes());
    return nullptr;
  }
  return static_cast<const cuda::DevSlot*>(stage(slots_dev_, slots.data(), slots.size_bytes()));
}

void CudaBackend::write_kv_rows(const AttentionParams& p, std::span<const KvSlotRef> slots, const float* k,
                                const float* v) {
  if (slots.empty()) return;
  cuda::DecodeSlots inl;
  const cuda::DevSlot* dev = device_slots(p, slots, inl);
  FM_CUDA(cuda::write_kv_rows(dev_params(p), dev ? nullptr : &inl, dev, static_cast<int64_t>(slots.size()), k, v,
                              STREAM));
}

void CudaBackend::rope_write_kv_rows(const AttentionParams& p, const RopeParams& rp, const int32_t* pos,
                                     std::span<const KvSlotRef> slots, float* q, float* k, const float* v) {
  if (slots.empty()) return;
  if (p.kv_type == KvType::kQ8) return Backend::rope_write_kv_rows(p, rp, pos, slots, q, k, v);
  const int64_t m = static_cast<int64_t>(slots.size());
  cuda::DecodeSlots inl;
  const cuda::DevSlot* dev = device_slots(p, slots, inl);
  if (!dev) std::copy(pos, pos + m, inl.pos);
  FM_CUDA(cuda::rope_write_kv_rows(dev_params(p), cuda::DevRope{rp.n_rot, rp.freq_base, rp.freq_scale, rp.neox},
                                   dev ? nullptr : &inl, dev, dev ? device_positions(pos, m) : nullptr, m, q, k, v,
                                   STREAM));
}

}  // namespace flashmem

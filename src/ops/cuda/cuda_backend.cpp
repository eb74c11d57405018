#include "ops/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "ops/cuda/attention.cuh"
#include "ops/cuda/dequant.cuh"
#include "ops/cuda/elementwise.cuh"
#include "ops/cuda/indexer.cuh"

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

static_assert(sizeof(cuda::DevPage) == sizeof(KvPageRef) &&
              offsetof(cuda::DevPage, pos0) == offsetof(KvPageRef, pos0) &&
              offsetof(cuda::DevPage, n_tokens) == offsetof(KvPageRef, n_tokens) &&
              std::is_trivially_copyable_v<KvPageRef>);

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
  mass_scores_.reset();  // every scratch buffer before the stream its dealloc waits on
  for (void* p : owned_) cudaFree(p);
  for (void* e : slab_done_) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  cudaFreeHost(staging_);
  cublasDestroy(CUBLAS);
  cudaStreamDestroy(STREAM);
}

// ---- memory --------------------------------------------------------------------------------

void* CudaBackend::alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state
    FM_FAIL(ErrorCode::kOutOfMemory, "cannot allocate ", static_cast<double>(bytes) / (1 << 20),
            " MiB of GPU memory: ", cudaGetErrorString(e));
  }
  return p;
}

void CudaBackend::dealloc(void* p) noexcept {
  if (!p) return;
  cudaStreamSynchronize(STREAM);  // no op in flight may still use it
  cudaFree(p);
}

void* CudaBackend::alloc_host(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault);
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

void CudaBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (!bytes) return;
  if (bytes > kSlabBytes) {
    // Large (weights, once): from pageable memory, staged by the driver before it returns.
    FM_CUDA(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, STREAM));
    return;
  }
  if (slab_used_ + bytes > kSlabBytes) {  // move to the next slab once its last copies are done
    FM_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(slab_done_[slab_]), STREAM));
    slab_pending_[slab_] = true;
    slab_ = (slab_ + 1) % kSlabs;
    if (slab_pending_[slab_]) FM_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(slab_done_[slab_])));
    slab_pending_[slab_] = false;
    slab_used_ = 0;
  }
  uint8_t* at = staging_ + static_cast<size_t>(slab_) * kSlabBytes + slab_used_;
  std::memcpy(at, host_src, bytes);
  FM_CUDA(cudaMemcpyAsync(dst, at, bytes, cudaMemcpyHostToDevice, STREAM));
  slab_used_ += (bytes + 255) & ~size_t{255};
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
  const cudaMemcpyKind kind = dir == CopyDir::kHostToBackend   ? cudaMemcpyHostToDevice
                              : dir == CopyDir::kBackendToHost ? cudaMemcpyDeviceToHost
                                                               : cudaMemcpyDeviceToDevice;
  // Device-to-device copies and copies from or to page-locked memory are stream-ordered DMA:
  // nothing to wait for here (the contract: synchronize() before the host reads or rewrites
  // them). Pageable host memory must be done with when the call returns.
  bool wait = false;
  for (const PageCopy& c : copies) {
    FM_CUDA(cudaMemcpyAsync(c.dst, c.src, bytes, kind, STREAM));
    if (dir == CopyDir::kHostToBackend) wait = wait || !page_locked(c.src, bytes);
    if (dir == CopyDir::kBackendToHost) wait = wait || !page_locked(c.dst, bytes);
  }
  if (wait) FM_CUDA(cudaStreamSynchronize(STREAM));
}

void CudaBackend::synchronize() { FM_CUDA(cudaStreamSynchronize(STREAM)); }

const cuda::DevPage* CudaBackend::device_pages(std::span<const KvPageRef> pages) {
  const size_t bytes = pages.size() * sizeof(KvPageRef);
  if (bytes) {
    scratch(pages_dev_, bytes);
    upload(pages_dev_.get(), pages.data(), bytes);
  }
  return pages_dev_.as<const cuda::DevPage>();
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
  const size_t raw = static_cast<size_t>(w.rows) * w.row_bytes;
  const size_t out = static_cast<size_t>(w.rows) * w.cols * sizeof(float);
  BackendBuffer staged(*this, raw);
  upload(staged.get(), w.data, raw);
  float* dst = static_cast<float*>(alloc(out));
  const cudaError_t e = cuda::dequantize_rows(w.type, staged.get(), w.row_bytes, dst, w.rows, w.cols, STREAM);
  if (e != cudaSuccess) {
    cudaFree(dst);
    FM_FAIL(ErrorCode::kUnsupported, "weight ", w.name, " (", ggml_type_name(w.type),
            ") cannot be used on the GPU: ", cudaGetErrorString(e));
  }
  owned_.push_back(dst);
  weight_bytes_ += out;
  WeightMatrix r{GgmlType::F32, w.rows, w.cols, static_cast<size_t>(w.cols) * sizeof(float),
                 reinterpret_cast<const uint8_t*>(dst), w.name};
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

void CudaBackend::matmul(const WeightMatrix& w, const float* x, int64_t m, float* y) {
  FM_ICHECK(w.type == GgmlType::F32 && w.row_bytes == static_cast<size_t>(w.cols) * sizeof(float),
            "weight ", w.name, " was not prepared for the CUDA backend");
  if (m <= 0) return;
  // Row-major y[m × rows] = x[m × cols] · wᵀ is column-major yᵀ = w · xᵀ, with w read as the
  // transpose of its column-major [cols × rows] self.
  const float one = 1.0f, zero = 0.0f;
  FM_CUBLAS(cublasSgemm(CUBLAS, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows), static_cast<int>(m),
                        static_cast<int>(w.cols), &one, reinterpret_cast<const float*>(w.data),
                        static_cast<int>(w.cols), x, static_cast<int>(w.cols), &zero, y,
                        static_cast<int>(w.rows)));
}

void CudaBackend::get_rows(const WeightMatrix& w, const int32_t* ids, int64_t m, float* out) {
  FM_ICHECK(w.type == GgmlType::F32, "embedding ", w.name, " was not prepared for the CUDA backend");
  for (int64_t i = 0; i < m; ++i)
    FM_CHECK(ids[i] >= 0 && ids[i] < w.rows, ErrorCode::kInvalidArgument, "token id ", ids[i],
             " is outside the vocabulary [0, ", w.rows, ")");
  const size_t bytes = static_cast<size_t>(m) * sizeof(int32_t);
  scratch(ids_dev_, bytes);
  upload(ids_dev_.get(), ids, bytes);
  FM_CUDA(cuda::get_rows(reinterpret_cast<const float*>(w.data), w.cols, ids_dev_.as<int32_t>(), m,
                         out, STREAM));
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
  float* part_o = nullptr;
  float* part_lse = nullptr;
  if (chunks > 1) {
    const size_t rows = static_cast<size_t>(m) * p.n_heads * chunks;
    part_o = static_cast<float*>(scratch(part_o_, rows * p.head_dim * sizeof(float)));
    part_lse = static_cast<float*>(scratch(part_lse_, rows * sizeof(float)));
  }
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

}  // namespace flashmem

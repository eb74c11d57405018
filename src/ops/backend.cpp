#include "ops/backend.h"

#include <chrono>

#include <new>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cpu/cpu_backend.h"
#ifdef FLASHMEM_HAVE_CUDA
#include "ops/cuda/cuda_backend.h"
#endif

namespace flashmem {

const char* kv_type_name(KvType t) {
  return t == KvType::kF16 ? "f16" : t == KvType::kQ8 ? "q8" : "f32";
}
KvType parse_kv_type(const std::string& s) {
  if (s == "f16") return KvType::kF16;
  if (s == "f32") return KvType::kF32;
  if (s == "q8") return KvType::kQ8;
  FM_FAIL(ErrorCode::kInvalidArgument, "unknown KV type '", s, "' (known: f16, f32, q8)");
}
const char* cpu_dot_name(CpuDot d) { return d == CpuDot::kQ8 ? "q8" : "f32"; }
CpuDot parse_cpu_dot(const std::string& s) {
  if (s == "q8") return CpuDot::kQ8;
  if (s == "f32") return CpuDot::kF32;
  FM_FAIL(ErrorCode::kInvalidArgument, "unknown CPU dot product '", s, "' (known: q8, f32)");
}
size_t kv_type_bytes(KvType t) { return t == KvType::kF16 ? 2 : t == KvType::kQ8 ? 1 : 4; }

void check_chunk_mass(const AttentionParams& p, int32_t pos, int chunk_tokens, int64_t n_chunks) {
  FM_ICHECK(p.n_heads > 0 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 && chunk_tokens >= 1 &&
                p.page_tokens % chunk_tokens == 0 && pos >= 0 && n_chunks > pos / chunk_tokens,
            "chunk_mass: bad parameters (", chunk_tokens, "-token chunks, ", p.page_tokens, "-token pages, position ",
            pos, ", ", n_chunks, " chunks)");
}

void* Backend::alloc_host(size_t bytes) {
  void* p = ::operator new(bytes ? bytes : 1, std::align_val_t{256}, std::nothrow);
  FM_CHECK(p != nullptr, ErrorCode::kOutOfMemory, "cannot allocate ",
           static_cast<double>(bytes) / (1 << 20), " MiB of host memory");
  return p;
}

void Backend::free_host(void* p) noexcept {
  if (p) ::operator delete(p, std::align_val_t{256});
}

bool cuda_compiled() {
#ifdef FLASHMEM_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

void* Backend::alloc(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto mib = [](uint64_t b) { return static_cast<double>(b) / (1 << 20); };
    FM_CHECK(cap_ == 0 || held_ + bytes <= cap_, ErrorCode::kOutOfMemory, "cannot allocate ", mib(bytes), " MiB on the ",
             name(), " backend: ", mib(held_), " MiB of its cap of ", mib(cap_), " MiB are held");
    held_ += bytes;  // claimed before the allocation, so two threads cannot both pass the cap
  }
  void* p = nullptr;
  try {
    p = alloc_raw(bytes);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    held_ -= bytes;
    throw;
  }
  std::lock_guard<std::mutex> lock(mu_);
  sizes_[p] = bytes;
  return p;
}

void Backend::dealloc(void* p) noexcept {
  if (!p) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (const auto it = sizes_.find(p); it != sizes_.end()) {
      held_ -= it->second;
      sizes_.erase(it);
    }
  }
  dealloc_raw(p);
}

std::unique_ptr<Backend> make_backend(const std::string& name, int n_threads, CpuDot cpu_dot) {
  if (name == "cpu")
    return std::make_unique<CpuBackend>(n_threads > 0 ? n_threads : ThreadPool::default_threads(), cpu_dot);
  if (name == "cuda") {
#ifdef FLASHMEM_HAVE_CUDA
    return std::make_unique<CudaBackend>();
#else
    FM_FAIL(ErrorCode::kUnsupported,
            "this flashmem was built without CUDA (configure with -DFLASHMEM_CUDA=ON where nvcc is "
            "installed)");
#endif
  }
  FM_FAIL(ErrorCode::kInvalidArgument, "unknown backend '", name, "' (cpu or cuda)");
}

uint64_t Backend::mark() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

std::optional<double> Backend::seconds_between(uint64_t a, uint64_t b, bool) {
  return static_cast<double>(b - a) * 1e-9;
}

}  // namespace flashmem

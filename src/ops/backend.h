// flashmem/ops/backend.h — the compute interface the models are written against.
//
// The backend is chosen once (CPU or CUDA) and the model graph calls these ops; every backend
// must match the CPU one, which is the reference. Activations are f32, row-major,
// [m tokens × n features].
//
// Memory: every float/KV pointer an op takes is *backend memory* — host memory on the CPU
// backend, device memory on CUDA — obtained from alloc() (or a BackendBuffer). Token ids and
// positions are host arrays (a backend uploads them). Weights come from the model file and go
// through prepare() once: both backends keep them in their file type (GGUF quant blocks,
// dequantised on the fly); CUDA uploads them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <unordered_map>
#include <string>

#include "core/dtype.h"
#include "core/quant.h"

namespace flashmem {

// A 2-D weight in its stored type: `rows` output features, each a row of `cols` inputs.
struct WeightMatrix {
  GgmlType type = GgmlType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
  const uint8_t* data = nullptr;
  std::string name;  // for error messages
};

// The CPU backend's decode dot products (matrix products of one or two rows over Q4_0, Q4_1
// and Q8_0 weights; other types and prefill stay f32). kQ8: the activations are quantised to
// 8 bits per value with one scale per 32 (ops/cpu/matvec_q8.h), as llama.cpp does — about twice
// as fast, logits within ~1e-2 of float64. kF32: exact f32 activations, logits within ~1e-6.
enum class CpuDot { kQ8, kF32 };
const char* cpu_dot_name(CpuDot d);
// "q8" or "f32"; throws Error(kInvalidArgument) otherwise.
CpuDot parse_cpu_dot(const std::string& s);

// How KV is stored. kQ8: every K and V head vector as int8 with one f32 scale per (kv head,
// token): value = q · scale, scale = max|x| / 127, q = round-to-nearest-even(x · 127 / max|x|)
// (an all-zero vector has scale 0). 68 bytes per 64-dim vector against f16's 128.
enum class KvType { kF32, kF16, kQ8 };
const char* kv_type_name(KvType t);
// "f32", "f16" or "q8"; throws Error(kInvalidArgument) otherwise.
KvType parse_kv_type(const std::string& s);
// Bytes of one stored value (q8: 1; its scales come on top, see kv_half_bytes).
size_t kv_type_bytes(KvType t);
// Bytes of one token's K (or V) vector of one kv head, scales included.
inline size_t kv_vector_bytes(KvType t, int head_dim) {
  return static_cast<size_t>(head_dim) * kv_type_bytes(t) + (t == KvType::kQ8 ? sizeof(float) : 0);
}
// Byte offset, inside a K or V half-page, of the q8 scales: f32 [n_kv_heads × page_tokens],
// after the values (16-byte aligned).
inline size_t kv_scale_offset(int n_kv_heads, int page_tokens, int head_dim) {
  return (static_cast<size_t>(n_kv_heads) * page_tokens * head_dim + 15) / 16 * 16;
}
// Bytes of the K (or V) half of one page of one layer.
inline size_t kv_half_bytes(KvType t, int n_kv_heads, int page_tokens, int head_dim) {
  if (t == KvType::kQ8)
    return kv_scale_offset(n_kv_heads, page_tokens, head_dim) +
           static_cast<size_t>(n_kv_heads) * page_tokens * sizeof(float);
  return static_cast<size_t>(n_kv_heads) * page_tokens * head_dim * kv_type_bytes(t);
}
// Element `at` of f32/f16 KV storage as f32 (q8 values need their scale: kv_load_k/v).
inline float kv_load(const void* base, KvType t, int64_t at) {
  return t == KvType::kF32 ? static_cast<const float*>(base)[at]
                           : fp16_to_fp32(static_cast<const uint16_t*>(base)[at]);
}

// One page of KV as the attention op sees it: `page_tokens` slots, of which the first n_tokens
// hold consecutive positions pos0, pos0 + 1, .... A layer's pages come in increasing position
// order. Per KV head g (head_stride = page_tokens·head_dim elements apart):
//   K is dim-major:   k[g·head_stride + c·page_tokens + j]   (dim c of token j)
//   V is token-major: v[g·head_stride + j·head_dim + c]
// q8 pages hold int8 elements so, and after them (kv_scale_offset) each half's scales
// [n_kv_heads × page_tokens] (kv_token_scale).
// Dim-major K lets decode score 16 keys with one FMA per dim, with no reduction per key.
struct KvPageRef {  // pointers into backend memory
  const void* k = nullptr;
  const void* v = nullptr;
  int32_t pos0 = 0;
  int32_t n_tokens = 0;
};

// Where one token's K and V go: token slot `slot` of a page whose halves are k and v (backend
// memory, laid out as KvPageRef describes).
struct KvSlotRef {
  void* k = nullptr;
  void* v = nullptr;
  int32_t slot = 0;
};

struct AttentionParams {
  int n_heads = 0;       // query heads
  int n_kv_heads = 0;    // key/value heads (GQA: n_heads % n_kv_heads == 0)
  int head_dim = 0;
  int page_tokens = 0;      // token slots per page
  int64_t head_stride = 0;  // elements between kv heads inside a page (page_tokens·head_dim)
  KvType kv_type = KvType::kF32;
  float scale = 0.0f;       // usually 1/sqrt(head_dim)
};

// The q8 scales [page_tokens] of kv head g in a K or V half-page (nullptr unless q8).
inline const float* kv_head_scales(const void* half, const AttentionParams& p, int g) {
  if (p.kv_type != KvType::kQ8) return nullptr;
  return reinterpret_cast<const float*>(static_cast<const uint8_t*>(half) +
                                        kv_scale_offset(p.n_kv_heads, p.page_tokens, p.head_dim)) +
         static_cast<int64_t>(g) * p.page_tokens;
}
// The f32 scale of token j of kv head g in a K or V half-page (1 unless q8).
inline float kv_token_scale(const void* half, const AttentionParams& p, int g, int j) {
  return p.kv_type == KvType::kQ8 ? kv_head_scales(half, p, g)[j] : 1.0f;
}
// Dim c of token j's key in kv head g of a K half-page, as f32 (plain loops: references,
// page metadata).
inline float kv_load_k(const void* k, const AttentionParams& p, int g, int c, int j) {
  const int64_t at = g * p.head_stride + int64_t{c} * p.page_tokens + j;
  if (p.kv_type == KvType::kQ8) return static_cast<const int8_t*>(k)[at] * kv_token_scale(k, p, g, j);
  return kv_load(k, p.kv_type, at);
}
// Dim c of token j's value in kv head g of a V half-page, as f32.
inline float kv_load_v(const void* v, const AttentionParams& p, int g, int j, int c) {
  const int64_t at = g * p.head_stride + int64_t{j} * p.head_dim + c;
  if (p.kv_type == KvType::kQ8) return static_cast<const int8_t*>(v)[at] * kv_token_scale(v, p, g, j);
  return kv_load(v, p.kv_type, at);
}

// Memory Indexer Level-1 scoring (DESIGN.md §4).
struct IndexScoreParams {
  int n_heads = 0;     // indexer query heads (a multiple of n_kv_heads)
  int n_kv_heads = 0;  // key groups
  int head_dim = 0;
  float bias = 0.0f;
};

struct RopeParams {
  int n_rot = 0;            // rotated dims per head (≤ head_dim)
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;  // linear position scaling (1 = none)
  bool neox = false;        // false: rotate adjacent pairs (GGUF llama); true: halves (NeoX)
};

// One page-sized copy of a batch (memory tiers: recall, write-through, forks).
struct PageCopy {
  const uint8_t* src = nullptr;
  uint8_t* dst = nullptr;
};

enum class CopyDir { kHostToBackend, kBackendToHost, kBackendToBackend };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // ---- memory -----------------------------------------------------------------------------
  // True when backend memory is host memory (the CPU backend): callers may then read it.
  virtual bool host_memory() const = 0;
  // `bytes` of backend memory, 256-byte aligned, uninitialised. Throws Error(kOutOfMemory) when
  // the backend has no more, or when the cap (set_memory_cap) would be passed.
  void* alloc(size_t bytes);
  void dealloc(void* p) noexcept;
  // At most `bytes` of backend memory held through alloc() at once (0: no cap; `--gpu-memory`
  // shows what a smaller device would serve). What is held already stays.
  void set_memory_cap(uint64_t bytes) { cap_ = bytes; }
  uint64_t memory_cap() const { return cap_; }
  uint64_t memory_held() const { return held_; }
  // Memory the backend could still allocate (the device's free memory; host memory for the
  // CPU), not counting the cap; std::nullopt when unknown.
  virtual std::optional<uint64_t> memory_free() const = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  // Returns when the bytes are in host_dst (after every op issued before it).
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void fill_zero(void* p, size_t bytes) = 0;
  // Host memory for the KV mirror: the memory page copies reach fastest (page-locked on CUDA,
  // so copies to and from it are DMA that neither stages nor waits; ordinary 256-byte aligned
  // memory here). Uninitialised. Throws Error(kOutOfMemory).
  virtual void* alloc_host(size_t bytes);
  virtual void free_host(void* p) noexcept;
  // Copies `bytes` from each src to its dst as one batch, in issue order with the ops (a later
  // op sees the copied bytes). Returns when done, except copies whose host side is alloc_host()
  // memory, which may still be in flight: before reading such a destination on the host, or
  // changing such a source, call synchronize().
  virtual void copy_pages(CopyDir dir, std::span<const PageCopy> copies, size_t bytes) = 0;
  // Waits for every op and copy issued so far.
  virtual void synchronize() {}
  // Marks in the order of the ops, to time what ran between two of them on the device: mark()
  // records one and returns its id; seconds_between(a, b) returns the time from a to b once the
  // ops before b are done, waiting for them if `wait`, else nullopt while they are not. Here
  // (ops run as issued) the wall clock; CUDA times its stream with events, of which it keeps the
  // last kMarks.
  static constexpr uint64_t kMarks = 1024;
  virtual uint64_t mark();
  virtual std::optional<double> seconds_between(uint64_t a, uint64_t b, bool wait);

  // ---- weights ----------------------------------------------------------------------------
  // The form of a model-file weight the ops compute with (the backend owns any copy it makes,
  // for its lifetime). Throws Error(kUnsupported) for a type it cannot use.
  virtual WeightMatrix prepare(const WeightMatrix& w) { return w; }
  // The same for an f32 vector of n values (norm weights).
  virtual const float* prepare(const float* v, int64_t n) { return v; }

  // ---- ops --------------------------------------------------------------------------------

  // y[m × w.rows] = x[m × w.cols] · wᵀ
  virtual void matmul(const WeightMatrix& w, const float* x, int64_t m, float* y) = 0;
  // ys[k][m × ws[k]->rows] = x · ws[k]ᵀ for several weights sharing the input (Q/K/V, gate/up);
  // a backend may run them as one launch.
  virtual void matmul_n(std::span<const WeightMatrix* const> ws, const float* x, int64_t m,
                        std::span<float* const> ys) {
    for (size_t k = 0; k < ws.size(); ++k) matmul(*ws[k], x, m, ys[k]);
  }
  // y += x · wᵀ (the residual add after a projection). tmp [m × w.rows] is scratch a backend
  // may use; the default computes into it and adds, so its numbers are matmul's then add's.
  virtual void matmul_add(const WeightMatrix& w, const float* x, int64_t m, float* y, float* tmp) {
    matmul(w, x, m, tmp);
    add(y, tmp, m * w.rows);
  }
  // gate_out = silu(x · gateᵀ) * (x · upᵀ) (SwiGLU after the gate and up projections, which
  // share shape). up_tmp [m × up.rows] is scratch; the default is matmul_n then swiglu.
  virtual void matmul_swiglu(const WeightMatrix& gate, const WeightMatrix& up, const float* x, int64_t m,
                             float* gate_out, float* up_tmp) {
    const WeightMatrix* ws[2] = {&gate, &up};
    float* ys[2] = {gate_out, up_tmp};
    matmul_n(ws, x, m, ys);
    swiglu(gate_out, up_tmp, m * gate.rows, gate_out);
  }
  // The pre-norm decoder's two products that follow an RMSNorm, the norm included: xn =
  // rms_norm(x, norm_w) (as rms_norm writes it, [m × ws[0]->cols]), then matmul_n / matmul_swiglu
  // of xn. A backend may run the norm inside the product's launch (xn is written all the same).
  virtual void rms_norm_matmul_n(const float* x, const float* norm_w, int64_t m, float eps, float* xn,
                                 std::span<const WeightMatrix* const> ws, std::span<float* const> ys) {
    rms_norm(x, norm_w, m, ws[0]->cols, eps, xn);
    matmul_n(ws, xn, m, ys);
  }
  virtual void rms_norm_matmul_swiglu(const float* x, const float* norm_w, int64_t m, float eps, float* xn,
                                      const WeightMatrix& gate, const WeightMatrix& up, float* gate_out,
                                      float* up_tmp) {
    rms_norm(x, norm_w, m, gate.cols, eps, xn);
    matmul_swiglu(gate, up, xn, m, gate_out, up_tmp);
  }
  // out[i] = row ids[i] of the embedding table w (dequantised)
  virtual void get_rows(const WeightMatrix& w, const int32_t* ids, int64_t m, float* out) = 0;
  // y = x / rms(x) * weight, per row of n
  virtual void rms_norm(const float* x, const float* weight, int64_t m, int64_t n, float eps,
                        float* y) = 0;
  // In-place rotary embedding of x[m × n_heads × head_dim] at positions pos[m].
  virtual void rope(float* x, int64_t m, int n_heads, int head_dim, const int32_t* pos,
                    const RopeParams& p) = 0;
  // rope of the queries q[m × n_heads × head_dim] and the keys k[m × n_kv_heads × head_dim] (one
  // launch where a backend can).
  virtual void rope_qk(float* q, float* k, int64_t m, int n_heads, int n_kv_heads, int head_dim,
                       const int32_t* pos, const RopeParams& p) {
    rope(q, m, n_heads, head_dim, pos, p);
    rope(k, m, n_kv_heads, head_dim, pos, p);
  }
  // out = silu(gate) * up, n = m × features
  virtual void swiglu(const float* gate, const float* up, int64_t n, float* out) = 0;
  // x += y
  virtual void add(float* x, const float* y, int64_t n) = 0;
  // x[i·n + j] += b[j] for each of the m rows of x (a projection's bias); the default adds
  // row by row.
  virtual void add_rows(float* x, const float* b, int64_t m, int64_t n) {
    for (int64_t i = 0; i < m; ++i) add(x + i * n, b, n);
  }
  // Causal attention of q[m × n_heads × head_dim] (query i at position pos[i]) over the given
  // pages; keys at positions > pos[i] are ignored. out has the shape of q. When lse is given,
  // lse[i·n_heads + h] receives the log-sum-exp of the visible scores (−inf if none), so that
  // attention over disjoint page sets (memory tiers, streamed windows) can be merged.
  virtual void attention(const AttentionParams& p, const float* q, const int32_t* pos,
                         int64_t m, std::span<const KvPageRef> pages, float* out,
                         float* lse = nullptr) = 0;
  // (out, lse) ← the combination of (out, lse) and (out2, lse2) over `rows` rows of head_dim.
  virtual void merge_attention(int64_t rows, int head_dim, float* out, float* lse,
                               const float* out2, const float* lse2) = 0;
  // Writes tokens [0, n) of k/v ([n × n_kv_heads × head_dim] f32) into token slots
  // slot0 … slot0 + n − 1 of one page (k_page/v_page as KvPageRef lays them out), converting to
  // p.kv_type. The caller guarantees slot0 + n ≤ p.page_tokens.
  virtual void write_kv(const AttentionParams& p, void* k_page, void* v_page, int slot0,
                        int64_t n, const float* k, const float* v) = 0;
  // Decode attention of several sequences in one call: query row i (q + i·n_heads·head_dim, at
  // position pos[i]) reads pages[page_begin[i] … page_begin[i + 1]) (each sequence's pages, in
  // position order); page_begin has m + 1 entries, pos is host memory. A row with no pages is
  // skipped (its out row is left as it is). Row i gets what attention() gives it alone over its
  // pages (the default makes exactly those calls; a backend that fuses them keeps each row's
  // arithmetic independent of the other rows).
  virtual void attention_rows(const AttentionParams& p, const float* q, const int32_t* pos, int64_t m,
                              std::span<const int32_t> page_begin, std::span<const KvPageRef> pages,
                              float* out) {
    const int64_t row = int64_t{p.n_heads} * p.head_dim;
    for (int64_t i = 0; i < m; ++i)
      if (page_begin[i + 1] > page_begin[i])
        attention(p, q + i * row, pos + i, 1,
                pages.subspan(page_begin[i], static_cast<size_t>(page_begin[i + 1] - page_begin[i])),
                out + i * row);
  }
  // Writes token i of k/v ([m × n_kv_heads × head_dim] f32, m = slots.size()) into slots[i],
  // converting to p.kv_type (one token of each of several sequences: write_kv's arithmetic). A
  // slot with k == nullptr is skipped.
  virtual void write_kv_rows(const AttentionParams& p, std::span<const KvSlotRef> slots, const float* k,
                             const float* v) {
    const int64_t row = int64_t{p.n_kv_heads} * p.head_dim;
    for (size_t i = 0; i < slots.size(); ++i)
      if (slots[i].k)
        write_kv(p, slots[i].k, slots[i].v, slots[i].slot, 1, k + static_cast<int64_t>(i) * row,
               v + static_cast<int64_t>(i) * row);
  }
  // rope_qk of q and k (m = slots.size() rows at pos), then write_kv_rows of the roped k and v
  // (the decode step's K/V write with its rotary embedding): one launch where a backend can.
  virtual void rope_write_kv_rows(const AttentionParams& p, const RopeParams& rp, const int32_t* pos,
                                  std::span<const KvSlotRef> slots, float* q, float* k, const float* v) {
    rope_qk(q, k, static_cast<int64_t>(slots.size()), p.n_heads, p.n_kv_heads, p.head_dim, pos, rp);
    write_kv_rows(p, slots, k, v);
  }
  // Attention probabilities of one query token q [n_heads × head_dim] at position pos, summed
  // per chunk of chunk_tokens positions (chunk c = positions [c·chunk_tokens, (c+1)·chunk_tokens)):
  //   mass[h·n_chunks + c] = Σ_{t ∈ chunk c, t ≤ pos} softmax_h(scale · q_h·k_t)
  // over the keys of the given pages (the softmax runs over those keys only). Chunks no page
  // covers get 0. Requires page_tokens % chunk_tokens == 0 and n_chunks > pos / chunk_tokens.
  // q and mass are backend memory. (Labels and traces of what attention used: dump, oracle.)
  virtual void chunk_mass(const AttentionParams& p, const float* q, int32_t pos,
                          std::span<const KvPageRef> pages, int chunk_tokens, int64_t n_chunks,
                          float* mass) = 0;
  // Memory Indexer logits of n chunks:
  //   logits[c] = bias + Σ_h w[h] · ReLU(Σ_i q[h·head_dim + i] · k(c, g(h), i)),
  //   g(h) = h / (n_heads / n_kv_heads),
  //   k(c, g, i) = fp8_e4m3(keys[(c·n_kv_heads + g)·head_dim + i]) · scales[c].
  // q [n_heads × head_dim], w [n_heads], keys, scales and logits [n] are backend memory.
  virtual void index_scores(const IndexScoreParams& p, const float* q, const float* w,
                            const uint8_t* keys, const float* scales, int64_t n, float* logits) = 0;

 protected:
  // The backend's own allocation, without the cap's accounting.
  virtual void* alloc_raw(size_t bytes) = 0;
  virtual void dealloc_raw(void* p) noexcept = 0;

 private:
  uint64_t cap_ = 0, held_ = 0;
  std::unordered_map<const void*, size_t> sizes_;  // what alloc() handed out
  std::mutex mu_;                                  // alloc() and dealloc() from any thread
};

// An owned allocation of backend memory (move-only).
class BackendBuffer {
 public:
  BackendBuffer() = default;
  BackendBuffer(Backend& be, size_t bytes) : be_(&be), p_(bytes ? be.alloc(bytes) : nullptr), n_(bytes) {}
  BackendBuffer(BackendBuffer&& o) noexcept : be_(o.be_), p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  BackendBuffer& operator=(BackendBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_;
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  ~BackendBuffer() { reset(); }

  void reset() noexcept {
    if (p_) be_->dealloc(p_);
    p_ = nullptr;
    n_ = 0;
  }
  void* get() const { return p_; }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return n_; }

 private:
  Backend* be_ = nullptr;
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Backend::chunk_mass's preconditions (every backend checks them the same way); Error(kInternal).
void check_chunk_mass(const AttentionParams& p, int32_t pos, int chunk_tokens, int64_t n_chunks);

bool cuda_compiled();
// "cpu" (n_threads workers; 0 = ThreadPool::default_threads(); cpu_dot: its decode dot products)
// or "cuda" (the first visible GPU). Throws Error(kInvalidArgument) for an unknown name and
// Error(kUnsupported) for "cuda" in a build without CUDA or on a machine where no GPU can be used.
std::unique_ptr<Backend> make_backend(const std::string& name, int n_threads,
                                      CpuDot cpu_dot = CpuDot::kQ8);

}  // namespace flashmem

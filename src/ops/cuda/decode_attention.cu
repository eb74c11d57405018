#include "ops/cuda/decode_attention.cuh"

#include <algorithm>

#include "ops/cuda/kv_access.cuh"

namespace flashmem::cuda {

namespace {

constexpr int kThreads = 128;  // key slots per tile: one per thread in the score phase
constexpr int kMaxSplits = 64;  // a row's pages are cut into at most this many splits

// Bytes of one stored K/V element (DevKv).
__host__ __device__ constexpr int kv_elem_bytes(int kv) { return kv == kDevF32 ? 4 : kv == kDevF16 ? 2 : 1; }

// Pages per split of a row of n pages: a function of the row alone, so that a row's arithmetic
// does not depend on the other rows of its batch (a sequence decoded in a batch gets bit for bit
// what it gets alone). At least a tile of pages a split.
__host__ __device__ inline int split_pages(int n, int tile_pages) {
  const int even = (n + kMaxSplits - 1) / kMaxSplits;
  return even > tile_pages ? even : tile_pages;
}

// Block (split s, kv head g, row i). Tiles of up to kThreads key slots (whole pages): thread t
// scores slot t against the G queries of the group; a warp per head folds the tile into that
// head's running max and sum; thread (part, c) accumulates output dim c of every head over the
// slots part, part + KP, ... (KP = kThreads / head_dim key partitions; head_dim 256: two dims a
// thread).
template <int HD, int KV>
__global__ void __launch_bounds__(kThreads)
decode_attention_kernel(DevAttention p, const float* q, const int32_t* pos, const int32_t* page_begin,
                        const DevPage* pages, int tile_pages, int splits, float* out, float* part_o,
                        float* part_lse) {
  constexpr int KP = HD >= kThreads ? 1 : kThreads / HD;   // key partitions in the value phase
  constexpr int DPT = HD >= kThreads ? HD / kThreads : 1;  // dims per thread
  __shared__ float qs[kMaxGroup][HD];
  __shared__ float sc[kMaxGroup][kThreads];
  __shared__ float run_max[kMaxGroup], run_sum[kMaxGroup], corr[kMaxGroup];
  __shared__ float red[KP][kMaxGroup][HD];
  __shared__ DevPage tile_pg[kThreads];  // the tile's page descriptors (the list may be in host memory)
  // The tile's K and V blocks of this kv head, copied as stored: page k of the tile at
  // k · HD · pt elements (K dim-major, V token-major, as in the page).
  extern __shared__ __align__(16) uint8_t kv_tile[];
  constexpr int BPE = kv_elem_bytes(KV);
  const int s = blockIdx.x, g = blockIdx.y;
  const int64_t i = blockIdx.z;
  const int pt = p.page_tokens;
  const int pb = page_begin[i], pe = page_begin[i + 1];
  const int pps = split_pages(pe - pb, tile_pages);
  const int first = pb + s * pps;
  if (first >= pe) return;  // the row has fewer splits (or no pages: skipped)
  const int last = min(pe, first + pps);
  const bool alone = pe - pb <= pps;  // one split: straight to out
  const int G = p.n_heads / p.n_kv_heads;
  const int t = threadIdx.x, lane = t & 31, wid = t >> 5;
  const int32_t qpos = pos[i];
  const int64_t head_off = static_cast<int64_t>(g) * p.head_stride;
  for (int idx = t; idx < G * HD; idx += kThreads) {
    const int h = idx / HD, c = idx % HD;
    qs[h][c] = q[(i * p.n_heads + g * G + h) * HD + c] * p.scale;
  }
  if (t < kMaxGroup) {
    run_max[t] = -INFINITY;
    run_sum[t] = 0.0f;
  }
  float acc[DPT][kMaxGroup];
#pragma unroll
  for (int d = 0; d < DPT; ++d)
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) acc[d][h] = 0.0f;
  const int part = t / (HD < kThreads ? HD : kThreads);
  const int c0 = t % (HD < kThreads ? HD : kThreads);
  __syncthreads();
  const int block_elems = HD * pt;  // one page's K (or V) block of this head
  uint8_t* k_tile = kv_tile;
  uint8_t* v_tile = kv_tile + static_cast<size_t>(tile_pages) * block_elems * BPE;
  const int vecs = block_elems * BPE / 16;  // 16-byte vectors of a block
  for (int tp = first; tp < last; tp += tile_pages) {
    if (t < tile_pages && tp + t < last) tile_pg[t] = pages[tp + t];
    __syncthreads();
    {  // every K and V block of the tile, 16 bytes a thread at a time, all loads in flight
      const int n_tp = min(tile_pages, last - tp);
      const int total = 2 * n_tp * vecs;
#pragma unroll 8
      for (int idx = t; idx < total; idx += kThreads) {
        const int which = idx / (n_tp * vecs), r = idx % (n_tp * vecs);
        const int pp = r / vecs, v = r % vecs;
        const uint8_t* src = static_cast<const uint8_t*>(which ? tile_pg[pp].v : tile_pg[pp].k) + head_off * BPE;
        reinterpret_cast<int4*>((which ? v_tile : k_tile) + static_cast<size_t>(pp) * block_elems * BPE)[v] =
            reinterpret_cast<const int4*>(src)[v];
      }
    }
    __syncthreads();
    // Scores of slot t.
    {
      const int pi = tp + t / pt, j = t % pt;
      float sh[kMaxGroup];
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) sh[h] = -INFINITY;
      if (t < tile_pages * pt && pi < last) {  // pages that do not divide kThreads leave threads idle
        const DevPage pg = tile_pg[t / pt];
        if (j < pg.n_tokens && pg.pos0 + j <= qpos) {
#pragma unroll
          for (int h = 0; h < kMaxGroup; ++h) sh[h] = 0.0f;
          const void* kb = pg.k;
          const uint8_t* kt = k_tile + static_cast<size_t>(t / pt) * block_elems * BPE;
#pragma unroll 16
          for (int c = 0; c < HD; ++c) {
            const float kv = kv_at<KV>(kt, c * pt + j);
#pragma unroll
            for (int h = 0; h < kMaxGroup; ++h)
              if (h < G) sh[h] = fmaf(qs[h][c], kv, sh[h]);
          }
          const float ks = kv_scale<KV>(p, kb, g, j);
#pragma unroll
          for (int h = 0; h < kMaxGroup; ++h) sh[h] *= ks;
        }
      }
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h)
        if (h < G) sc[h][t] = sh[h];
    }
    __syncthreads();
    // Online softmax: warp w folds heads w, w + 4, ...
    for (int h = wid; h < G; h += kThreads / 32) {
      float v[kThreads / 32];
      float tmax = -INFINITY;
#pragma unroll
      for (int k = 0; k < kThreads / 32; ++k) {
        v[k] = sc[h][lane + 32 * k];
        tmax = fmaxf(tmax, v[k]);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
      const float old = run_max[h];
      const float nm = fmaxf(old, tmax);
      float sum = 0.0f;
#pragma unroll
      for (int k = 0; k < kThreads / 32; ++k) {
        const float e = v[k] == -INFINITY ? 0.0f : expf(v[k] - nm);
        sc[h][lane + 32 * k] = e;
        sum += e;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      __syncwarp();
      if (lane == 0) {
        const float cr = old == -INFINITY ? 0.0f : expf(old - nm);  // nm = −inf only with old
        corr[h] = cr;
        run_sum[h] = run_sum[h] * cr + sum;
        run_max[h] = nm;
      }
    }
    __syncthreads();
    // Values.
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
      const float cr = h < G ? corr[h] : 0.0f;
#pragma unroll
      for (int d = 0; d < DPT; ++d) acc[d][h] *= cr;
    }
    const int n_slots = min(tile_pages, last - tp) * pt;
    for (int k = part; k < n_slots; k += KP) {
      float e[kMaxGroup];
      bool any = false;
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) {
        e[h] = h < G ? sc[h][k] : 0.0f;
        any = any || e[h] != 0.0f;
      }
      if (!any) continue;  // an empty or masked slot: its bytes may be anything
      const int j = k % pt;
      const float vs = kv_scale<KV>(p, tile_pg[k / pt].v, g, j);
      const uint8_t* vb = v_tile + static_cast<size_t>(k / pt) * block_elems * BPE;
#pragma unroll
      for (int d = 0; d < DPT; ++d) {
        const float val = kv_at<KV>(vb, j * HD + c0 + d * kThreads) * vs;
#pragma unroll
        for (int h = 0; h < kMaxGroup; ++h) acc[d][h] = fmaf(e[h], val, acc[d][h]);
      }
    }
    __syncthreads();  // sc is rewritten by the next tile
  }
  // Fold the key partitions, normalise, write.
#pragma unroll
  for (int d = 0; d < DPT; ++d)
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h)
      if (h < G) red[part][h][c0 + d * kThreads] = acc[d][h];
  __syncthreads();
  for (int idx = t; idx < G * HD; idx += kThreads) {
    const int h = idx / HD, c = idx % HD;
    float a = 0.0f;
#pragma unroll
    for (int k = 0; k < KP; ++k) a += red[k][h][c];
    const float l = run_sum[h];
    const float o = l > 0.0f ? a / l : 0.0f;
    const int64_t item = i * p.n_heads + g * G + h;
    if (alone) {
      out[item * HD + c] = o;
    } else {
      part_o[(item * splits + s) * HD + c] = o;
      if (c == 0) part_lse[item * splits + s] = l > 0.0f ? run_max[h] + logf(l) : -INFINITY;
    }
  }
}

// One warp per (row, head): folds the row's splits by their lse (part rows are `stride` apart);
// rows of one split (written directly) or no pages are skipped.
__global__ void decode_combine_kernel(int64_t items, int n_heads, int stride, int head_dim, int tile_pages,
                                      const int32_t* page_begin, const float* part_o,
                                      const float* part_lse, float* out) {
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (item >= items) return;
  const int64_t i = item / n_heads;
  const int n = page_begin[i + 1] - page_begin[i];
  const int pps = split_pages(n, tile_pages);
  if (n <= pps) return;
  const int splits = (n + pps - 1) / pps;
  fold_partials(part_lse + item * stride, part_o + item * stride * head_dim, splits, head_dim, lane,
                out + item * head_dim);
}

// One thread per (row, kv head, dim).
template <int KV>
__global__ void write_kv_rows_kernel(DevAttention p, const DevSlot* slots, int64_t m, const float* k,
                                     const float* v) {
  const int hd = p.head_dim, nh = p.n_kv_heads;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * nh * hd) return;
  const int c = static_cast<int>(idx % hd);
  const int h = static_cast<int>((idx / hd) % nh);
  const DevSlot sl = slots[idx / (int64_t{hd} * nh)];
  if (!sl.k) return;
  store_kv<KV>(p, sl.k, sl.v, sl.slot, h, c, k + (idx - c), v + (idx - c));
}

constexpr size_t kMaxTileBytes = 160 << 10;  // dynamic shared memory of a block, at most

// Bytes of one page's K and V blocks of one kv head.
size_t page_block_bytes(const DevAttention& p) {
  return 2 * static_cast<size_t>(p.page_tokens) * p.head_dim * kv_elem_bytes(p.kv);
}
// Pages a tile takes: up to kThreads key slots, within kMaxTileBytes.
int tile_pages_of(const DevAttention& p) {
  const int by_slots = kThreads / p.page_tokens;
  const int by_bytes = static_cast<int>(kMaxTileBytes / page_block_bytes(p));
  return by_slots < by_bytes ? by_slots : by_bytes;
}

}  // namespace

bool decode_attention_supported(const DevAttention& p) {
  return (p.head_dim == 64 || p.head_dim == 128 || p.head_dim == 256) && p.n_kv_heads > 0 &&
         p.n_heads % p.n_kv_heads == 0 && p.n_heads / p.n_kv_heads <= kMaxGroup && p.page_tokens >= 1 &&
         p.page_tokens <= kThreads && p.head_stride == int64_t{p.page_tokens} * p.head_dim &&
         (static_cast<int64_t>(p.page_tokens) * p.head_dim * kv_elem_bytes(p.kv)) % 16 == 0 && tile_pages_of(p) >= 1;
}

int decode_attention_splits(const DevAttention& p, int max_pages) {
  if (max_pages <= 0 || p.page_tokens < 1 || p.page_tokens > kThreads) return 1;
  const int pps = split_pages(max_pages, tile_pages_of(p));
  return (max_pages + pps - 1) / pps;
}

cudaError_t decode_attention(const DevAttention& p, const float* q, const int32_t* pos, int64_t m,
                             const int32_t* page_begin, const DevPage* pages, int max_pages, int splits,
                             float* out, float* part_o, float* part_lse, cudaStream_t s) {
  if (!decode_attention_supported(p) || splits < 1 || m > 65535 || (splits > 1 && (!part_o || !part_lse)))
    return cudaErrorInvalidValue;
  if (m <= 0 || max_pages <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(p.n_kv_heads), static_cast<unsigned>(m));
  const int tile_pages = tile_pages_of(p);
  const size_t smem = tile_pages * page_block_bytes(p);
#define FM_DECODE(HD, KV)                                                                                  \
  do {                                                                                                     \
    static bool opted = false;                                                                             \
    if (!opted) {                                                                                          \
      const cudaError_t e_ = cudaFuncSetAttribute(decode_attention_kernel<HD, KV>,                         \
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize,             \
                                                  static_cast<int>(kMaxTileBytes));                        \
      if (e_ != cudaSuccess) return e_;                                                                    \
      opted = true;                                                                                        \
    }                                                                                                      \
    decode_attention_kernel<HD, KV><<<grid, kThreads, smem, s>>>(p, q, pos, page_begin, pages, tile_pages,  \
                                                                 splits, out, part_o, part_lse);           \
  } while (0)
#define FM_DECODE_KV(HD)                          \
  if (p.kv == kDevF16) FM_DECODE(HD, kDevF16);    \
  else if (p.kv == kDevQ8) FM_DECODE(HD, kDevQ8); \
  else FM_DECODE(HD, kDevF32)
  if (p.head_dim == 64) {
    FM_DECODE_KV(64);
  } else if (p.head_dim == 128) {
    FM_DECODE_KV(128);
  } else {
    FM_DECODE_KV(256);
  }
#undef FM_DECODE_KV
#undef FM_DECODE
  if (splits == 1) return cudaGetLastError();
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const int64_t items = m * p.n_heads;
  decode_combine_kernel<<<static_cast<unsigned>((items + 3) / 4), 128, 0, s>>>(
      items, p.n_heads, splits, p.head_dim, tile_pages, page_begin, part_o, part_lse, out);
  return cudaGetLastError();
}

cudaError_t write_kv_rows(const DevAttention& p, const DevSlot* slots, int64_t m, const float* k,
                          const float* v, cudaStream_t s) {
  const int64_t total = m * p.n_kv_heads * p.head_dim;
  if (total <= 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
  if (p.kv == kDevF16) write_kv_rows_kernel<kDevF16><<<blocks, 256, 0, s>>>(p, slots, m, k, v);
  else if (p.kv == kDevQ8) write_kv_rows_kernel<kDevQ8><<<blocks, 256, 0, s>>>(p, slots, m, k, v);
  else write_kv_rows_kernel<kDevF32><<<blocks, 256, 0, s>>>(p, slots, m, k, v);
  return cudaGetLastError();
}

}  // namespace flashmem::cuda

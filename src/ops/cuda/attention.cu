#include "ops/cuda/attention.cuh"

#include "ops/cuda/kv_access.cuh"

#include <algorithm>

namespace flashmem::cuda {

namespace {

constexpr int kWarps = 4;  // (query, head) items per block, one warp each
// Below this many (query, head) items, attention splits the pages over more warps.
constexpr int64_t kSplitWarps = 1024;
// chunk_mass keeps one head's query in shared memory.
constexpr int kMassMaxDim = 256;

// One warp per (query row i, head h). Lane j takes keys j, j + 32, ... of each page and keeps
// its own online-softmax state (max, sum, unnormalised output); the warp merges the 32 states
// at the end. K is dim-major, so the lanes' key loads for one dim are contiguous.
//
// Split (few queries, many pages): warp (item, chunk) attends to pages
// [chunk·chunk_pages, (chunk + 1)·chunk_pages) and writes its normalised partial result and
// lse to out/lse at row item·n_chunks + chunk; combine_kernel folds the chunks.
template <int HD, int KV>
__global__ void attention_kernel(DevAttention p, const float* q, const int32_t* pos, int64_t m,
                                 const DevPage* pages, int n_pages, int n_chunks, int chunk_pages,
                                 float* out, float* lse) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (warp >= m * p.n_heads * n_chunks) return;
  const int64_t item = warp / n_chunks;
  const int chunk = static_cast<int>(warp % n_chunks);
  const int page_begin = chunk * chunk_pages;
  const int page_end = min(n_pages, page_begin + chunk_pages);
  const int64_t i = item / p.n_heads;
  const int h = static_cast<int>(item % p.n_heads);
  const int g = h / (p.n_heads / p.n_kv_heads);
  const int32_t qpos = pos[i];
  float qr[HD], acc[HD];
  const float* qh = q + item * HD;
#pragma unroll
  for (int c = 0; c < HD; ++c) {
    qr[c] = qh[c];
    acc[c] = 0.0f;
  }
  float mx = -INFINITY, l = 0.0f;
  const int pt = p.page_tokens;
  const int64_t head_off = static_cast<int64_t>(g) * p.head_stride;
  for (int pi = page_begin; pi < page_end; ++pi) {
    const DevPage pg = pages[pi];
    const int vis = min(pg.n_tokens, qpos - pg.pos0 + 1);
    for (int j = lane; j < vis; j += 32) {
      float s = 0.0f;
#pragma unroll
      for (int c = 0; c < HD; ++c) s = fmaf(qr[c], kv_at<KV>(pg.k, head_off + int64_t{c} * pt + j), s);
      s *= p.scale * kv_scale<KV>(p, pg.k, g, j);
      if (s > mx) {
        const float corr = expf(mx - s);  // 0 on the first key (mx = −inf)
        l *= corr;
#pragma unroll
        for (int c = 0; c < HD; ++c) acc[c] *= corr;
        mx = s;
      }
      const float e = expf(s - mx);
      l += e;
      const int64_t vo = head_off + int64_t{j} * HD;
      const float ev = e * kv_scale<KV>(p, pg.v, g, j);
#pragma unroll
      for (int c = 0; c < HD; ++c) acc[c] = fmaf(ev, kv_at<KV>(pg.v, vo + c), acc[c]);
    }
  }
  // Merge the lanes' states.
  const float gm = warp_max(mx);
  const float w = mx == -INFINITY ? 0.0f : expf(mx - gm);
  l = warp_sum(l * w);
  float* oh = out + warp * HD;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int c = 0; c < HD; ++c) {
    const float a = warp_sum(acc[c] * w);
    if (lane == (c & 31)) oh[c] = a * inv;
  }
  if (lse && lane == 0) lse[warp] = l > 0.0f ? gm + logf(l) : -INFINITY;
}

// Tiled prefill attention: a block takes kTileQ consecutive query rows of one head, and the
// keys stream through shared memory kTileK tokens at a time, so each key and value is read
// from memory once per kTileQ queries instead of once per query. Warp w owns rows
// w·kRowsPerWarp …; in the score phase lane t takes key t of the tile for each of its rows (one
// float4 of K against a broadcast float4 of each q), in the value phase lane c accumulates
// output dims c, c + 32, …. Online softmax with a warp-uniform running max per row; lanes keep
// partial sums, folded at the end. Masking: a key is visible when its position ≤ the row's.
constexpr int kRowsPerWarp = 4;
constexpr int kTileQ = kWarps * kRowsPerWarp;
constexpr int kTileK = 32;

template <int HD, int KV>
__global__ void __launch_bounds__(32 * kWarps)
attention_tiled_kernel(DevAttention p, const float* q, const int32_t* pos, int64_t m,
                       const DevPage* pages, int n_pages, float* out, float* lse) {
  constexpr int KS = HD + 4;  // padded K row: lane t reads float4s of key t without conflicts
  constexpr int DPL = HD / 32;  // output dims per lane
  __shared__ __align__(16) float ks[kTileK * KS];
  __shared__ __align__(16) float vs[kTileK * HD];
  __shared__ __align__(16) float qs[kTileQ * HD];
  __shared__ __align__(16) float ps[kWarps][kRowsPerWarp][kTileK];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  const int h = blockIdx.y;
  const int g = h / (p.n_heads / p.n_kv_heads);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileQ;
  const int64_t head_off = static_cast<int64_t>(g) * p.head_stride;
  const int pt = p.page_tokens;
  // The block's queries (scaled here once); rows past m read as zero and are never written.
  for (int idx = threadIdx.x; idx < kTileQ * HD; idx += blockDim.x) {
    const int r = idx / HD, c = idx % HD;
    const int64_t i = row0 + r;
    qs[idx] = i < m ? q[(i * p.n_heads + h) * HD + c] * p.scale : 0.0f;
  }
  int32_t qpos[kRowsPerWarp];
  int32_t max_pos = INT32_MIN;  // of the whole block: pages past it are skipped
  for (int r = 0; r < kTileQ; ++r) {
    const int64_t i = row0 + r;
    const int32_t qp = i < m ? pos[i] : INT32_MIN;
    max_pos = max(max_pos, qp);
    if (r / kRowsPerWarp == wid) qpos[r % kRowsPerWarp] = qp;
  }
  float mx[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][DPL];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    mx[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int d = 0; d < DPL; ++d) acc[r][d] = 0.0f;
  }
  for (int pi = 0; pi < n_pages; ++pi) {
    const DevPage pg = pages[pi];
    // Block-uniform; row 0 of the block is < m, so max_pos is a real position.
    const int64_t reach = static_cast<int64_t>(max_pos) - pg.pos0 + 1;
    const int vis = static_cast<int>(reach < pg.n_tokens ? reach : pg.n_tokens);
    for (int j0 = 0; j0 < vis; j0 += kTileK) {
      const int nk = min(kTileK, vis - j0);
      __syncthreads();  // the previous tile is no longer read
      for (int idx = threadIdx.x; idx < HD * kTileK; idx += blockDim.x) {
        const int c = idx / kTileK, t = idx % kTileK;  // K is dim-major: t runs along memory
        ks[t * KS + c] = t < nk ? kv_at<KV>(pg.k, head_off + int64_t{c} * pt + j0 + t) * kv_scale<KV>(p, pg.k, g, j0 + t) : 0.0f;
      }
      for (int idx = threadIdx.x; idx < HD * kTileK; idx += blockDim.x) {
        const int t = idx / HD, c = idx % HD;
        vs[idx] = t < nk ? kv_at<KV>(pg.v, head_off + int64_t{j0 + t} * HD + c) * kv_scale<KV>(p, pg.v, g, j0 + t) : 0.0f;
      }
      __syncthreads();
      // Scores of key `lane` for this warp's rows.
      float s[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) s[r] = 0.0f;
      const float4* kr = reinterpret_cast<const float4*>(ks + lane * KS);
      const float4* qw = reinterpret_cast<const float4*>(qs + wid * kRowsPerWarp * HD);
#pragma unroll 4
      for (int c4 = 0; c4 < HD / 4; ++c4) {
        const float4 k = kr[c4];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          const float4 a = qw[r * (HD / 4) + c4];
          s[r] = fmaf(a.x, k.x, fmaf(a.y, k.y, fmaf(a.z, k.z, fmaf(a.w, k.w, s[r]))));
        }
      }
      const int32_t kpos = pg.pos0 + j0 + lane;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const bool ok = lane < nk && kpos <= qpos[r];
        float v = ok ? s[r] : -INFINITY;
        const float tmax = warp_max(v);
        float e = 0.0f;
        if (tmax != -INFINITY) {  // warp-uniform
          if (tmax > mx[r]) {
            const float corr = expf(mx[r] - tmax);  // 0 while mx is −inf
            l[r] *= corr;
#pragma unroll
            for (int d = 0; d < DPL; ++d) acc[r][d] *= corr;
            mx[r] = tmax;
          }
          e = ok ? expf(v - mx[r]) : 0.0f;
          l[r] += e;
        }
        ps[wid][r][lane] = e;
      }
      __syncwarp();
      for (int t = 0; t < nk; ++t) {
        float vv[DPL];
#pragma unroll
        for (int d = 0; d < DPL; ++d) vv[d] = vs[t * HD + lane + 32 * d];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          const float e = ps[wid][r][t];
#pragma unroll
          for (int d = 0; d < DPL; ++d) acc[r][d] = fmaf(e, vv[d], acc[r][d]);
        }
      }
      __syncwarp();  // ps is rewritten by the next tile
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = row0 + wid * kRowsPerWarp + r;
    const float sum = warp_sum(l[r]);
    if (i >= m) continue;
    const int64_t item = i * p.n_heads + h;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int d = 0; d < DPL; ++d) out[item * HD + lane + 32 * d] = acc[r][d] * inv;
    if (lse && lane == 0) lse[item] = sum > 0.0f ? mx[r] + logf(sum) : -INFINITY;
  }
}

// One block (kFoldThreads) per item: folds its n_chunks partial results (normalised, with lse)
// into out/lse.
static_assert(kSplitWarps <= kFoldMaxParts, "a row's chunks must fit the fold");
__global__ void __launch_bounds__(kFoldThreads)
combine_kernel(int n_chunks, int head_dim, const float* part_o, const float* part_lse, float* out, float* lse) {
  const int64_t item = blockIdx.x;
  const float l = fold_partials(part_lse + item * n_chunks, part_o + item * n_chunks * head_dim, n_chunks, head_dim,
                                out + item * head_dim);
  if (lse && threadIdx.x == 0) lse[item] = l;
}

// One block per row, one thread per dim.
__global__ void merge_kernel(int head_dim, float* out, float* lse, const float* out2,
                             const float* lse2) {
  const int64_t r = blockIdx.x;
  const float a = lse[r], b = lse2[r];
  __syncthreads();  // every thread has read lse[r] before thread 0 rewrites it
  if (b == -INFINITY) return;
  float* o = out + r * head_dim;
  const float* o2 = out2 + r * head_dim;
  const int c = threadIdx.x;
  if (a == -INFINITY) {
    if (c < head_dim) o[c] = o2[c];
    if (c == 0) lse[r] = b;
    return;
  }
  const float mx = fmaxf(a, b);
  const float wa = expf(a - mx), wb = expf(b - mx);
  const float inv = 1.0f / (wa + wb);
  if (c < head_dim) o[c] = (o[c] * wa + o2[c] * wb) * inv;
  if (c == 0) lse[r] = mx + logf(wa + wb);
}

// One thread per (token, kv head, dim).
template <int KV>
__global__ void write_kv_kernel(DevAttention p, void* k_page, void* v_page, int slot0, int64_t n,
                                const float* k, const float* v) {
  const int hd = p.head_dim, nh = p.n_kv_heads;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * nh * hd) return;
  const int c = static_cast<int>(idx % hd);
  const int h = static_cast<int>((idx / hd) % nh);
  const int64_t t = idx / (int64_t{hd} * nh);
  store_kv<KV>(p, k_page, v_page, slot0 + t, h, c, k + (idx - c), v + (idx - c));
}

// chunk_mass, step 1: the scaled score of every (head, page slot); −inf where the slot is empty
// or after the query. Thread = slot, so the lanes' dim-major key loads are contiguous.
template <int KV>
__global__ void mass_scores_kernel(DevAttention p, const float* q, int32_t pos, const DevPage* pages,
                                   int n_pages, float* scores) {
  __shared__ float qs[kMassMaxDim];
  const int h = blockIdx.y;
  for (int c = threadIdx.x; c < p.head_dim; c += blockDim.x) qs[c] = q[static_cast<int64_t>(h) * p.head_dim + c];
  __syncthreads();
  const int pt = p.page_tokens;
  const int64_t slots = static_cast<int64_t>(n_pages) * pt;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= slots) return;
  const DevPage pg = pages[t / pt];
  const int j = static_cast<int>(t % pt);
  float s = -INFINITY;
  if (j < pg.n_tokens && pg.pos0 + j <= pos) {
    const int g = h / (p.n_heads / p.n_kv_heads);
    const int64_t off = static_cast<int64_t>(g) * p.head_stride + j;
    float dot = 0.0f;
    for (int c = 0; c < p.head_dim; ++c) dot = fmaf(qs[c], kv_at<KV>(pg.k, off + int64_t{c} * pt), dot);
    s = dot * p.scale * kv_scale<KV>(p, pg.k, g, j);
  }
  scores[static_cast<int64_t>(h) * slots + t] = s;
}

// Block-wide reduction (max or sum) of one value per thread; every thread gets the result.
template <bool Max>
__device__ float block_reduce(float v, float* shared) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = Max ? fmaxf(v, u) : v + u;
  }
  const int warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  __syncthreads();  // `shared` may still be read from a previous reduction
  if ((threadIdx.x & 31) == 0) shared[warp] = v;
  __syncthreads();
  v = Max ? -INFINITY : 0.0f;
  for (int w = 0; w < n_warps; ++w) v = Max ? fmaxf(v, shared[w]) : v + shared[w];
  return v;
}

// chunk_mass, step 2: one block per head; softmax over its slots, then one thread per
// (page, chunk of the page) sums its tokens' probabilities, in token order.
__global__ void mass_reduce_kernel(int page_tokens, int chunk_tokens, const DevPage* pages, int n_pages,
                                   int64_t n_chunks, const float* scores, float* mass) {
  __shared__ float red[32];
  const int h = blockIdx.x;
  const int64_t slots = static_cast<int64_t>(n_pages) * page_tokens;
  const float* sh = scores + h * slots;
  float mx = -INFINITY;
  for (int64_t t = threadIdx.x; t < slots; t += blockDim.x) mx = fmaxf(mx, sh[t]);
  mx = block_reduce<true>(mx, red);
  if (mx == -INFINITY) return;  // no visible key: the chunks keep their zeros
  float sum = 0.0f;
  for (int64_t t = threadIdx.x; t < slots; t += blockDim.x) sum += expf(sh[t] - mx);
  const float inv = 1.0f / block_reduce<false>(sum, red);
  const int cpp = page_tokens / chunk_tokens;
  for (int64_t k = threadIdx.x; k < static_cast<int64_t>(n_pages) * cpp; k += blockDim.x) {
    const int64_t i = k / cpp;
    const int r = static_cast<int>(k % cpp);
    const float* st = sh + i * page_tokens + r * chunk_tokens;
    float acc = 0.0f;
    for (int j = 0; j < chunk_tokens; ++j) acc += expf(st[j] - mx);
    const int64_t ch = pages[i].pos0 / chunk_tokens + r;
    if (acc > 0.0f && ch < n_chunks) mass[h * n_chunks + ch] = acc * inv;
  }
}

}  // namespace

int attention_chunks(int64_t m, int n_heads, int n_pages) {
  const int64_t items = m * n_heads;
  if (items >= kSplitWarps || n_pages < 2) return 1;
  return static_cast<int>(std::min<int64_t>(n_pages, (kSplitWarps + items - 1) / items));
}

cudaError_t attention(const DevAttention& p, const float* q, const int32_t* pos, int64_t m,
                      const DevPage* pages, int n_pages, float* out, float* lse, float* part_o,
                      float* part_lse, cudaStream_t s) {
  const int64_t items = m * p.n_heads;
  if (items <= 0) return cudaSuccess;
  if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0) return cudaErrorInvalidValue;
  const int n_chunks = attention_chunks(m, p.n_heads, n_pages);
  const int chunk_pages = n_chunks > 1 ? (n_pages + n_chunks - 1) / n_chunks : std::max(n_pages, 1);
  if (n_chunks == 1 && attention_mma_supported(p, m))  // prefill on tensor cores
    return attention_mma(p, q, pos, m, pages, n_pages, out, lse, s);
  if (n_chunks == 1 && m >= kTileQ) {  // prefill: the tiled kernel
    const dim3 grid(static_cast<unsigned>((m + kTileQ - 1) / kTileQ), static_cast<unsigned>(p.n_heads));
#define FM_TILED(HD, KV) \
  attention_tiled_kernel<HD, KV><<<grid, 32 * kWarps, 0, s>>>(p, q, pos, m, pages, n_pages, out, lse)
#define FM_TILED_KV(HD)                         \
  if (p.kv == kDevF16) FM_TILED(HD, kDevF16);   \
  else if (p.kv == kDevQ8) FM_TILED(HD, kDevQ8); \
  else FM_TILED(HD, kDevF32)
    if (p.head_dim == 64) {
      FM_TILED_KV(64);
    } else if (p.head_dim == 128) {
      FM_TILED_KV(128);
    } else {
      return cudaErrorInvalidValue;
    }
#undef FM_TILED_KV
#undef FM_TILED
    return cudaGetLastError();
  }
  float* o = n_chunks > 1 ? part_o : out;
  float* l = n_chunks > 1 ? part_lse : lse;
  if (n_chunks > 1 && (!part_o || !part_lse)) return cudaErrorInvalidValue;
  const int64_t warps = items * n_chunks;
  const unsigned blocks = static_cast<unsigned>((warps + kWarps - 1) / kWarps);
  const int threads = 32 * kWarps;
#define FM_LAUNCH(HD, KV)                                                                  \
  attention_kernel<HD, KV><<<blocks, threads, 0, s>>>(p, q, pos, m, pages, n_pages, n_chunks, \
                                                      chunk_pages, o, l)
#define FM_LAUNCH_KV(HD)                         \
  if (p.kv == kDevF16) FM_LAUNCH(HD, kDevF16);   \
  else if (p.kv == kDevQ8) FM_LAUNCH(HD, kDevQ8); \
  else FM_LAUNCH(HD, kDevF32)
  if (p.head_dim == 64) {
    FM_LAUNCH_KV(64);
  } else if (p.head_dim == 128) {
    FM_LAUNCH_KV(128);
  } else {
    return cudaErrorInvalidValue;
  }
#undef FM_LAUNCH_KV
#undef FM_LAUNCH
  if (n_chunks > 1) {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    combine_kernel<<<static_cast<unsigned>(items), kFoldThreads, 0, s>>>(n_chunks, p.head_dim, part_o, part_lse,
                                                                      out, lse);
  }
  return cudaGetLastError();
}

cudaError_t merge_attention(int64_t rows, int head_dim, float* out, float* lse, const float* out2,
                            const float* lse2, cudaStream_t s) {
  if (rows <= 0) return cudaSuccess;
  if (head_dim > 1024) return cudaErrorInvalidValue;
  const int threads = (head_dim + 31) / 32 * 32;
  merge_kernel<<<static_cast<unsigned>(rows), threads, 0, s>>>(head_dim, out, lse, out2, lse2);
  return cudaGetLastError();
}

cudaError_t write_kv(const DevAttention& p, void* k_page, void* v_page, int slot0, int64_t n,
                     const float* k, const float* v, cudaStream_t s) {
  const int64_t total = n * p.n_kv_heads * p.head_dim;
  if (total <= 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
  if (p.kv == kDevF16) write_kv_kernel<kDevF16><<<blocks, 256, 0, s>>>(p, k_page, v_page, slot0, n, k, v);
  else if (p.kv == kDevQ8) write_kv_kernel<kDevQ8><<<blocks, 256, 0, s>>>(p, k_page, v_page, slot0, n, k, v);
  else write_kv_kernel<kDevF32><<<blocks, 256, 0, s>>>(p, k_page, v_page, slot0, n, k, v);
  return cudaGetLastError();
}

cudaError_t chunk_mass(const DevAttention& p, const float* q, int32_t pos, const DevPage* pages, int n_pages,
                       int chunk_tokens, int64_t n_chunks, float* scores, float* mass, cudaStream_t s) {
  if (p.head_dim > kMassMaxDim || chunk_tokens < 1 || p.page_tokens % chunk_tokens != 0) return cudaErrorInvalidValue;
  cudaError_t e = cudaMemsetAsync(mass, 0, static_cast<size_t>(p.n_heads) * n_chunks * sizeof(float), s);
  if (e != cudaSuccess || n_pages == 0) return e;
  const int64_t slots = static_cast<int64_t>(n_pages) * p.page_tokens;
  const dim3 grid(static_cast<unsigned>((slots + 127) / 128), static_cast<unsigned>(p.n_heads));
  if (p.kv == kDevF16) mass_scores_kernel<kDevF16><<<grid, 128, 0, s>>>(p, q, pos, pages, n_pages, scores);
  else if (p.kv == kDevQ8) mass_scores_kernel<kDevQ8><<<grid, 128, 0, s>>>(p, q, pos, pages, n_pages, scores);
  else mass_scores_kernel<kDevF32><<<grid, 128, 0, s>>>(p, q, pos, pages, n_pages, scores);
  mass_reduce_kernel<<<p.n_heads, 512, 0, s>>>(p.page_tokens, chunk_tokens, pages, n_pages, n_chunks, scores, mass);
  return cudaGetLastError();
}

}  // namespace flashmem::cuda

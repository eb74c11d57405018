#include "ops/cuda/decode_attention.cuh"

#include <algorithm>
#include <cstdlib>

#include "ops/cuda/kv_access.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/rope.cuh"

namespace flashmem::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxSplits = 256;   // a row's pages are cut into at most this many splits
constexpr int kSplitTokens = 128;  // key slots a split takes at least (a chunk per warp)

// Bytes of one stored K/V element (DevKv).
__host__ __device__ constexpr int kv_elem_bytes(int kv) { return kv == kDevF32 ? 4 : kv == kDevF16 ? 2 : 1; }

// Pages per split of a row of n pages of pt tokens: a function of the row alone, so that a row's
// arithmetic does not depend on the other rows of its batch (a sequence decoded in a batch gets
// bit for bit what it gets alone).
__host__ __device__ inline int split_pages(int n, int pt) {
  const int even = (n + kMaxSplits - 1) / kMaxSplits;
  const int least = (kSplitTokens + pt - 1) / pt;
  return even > least ? even : least;
}

// Dims of K a warp stages at a time (its tile: KD dims × 32 slots in shared memory).
template <int HD, int KV>
constexpr int k_tile_dims() {
  const int budget = HD >= 256 ? 4096 : 16384;  // bytes of K tiles a block (HD 256: its accumulators take the rest)
  const int kd = budget / (kWarps * 32 * kv_elem_bytes(KV));
  return kd < HD ? kd : HD;
}

// N consecutive stored elements of one K/V row, as loaded (one load where they fit 16 bytes).
template <int KV, int N>
struct alignas(N * kv_elem_bytes(KV) < 16 ? N * kv_elem_bytes(KV) : 16) Run {
  uint8_t b[N * kv_elem_bytes(KV)];
};

// The batch's row and page lists, from the launch's parameters or from memory (DecodeBatch).
struct BatchPtrs {
  const int32_t* pos;
  const int32_t* page_begin;
  const DevPage* pages;
};

// Batch row i's pages in split s: [first, last) of `pages`, whether it is the row's only split,
// and the row's query position; any is false when the row has fewer splits (or no pages).
struct SplitSpan {
  const DevPage* pages;
  int first, last;
  bool alone, any;
  int32_t qpos;
};
__device__ inline SplitSpan split_span(const DevAttention& p, const BatchPtrs& b, const DecodeRows& inl_rows,
                                       const DecodePages& inl_pages, int s, int64_t i) {
  const int32_t* page_begin = b.page_begin ? b.page_begin : inl_rows.page_begin;
  SplitSpan sp{};
  sp.pages = b.pages ? b.pages : inl_pages.pages;
  const int pb = page_begin[i], pe = page_begin[i + 1];
  const int pps = split_pages(pe - pb, p.page_tokens);
  sp.first = pb + s * pps;
  sp.any = sp.first < pe;
  if (!sp.any) return sp;
  sp.last = min(pe, sp.first + pps);
  sp.alone = pe - pb <= pps;
  sp.qpos = (b.pos ? b.pos : inl_rows.pos)[i];
  return sp;
}

// The end of a split: the block's warps, each with its heads' running max wm, sum wl and
// unnormalised output wacc ([kWarps][GP][HD], shared), folded by their maxima, normalised, and
// written to out (the row's only split) or to the split's partial result.
template <int HD, int GP>
__device__ inline void fold_warps(const DevAttention& p, const float (*wm)[GP], const float (*wl)[GP],
                                  const float* wacc, int G, int64_t i, int g, int s, int splits, bool alone,
                                  float* out, float* part_o, float* part_lse) {
  for (int idx = threadIdx.x; idx < G * HD; idx += kThreads) {
    const int h = idx / HD, c = idx % HD;
    float mx = -INFINITY;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) mx = fmaxf(mx, wm[v][h]);
    float sum = 0.0f, a = 0.0f;
    if (mx != -INFINITY)
#pragma unroll
      for (int v = 0; v < kWarps; ++v)
        if (wm[v][h] != -INFINITY) {
          const float f = expf(wm[v][h] - mx);
          sum = fmaf(wl[v][h], f, sum);
          a = fmaf(wacc[(v * GP + h) * HD + c], f, a);
        }
    const float o = sum > 0.0f ? a / sum : 0.0f;
    const int64_t item = i * p.n_heads + g * G + h;
    if (alone) {
      out[item * HD + c] = o;
    } else {
      part_o[(item * splits + s) * HD + c] = o;
      if (c == 0) part_lse[item * splits + s] = sum > 0.0f ? mx + logf(sum) : -INFINITY;
    }
  }
}

// Block (split s, kv head g, row i), kWarps independent warps. The split's key slots are cut into
// chunks of 32; warp w takes chunks w, w + kWarps, ... Per chunk, the warp first sends out every
// load: the chunk's V rows into registers (V is token-major: one slot's head row at a time) and
// its K into a shared tile with 16-byte asynchronous copies (K is dim-major: 32 consecutive
// slots of one dim are contiguous), so the chunk waits for memory about once (ncu, H100: the
// former per-dim loads left warps stalled on memory for half their cycles). Then lane t scores
// slot t against the GP query heads of the group from the tile, the warp folds the chunk into
// each head's running max and sum, and lane t accumulates output dims t·DPL … of every head over
// the chunk's slots. No block-wide barrier until the warps' results are folded at the end. GP:
// the group size rounded up to 2, 4 or 8 (the padded heads have zero queries, never written).
template <int HD, int KV, int GP>
__global__ void __launch_bounds__(kThreads)
decode_attention_kernel(DevAttention p, const float* q, const __grid_constant__ DecodeRows inl_rows,
                        const __grid_constant__ DecodePages inl_pages, BatchPtrs b, int splits, float* out,
                        float* part_o, float* part_lse) {
  constexpr int DPL = HD / 32;  // output dims per lane
  constexpr int BPE = kv_elem_bytes(KV);
  __shared__ __align__(16) float qs[GP][HD];
  __shared__ float wm[kWarps][GP], wl[kWarps][GP];
  __shared__ __align__(16) float wacc[kWarps][GP][HD];
  const int s = blockIdx.x, g = blockIdx.y;
  const int64_t i = blockIdx.z;
  const int pt = p.page_tokens;
  const SplitSpan sp = split_span(p, b, inl_rows, inl_pages, s, i);
  if (!sp.any) return;  // the row has fewer splits (or no pages: skipped)
  const DevPage* pages = sp.pages;
  const int first = sp.first, last = sp.last;
  const bool alone = sp.alone;  // one split: straight to out
  const int G = p.n_heads / p.n_kv_heads;
  const int t = threadIdx.x, lane = t & 31, w = t >> 5;
  const int32_t qpos = sp.qpos;
  const int64_t head_bytes = static_cast<int64_t>(g) * p.head_stride * BPE;
  for (int idx = t; idx < GP * HD; idx += kThreads) {
    const int h = idx / HD, c = idx % HD;
    qs[h][c] = h < G ? q[(i * p.n_heads + g * G + h) * HD + c] * p.scale : 0.0f;
  }
  __syncthreads();
  float m[GP], l[GP], acc[GP][DPL];
#pragma unroll
  for (int h = 0; h < GP; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int d = 0; d < DPL; ++d) acc[h][d] = 0.0f;
  }
  const int n_slots = (last - first) * pt;
  // V rows are read in batches of VB slots, all loads in flight together (in ≤ 64 registers; 16
  // for head_dim 256, whose accumulators take more).
  constexpr int kWords = (DPL * BPE + 3) / 4;
  constexpr int kVRegs = HD >= 256 ? 16 : 64;
  constexpr int VB = kVRegs / kWords < 32 ? kVRegs / kWords : 32;
  using VRun = Run<KV, DPL>;
  for (int base = w * 32; base < n_slots; base += kThreads) {
    // This lane's slot: its page and its V row of this head.
    const int slot = base + lane;
    const int n_k = min(32, n_slots - base);
    const uint8_t* vrow = nullptr;
    const void* khalf = nullptr;  // the page's K and V halves (q8 scales)
    const void* vhalf = nullptr;
    bool valid = false;
    int j = 0;
    if (slot < n_slots) {
      j = slot % pt;
      const DevPage pg = pages[first + slot / pt];
      khalf = pg.k;
      vhalf = pg.v;
      vrow = static_cast<const uint8_t*>(pg.v) + head_bytes + static_cast<int64_t>(j) * HD * BPE;
      valid = j < pg.n_tokens && pg.pos0 + j <= qpos;
    }
    // The first batch of V rows goes out before the scores, so both reads are in flight at once.
    VRun vr[VB];
#pragma unroll
    for (int k = 0; k < VB; ++k) {
      const auto* row = reinterpret_cast<const uint8_t*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(vrow), k));
      if (k < n_k) vr[k] = *reinterpret_cast<const VRun*>(row + lane * DPL * BPE);
    }
    // Scores of this lane's slot.
    float sc[GP];
#pragma unroll
    for (int h = 0; h < GP; ++h) sc[h] = -INFINITY;
    float vscale = 1.0f;
    {
      // The chunk's K, KD dims at a time, staged in the warp's tile with 16-byte copies of EPV
      // slots of one dim (all in flight together), then read down the lane's own slot column.
      constexpr int KD = k_tile_dims<HD, KV>();
      constexpr int EPV = 16 / BPE, GPR = 32 / EPV, R = KD * GPR / 32;
      static_assert(KD * GPR % 32 == 0 && HD % KD == 0, "whole rounds of pieces");
      __shared__ __align__(16) uint8_t kt[kWarps][KD][32 * BPE];
      const bool vec = pt % EPV == 0;  // a piece's slots share a page and its alignment
      float a[GP];
#pragma unroll
      for (int h = 0; h < GP; ++h) a[h] = 0.0f;
      for (int c0 = 0; c0 < HD; c0 += KD) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int pi = lane + 32 * r, c = pi / GPR, grp = pi % GPR, s0 = base + grp * EPV;
          if (vec) {
            const auto* kb = reinterpret_cast<const uint8_t*>(
                __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(khalf), grp * EPV));
            if (s0 < n_slots)
              cp_async16(&kt[w][c][grp * EPV * BPE],
                         kb + head_bytes + (static_cast<int64_t>(c0 + c) * pt + s0 % pt) * BPE);
          } else {
            for (int e = 0; e < EPV; ++e) {
              const auto* kb = reinterpret_cast<const uint8_t*>(
                  __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(khalf), grp * EPV + e));
              if (s0 + e < n_slots) {
                const uint8_t* src = kb + head_bytes + (static_cast<int64_t>(c0 + c) * pt + (s0 + e) % pt) * BPE;
                uint8_t* dst = &kt[w][c][(grp * EPV + e) * BPE];
                if constexpr (BPE == 4) *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(src);
                else if constexpr (BPE == 2) *reinterpret_cast<uint16_t*>(dst) = *reinterpret_cast<const uint16_t*>(src);
                else *dst = *src;
              }
            }
          }
        }
        cp_async_wait_all();
        __syncwarp();
        if (valid)
#pragma unroll
          for (int c = 0; c < KD; c += 4) {
            float kv[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) kv[u] = kv_at<KV>(kt[w][c + u], lane);
#pragma unroll
            for (int h = 0; h < GP; ++h) {
              const float4 qv = *reinterpret_cast<const float4*>(&qs[h][c0 + c]);
              a[h] = fmaf(qv.x, kv[0], a[h]);
              a[h] = fmaf(qv.y, kv[1], a[h]);
              a[h] = fmaf(qv.z, kv[2], a[h]);
              a[h] = fmaf(qv.w, kv[3], a[h]);
            }
          }
        __syncwarp();  // the tile is read before the next dims overwrite it
      }
      if (valid) {
        const float ks = kv_scale<KV>(p, khalf, g, j);
        vscale = kv_scale<KV>(p, vhalf, g, j);
#pragma unroll
        for (int h = 0; h < GP; ++h) sc[h] = a[h] * ks;
      }
    }
    // Online softmax over the chunk; pr: this slot's weight per head (times its V scale).
    float pr[GP];
    bool use = false;
#pragma unroll
    for (int h = 0; h < GP; ++h) {
      const float nm = fmaxf(m[h], warp_max(sc[h]));
      const float corr = m[h] == -INFINITY ? 0.0f : expf(m[h] - nm);
      const float e = sc[h] == -INFINITY ? 0.0f : expf(sc[h] - nm);
      l[h] = l[h] * corr + warp_sum(e);
      m[h] = nm;
#pragma unroll
      for (int d = 0; d < DPL; ++d) acc[h][d] *= corr;
      pr[h] = e * vscale;
      use = use || e != 0.0f;
    }
    // Values: slot k's row, this lane's dims; a masked slot's bytes may be anything (read, dropped).
    const unsigned used = __ballot_sync(0xffffffffu, use);
    for (int k0 = 0; k0 < n_k; k0 += VB) {
      if (k0 > 0)
#pragma unroll
        for (int k = 0; k < VB; ++k) {
          const auto* row = reinterpret_cast<const uint8_t*>(
              __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(vrow), (k0 + k) & 31));
          if (k0 + k < n_k) vr[k] = *reinterpret_cast<const VRun*>(row + lane * DPL * BPE);
        }
#pragma unroll
      for (int k = 0; k < VB; ++k) {
        if (k0 + k >= n_k) break;
        const bool keep = (used >> (k0 + k)) & 1u;
        float val[DPL];
#pragma unroll
        for (int d = 0; d < DPL; ++d) val[d] = keep ? kv_at<KV>(vr[k].b, d) : 0.0f;
#pragma unroll
        for (int h = 0; h < GP; ++h) {
          const float e = __shfl_sync(0xffffffffu, pr[h], k0 + k);
#pragma unroll
          for (int d = 0; d < DPL; ++d) acc[h][d] = fmaf(e, val[d], acc[h][d]);
        }
      }
    }
  }
  // Fold the warps, normalise, write.
  if (lane == 0)
#pragma unroll
    for (int h = 0; h < GP; ++h) {
      wm[w][h] = m[h];
      wl[w][h] = l[h];
    }
#pragma unroll
  for (int h = 0; h < GP; ++h)
#pragma unroll
    for (int d = 0; d < DPL; ++d) wacc[w][h][lane * DPL + d] = acc[h][d];
  __syncthreads();
  fold_warps<HD, GP>(p, wm, wl, &wacc[0][0][0], G, i, g, s, splits, alone, out, part_o, part_lse);
}

// f16 KV, head_dim 64 or 128, pages of a multiple of 8 tokens: the blocks, splits, warps and
// 32-slot chunks of decode_attention_kernel, with each chunk's products on tensor cores. The
// group's query heads are the 16 rows of an m16n8k16 MMA (rows past the group are zero); per
// chunk the warp copies K (dim-major, as stored) and V (slot-major) into its shared tiles with
// 16-byte asynchronous copies, then S = Q·Kᵀ and O += P·V read their operands with transposing
// ldmatrix. Q and P go in as two f16 parts each (hi + lo), so a product keeps ~22 bits of them
// against the f16 K and V: the result stays within ~1e-6 of f32 arithmetic. V rows of masked
// slots are zero-filled (a masked slot's bytes may be anything, and 0 · NaN is NaN).
constexpr int kMmaKRow = 32 + 8;  // halves in a K tile row (one dim's 32 slots; padded: no bank conflicts)
template <int HD>
constexpr int mma_tile_halves() {
  return HD * kMmaKRow + 32 * (HD + 8);  // a warp's K tile, then its V tile (rows of HD + 8 halves)
}
template <int HD>
constexpr int mma_smem_bytes() {
  return kWarps * mma_tile_halves<HD>() * 2;
}

template <int HD>
__global__ void __launch_bounds__(kThreads)
decode_attention_mma_kernel(DevAttention p, const float* q, const __grid_constant__ DecodeRows inl_rows,
                            const __grid_constant__ DecodePages inl_pages, BatchPtrs b, int splits, float* out,
                            float* part_o, float* part_lse) {
  constexpr int VROW = HD + 8;  // halves in a V tile row
  constexpr int KC = HD / 16;   // k-chunks of the scores
  constexpr int NT = HD / 8;    // n-tiles of the output
  constexpr int GP = 8;         // rows of the fold (the MMA's first 8 rows)
  static_assert(kWarps * GP * HD * 4 <= mma_smem_bytes<HD>(), "the fold fits where the tiles were");
  extern __shared__ __align__(16) uint8_t dyn_smem[];
  __shared__ float wm[kWarps][GP], wl[kWarps][GP];
  const int s = blockIdx.x, g = blockIdx.y;
  const int64_t i = blockIdx.z;
  const int pt = p.page_tokens;
  const SplitSpan sp = split_span(p, b, inl_rows, inl_pages, s, i);
  if (!sp.any) return;  // the row has fewer splits (or no pages: skipped)
  const DevPage* pages = sp.pages;
  const int first = sp.first, last = sp.last;
  const bool alone = sp.alone;
  const int G = p.n_heads / p.n_kv_heads;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int gr = lane >> 2, t = lane & 3;  // the fragments' row (query head) and column pair
  const int32_t qpos = sp.qpos;
  const int64_t head_off = static_cast<int64_t>(g) * p.head_stride;  // in halves
  // Q fragments, rows = the group's heads: dims kc·16 + 2t (+1) and + 8, as hi and lo parts.
  uint32_t qh[KC][2], ql[KC][2];
  {
    const float* qrow = gr < G ? q + (i * p.n_heads + g * G + gr) * HD : nullptr;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = kc * 16 + 8 * e + 2 * t;
        const float x0 = qrow ? qrow[c] * p.scale : 0.0f, x1 = qrow ? qrow[c + 1] * p.scale : 0.0f;
        split_half2(x0, x1, qh[kc][e], ql[kc][e]);
      }
  }
  __half* kt = reinterpret_cast<__half*>(dyn_smem) + w * mma_tile_halves<HD>();
  __half* vt = kt + HD * kMmaKRow;
  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float mx = -INFINITY, lsum = 0.0f;  // head gr's running max; this thread's share of its sum
  const int n_slots = (last - first) * pt;
  const int j8 = lane >> 3, r8 = lane & 7;  // ldmatrix: the matrix and the row this lane addresses
  for (int base = w * 32; base < n_slots; base += kThreads) {
    const int slot = base + lane;
    const __half* kslot = nullptr;  // this lane's slot: its K (dim 0) and its V row
    const __half* vslot = nullptr;
    bool valid = false;
    if (slot < n_slots) {
      const int j = slot % pt;
      const DevPage pg = pages[first + slot / pt];
      kslot = static_cast<const __half*>(pg.k) + head_off + j;
      vslot = static_cast<const __half*>(pg.v) + head_off + static_cast<int64_t>(j) * HD;
      valid = j < pg.n_tokens && pg.pos0 + j <= qpos;
    }
    const unsigned vmask = __ballot_sync(0xffffffffu, valid);
    {
      // K: lane takes the 8-slot group lane % 4 of dims lane / 4 + 8r (a group shares its page).
      const int grp = lane & 3;
      const auto* kg = reinterpret_cast<const __half*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(kslot), grp * 8));
      const bool in = base + grp * 8 < n_slots;
      // a valid address for the zero-filling copies (lane 0's slot is in the split: base < n_slots)
      const void* any = reinterpret_cast<const void*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(kslot), 0));
#pragma unroll
      for (int r = 0; r < HD / 8; ++r) {
        const int c = (lane >> 2) + 8 * r;
        cp_async16(kt + c * kMmaKRow + grp * 8, in ? static_cast<const void*>(kg + static_cast<int64_t>(c) * pt) : any, in);
      }
      // V: 32 rows of HD / 8 pieces; a masked slot's row is zeros.
      constexpr int PPR = HD / 8;
#pragma unroll
      for (int r = 0; r < PPR; ++r) {
        const int pi = lane + 32 * r, row = pi / PPR, pc = pi % PPR;
        const auto* vr = reinterpret_cast<const __half*>(
            __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(vslot), row));
        const bool use = (vmask >> row) & 1u;
        cp_async16(vt + row * VROW + pc * 8, use ? static_cast<const void*>(vr + pc * 8) : any, use);
      }
    }
    cp_async_wait_all();
    __syncwarp();
    // S = Q·Kᵀ: 4 n-tiles of 8 slots; per k-chunk one ldmatrix gives two n-tiles' B fragments.
    float sc[4][4];
#pragma unroll
    for (int n = 0; n < 4; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc)
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t bb[4];
        ldmatrix_x4_trans(bb, kt + (kc * 16 + (j8 & 1) * 8 + r8) * kMmaKRow + (2 * np + (j8 >> 1)) * 8);
        mma_f16(sc[2 * np], qh[kc][0], 0u, qh[kc][1], 0u, bb[0], bb[1]);
        mma_f16(sc[2 * np], ql[kc][0], 0u, ql[kc][1], 0u, bb[0], bb[1]);
        mma_f16(sc[2 * np + 1], qh[kc][0], 0u, qh[kc][1], 0u, bb[2], bb[3]);
        mma_f16(sc[2 * np + 1], ql[kc][0], 0u, ql[kc][1], 0u, bb[2], bb[3]);
      }
    // Online softmax of head gr over the chunk (the quad of lanes 4gr … 4gr + 3 shares the head).
    float cm = -INFINITY;
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (!((vmask >> (n * 8 + 2 * t + e)) & 1u)) sc[n][e] = -INFINITY;
        cm = fmaxf(cm, sc[n][e]);
      }
    cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 1));
    cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 2));
    const float nm = fmaxf(mx, cm);
    const float corr = mx == -INFINITY ? 0.0f : expf(mx - nm);
    float ps = 0.0f;
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        sc[n][e] = sc[n][e] == -INFINITY ? 0.0f : expf(sc[n][e] - nm);
        ps += sc[n][e];
      }
    lsum = lsum * corr + ps;
    mx = nm;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      o[n][0] *= corr;
      o[n][1] *= corr;
    }
    // O += P·V: k-chunks of 16 slots (n-tiles 2kc, 2kc + 1 of the scores); per dim pair of
    // n-tiles one ldmatrix.
#pragma unroll
    for (int kc = 0; kc < 2; ++kc) {
      uint32_t ah0, al0, ah2, al2;
      split_half2(sc[2 * kc][0], sc[2 * kc][1], ah0, al0);
      split_half2(sc[2 * kc + 1][0], sc[2 * kc + 1][1], ah2, al2);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bb[4];
        ldmatrix_x4_trans(bb, vt + (kc * 16 + (j8 & 1) * 8 + r8) * VROW + (2 * np + (j8 >> 1)) * 8);
        mma_f16(o[2 * np], ah0, 0u, ah2, 0u, bb[0], bb[1]);
        mma_f16(o[2 * np], al0, 0u, al2, 0u, bb[0], bb[1]);
        mma_f16(o[2 * np + 1], ah0, 0u, ah2, 0u, bb[2], bb[3]);
        mma_f16(o[2 * np + 1], al0, 0u, al2, 0u, bb[2], bb[3]);
      }
    }
    __syncwarp();  // the tiles are read before the next chunk's copies land
  }
  lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
  lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
  __syncthreads();  // every warp is done with its tiles: the fold's outputs take their place
  float* wacc = reinterpret_cast<float*>(dyn_smem);  // [kWarps][GP][HD]
  if (t == 0) {
    wm[w][gr] = mx;
    wl[w][gr] = lsum;
  }
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    wacc[(w * GP + gr) * HD + n * 8 + 2 * t] = o[n][0];
    wacc[(w * GP + gr) * HD + n * 8 + 2 * t + 1] = o[n][1];
  }
  __syncthreads();
  fold_warps<HD, GP>(p, wm, wl, wacc, G, i, g, s, splits, alone, out, part_o, part_lse);
}

// Whether the tensor-core kernel takes these parameters (FLASHMEM_CUDA_DECODE_MMA=0: never).
bool use_mma(const DevAttention& p) {
  static const bool off = [] {
    const char* v = std::getenv("FLASHMEM_CUDA_DECODE_MMA");
    return v && v[0] == '0';
  }();
  return !off && p.kv == kDevF16 && (p.head_dim == 64 || p.head_dim == 128) && p.page_tokens % 8 == 0;
}

// One block (kFoldThreads) per (row, head): folds the row's splits by their lse (part rows are
// `stride` apart); rows of one split (written directly) or no pages are skipped.
static_assert(kMaxSplits <= kFoldMaxParts, "a row's splits must fit the fold");
__global__ void __launch_bounds__(kFoldThreads)
decode_combine_kernel(int n_heads, int stride, int head_dim, int page_tokens, const __grid_constant__ DecodeRows inl,
                      const int32_t* begin_ptr, const float* part_o, const float* part_lse, float* out) {
  const int32_t* page_begin = begin_ptr ? begin_ptr : inl.page_begin;
  const int64_t item = blockIdx.x;
  const int64_t i = item / n_heads;
  const int n = page_begin[i + 1] - page_begin[i];
  const int pps = split_pages(n, page_tokens);
  if (n <= pps) return;
  const int splits = (n + pps - 1) / pps;
  fold_partials(part_lse + item * stride, part_o + item * stride * head_dim, splits, head_dim, out + item * head_dim);
}

// One thread per (row, kv head, dim).
template <int KV>
__global__ void write_kv_rows_kernel(DevAttention p, const __grid_constant__ DecodeSlots inl, const DevSlot* slot_ptr,
                                     int64_t m, const float* k, const float* v) {
  const DevSlot* slots = slot_ptr ? slot_ptr : inl.slots;
  const int hd = p.head_dim, nh = p.n_kv_heads;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * nh * hd) return;
  const int c = static_cast<int>(idx % hd);
  const int h = static_cast<int>((idx / hd) % nh);
  const DevSlot sl = slots[idx / (int64_t{hd} * nh)];
  if (!sl.k) return;
  store_kv<KV>(p, sl.k, sl.v, sl.slot, h, c, k + (idx - c), v + (idx - c));
}

// One thread per (row, head, dim); a row's heads are its n_heads q heads, then n_kv_heads k
// heads, then n_kv_heads v heads. A rotated pair is done by the thread of its first dim (both
// dims, in place, and for k into the slot); k's unrotated dims and v are copied into the slot.
template <int KV>
__global__ void rope_write_kv_rows_kernel(DevAttention p, DevRope r, const __grid_constant__ DecodeSlots inl,
                                          const DevSlot* slot_ptr, const int32_t* pos_ptr, int64_t m, float* q,
                                          float* k, const float* v) {
  const DevSlot* slots = slot_ptr ? slot_ptr : inl.slots;
  const int32_t* pos = slot_ptr ? pos_ptr : inl.pos;
  const int hd = p.head_dim, nq = p.n_heads, nk = p.n_kv_heads, heads = nq + 2 * nk;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * heads * hd) return;
  const int c = static_cast<int>(idx % hd);
  const int h = static_cast<int>((idx / hd) % heads);
  const int64_t row = idx / (int64_t{hd} * heads);
  const DevSlot sl = slots[row];
  if (h >= nq + nk) {  // v
    const int g = h - nq - nk;
    if (sl.k) store_kv_elem<KV>(sl.v, g * p.head_stride + int64_t{sl.slot} * hd + c, v[(row * nk + g) * hd + c]);
    return;
  }
  const bool is_k = h >= nq;
  const int g = h - nq;
  float* x = is_k ? k + (row * nk + g) * hd : q + (row * nq + h) * hd;
  auto to_slot = [&](int d, float val) {
    if (is_k && sl.k) store_kv_elem<KV>(sl.k, g * p.head_stride + int64_t{d} * p.page_tokens + sl.slot, val);
  };
  if (c >= r.n_rot) return to_slot(c, x[c]);
  const int half = r.n_rot / 2;
  const bool first = r.neox ? c < half : c % 2 == 0;
  if (!first) return;
  const int i = r.neox ? c : c / 2;
  int i0, i1;
  rope_pair_dims(i, r.n_rot, r.neox, i0, i1);
  float a = x[i0], b = x[i1];
  rope_rotate(pos[row], i, r.n_rot, r.freq_base, r.freq_scale, a, b);
  x[i0] = a;
  x[i1] = b;
  to_slot(i0, a);
  to_slot(i1, b);
}

}  // namespace

bool decode_attention_supported(const DevAttention& p) {
  return (p.head_dim == 64 || p.head_dim == 128 || p.head_dim == 256) && p.n_kv_heads > 0 &&
         p.n_heads % p.n_kv_heads == 0 && p.n_heads / p.n_kv_heads <= kMaxGroup && p.page_tokens >= 1 &&
         p.head_stride == int64_t{p.page_tokens} * p.head_dim;
}

int decode_attention_splits(const DevAttention& p, int max_pages) {
  if (max_pages <= 0 || p.page_tokens < 1) return 1;
  const int pps = split_pages(max_pages, p.page_tokens);
  return (max_pages + pps - 1) / pps;
}

cudaError_t decode_attention(const DevAttention& p, const float* q, int64_t m, const DecodeBatch& b, int max_pages,
                             int splits, float* out, float* part_o, float* part_lse, cudaStream_t s) {
  if (!decode_attention_supported(p) || splits < 1 || m > 65535 || (splits > 1 && (!part_o || !part_lse)) ||
      (b.rows ? m > kInlineRows : !b.pos || !b.page_begin) || (!b.inline_pages && !b.pages))
    return cudaErrorInvalidValue;
  if (m <= 0 || max_pages <= 0) return cudaSuccess;
  static const DecodeRows no_rows{};
  static const DecodePages no_pages{};
  const DecodeRows& rows = b.rows ? *b.rows : no_rows;
  const DecodePages& pgs = b.inline_pages ? *b.inline_pages : no_pages;
  const bool mma = use_mma(p);
  const BatchPtrs ptrs{b.rows ? nullptr : b.pos, b.rows ? nullptr : b.page_begin, b.inline_pages ? nullptr : b.pages};
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(p.n_kv_heads), static_cast<unsigned>(m));
  const int group = p.n_heads / p.n_kv_heads;
  if (mma) {
    if (p.head_dim == 64) {
      decode_attention_mma_kernel<64>
          <<<grid, kThreads, mma_smem_bytes<64>(), s>>>(p, q, rows, pgs, ptrs, splits, out, part_o, part_lse);
    } else {
      static const cudaError_t attr = cudaFuncSetAttribute(
          decode_attention_mma_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, mma_smem_bytes<128>());
      if (attr != cudaSuccess) return attr;
      decode_attention_mma_kernel<128>
          <<<grid, kThreads, mma_smem_bytes<128>(), s>>>(p, q, rows, pgs, ptrs, splits, out, part_o, part_lse);
    }
  } else {
#define FM_DECODE(HD, KV, GP) \
  decode_attention_kernel<HD, KV, GP><<<grid, kThreads, 0, s>>>(p, q, rows, pgs, ptrs, splits, out, part_o, part_lse)
#define FM_DECODE_G(HD, KV)                 \
  if (group <= 2) FM_DECODE(HD, KV, 2);      \
  else if (group <= 4) FM_DECODE(HD, KV, 4); \
  else FM_DECODE(HD, KV, 8)
#define FM_DECODE_KV(HD)                            \
  if (p.kv == kDevF16) { FM_DECODE_G(HD, kDevF16); } \
  else if (p.kv == kDevQ8) { FM_DECODE_G(HD, kDevQ8); } \
  else { FM_DECODE_G(HD, kDevF32); }
  if (p.head_dim == 64) {
    FM_DECODE_KV(64)
  } else if (p.head_dim == 128) {
    FM_DECODE_KV(128)
  } else {
    FM_DECODE_KV(256)
  }
#undef FM_DECODE_KV
#undef FM_DECODE_G
#undef FM_DECODE
  }
  if (splits == 1) return cudaGetLastError();
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const int64_t items = m * p.n_heads;
  if (items > 0x7fffffff) return cudaErrorInvalidValue;
  decode_combine_kernel<<<static_cast<unsigned>(items), kFoldThreads, 0, s>>>(
      p.n_heads, splits, p.head_dim, p.page_tokens, rows, ptrs.page_begin, part_o, part_lse, out);
  return cudaGetLastError();
}

cudaError_t rope_write_kv_rows(const DevAttention& p, const DevRope& r, const DecodeSlots* inl, const DevSlot* slots,
                               const int32_t* pos, int64_t m, float* q, float* k, const float* v, cudaStream_t s) {
  if (p.kv == kDevQ8 || r.n_rot < 2 || r.n_rot % 2 != 0 || r.n_rot > p.head_dim ||
      (inl ? m > kInlineRows : !slots || !pos))
    return cudaErrorInvalidValue;
  const int64_t total = m * (p.n_heads + 2 * p.n_kv_heads) * p.head_dim;
  if (total <= 0) return cudaSuccess;
  static const DecodeSlots none{};
  const DecodeSlots& sl = inl ? *inl : none;
  const DevSlot* sp = inl ? nullptr : slots;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
  if (p.kv == kDevF16) rope_write_kv_rows_kernel<kDevF16><<<blocks, 256, 0, s>>>(p, r, sl, sp, pos, m, q, k, v);
  else rope_write_kv_rows_kernel<kDevF32><<<blocks, 256, 0, s>>>(p, r, sl, sp, pos, m, q, k, v);
  return cudaGetLastError();
}

cudaError_t write_kv_rows(const DevAttention& p, const DecodeSlots* inl, const DevSlot* slots, int64_t m,
                          const float* k, const float* v, cudaStream_t s) {
  if (inl ? m > kInlineRows : !slots) return cudaErrorInvalidValue;
  const int64_t total = m * p.n_kv_heads * p.head_dim;
  if (total <= 0) return cudaSuccess;
  static const DecodeSlots none{};
  const DecodeSlots& sl = inl ? *inl : none;
  const DevSlot* sp = inl ? nullptr : slots;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
  if (p.kv == kDevF16) write_kv_rows_kernel<kDevF16><<<blocks, 256, 0, s>>>(p, sl, sp, m, k, v);
  else if (p.kv == kDevQ8) write_kv_rows_kernel<kDevQ8><<<blocks, 256, 0, s>>>(p, sl, sp, m, k, v);
  else write_kv_rows_kernel<kDevF32><<<blocks, 256, 0, s>>>(p, sl, sp, m, k, v);
  return cudaGetLastError();
}

}  // namespace flashmem::cuda

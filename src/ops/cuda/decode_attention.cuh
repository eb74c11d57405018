// flashmem/ops/cuda/decode_attention.cuh — the decode step of a batch on the GPU: every
// sequence's new K/V written in one launch, and every sequence's one query attending its own
// pages in one launch (Backend::write_kv_rows, Backend::attention_rows).
//
// Attention: a block takes one (sequence row, KV head) and a split of that row's pages; the
// query heads of the GQA group share each K and V read (the group's queries sit in shared
// memory; a lane scores one key slot against all of them, then accumulates a few output dims of
// all of them). The block's warps work through 32-slot chunks independently and are folded once
// at the end. Long contexts are split over blocks (flash-decoding: at least 128 slots and at most
// 256 splits a row) and the splits folded by their log-sum-exp; how a row is split depends on
// its own length only, so a row gets bit for bit the same result in any batch. Any page size,
// group size up to kMaxGroup, head_dim 64/128/256.
//
// Launchers only: included by the C++20 backend. Every pointer is device memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ops/cuda/attention.cuh"

namespace flashmem::cuda {

constexpr int kMaxGroup = 8;  // query heads per KV head

// The device twin of KvSlotRef (same layout).
struct DevSlot {
  void* k;
  void* v;
  int32_t slot;
};

// Whether decode_attention takes these parameters (every page's K and V must also start 16-byte
// aligned: the kernel reads V rows in pieces of up to 16 bytes).
bool decode_attention_supported(const DevAttention& p);
// How many splits the longest row (max_pages pages) is cut into. A row's splits depend on its own
// page count only, so its result does not depend on the rest of the batch.
int decode_attention_splits(const DevAttention& p, int max_pages);
// out row i (m rows of n_heads × head_dim) = attention of q row i at pos[i] over
// pages[page_begin[i] … page_begin[i + 1]); rows with no pages are left untouched. With
// splits > 1, part_o (m·n_heads·splits·head_dim floats) and part_lse (m·n_heads·splits) are
// scratch. pos, page_begin (m + 1 entries) and pages are device memory.
cudaError_t decode_attention(const DevAttention& p, const float* q, const int32_t* pos, int64_t m,
                             const int32_t* page_begin, const DevPage* pages, int max_pages, int splits,
                             float* out, float* part_o, float* part_lse, cudaStream_t s);
// Token i of k/v ([m × n_kv_heads × head_dim] f32) into slots[i] (skipped where k is null).
cudaError_t write_kv_rows(const DevAttention& p, const DevSlot* slots, int64_t m, const float* k,
                          const float* v, cudaStream_t s);

}  // namespace flashmem::cuda

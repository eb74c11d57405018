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
// group size up to kMaxGroup, head_dim 64/128/256. With f16 KV, head_dim 64 or 128 and pages of
// a multiple of 8 tokens, a chunk's products run on tensor cores (m16n8k16, the group's heads as
// the rows, Q and P as hi + lo f16 parts: within ~1e-6 of f32); FLASHMEM_CUDA_DECODE_MMA=0 turns
// that off, for comparisons.
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

// A small batch's row data travel in the launch's parameters, so that no kernel reads host
// memory (a round trip over PCIe, several µs) before its first key: DecodeRows when m ≤
// kInlineRows, DecodePages when the batch has ≤ kInlinePages pages, DecodeSlots for the K/V
// write of ≤ kInlineRows rows. Larger batches pass pointers (read in place).
constexpr int kInlineRows = 16;
constexpr int kInlinePages = 144;
struct DecodeRows {
  int32_t page_begin[kInlineRows + 1];
  int32_t pos[kInlineRows];
};
struct DecodePages {
  DevPage pages[kInlinePages];
};
struct DecodeSlots {
  DevSlot slots[kInlineRows];
  int32_t pos[kInlineRows];
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
// scratch. The rows' pos and page_begin (m + 1 entries) come from `rows` when it is given (m ≤
// kInlineRows), else from the pointers; the pages from `inline_pages` when given, else `pages`.
// Pointers are device-readable memory.
struct DecodeBatch {
  const DecodeRows* rows = nullptr;
  const int32_t* pos = nullptr;
  const int32_t* page_begin = nullptr;
  const DecodePages* inline_pages = nullptr;
  const DevPage* pages = nullptr;
};
cudaError_t decode_attention(const DevAttention& p, const float* q, int64_t m, const DecodeBatch& b, int max_pages,
                             int splits, float* out, float* part_o, float* part_lse, cudaStream_t s);
// The rotary embedding's parameters (RopeParams).
struct DevRope {
  int n_rot;
  float freq_base;
  float freq_scale;
  bool neox;
};

// rope_qk of q [m × n_heads × head_dim] and k [m × n_kv_heads × head_dim] at pos (device
// memory), in place, and token i of the roped k and of v into slots[i] (skipped where k is
// null), in one launch: the bits of rope_qk then write_kv_rows. f16 and f32 KV only
// (cudaErrorInvalidValue for q8, whose scale needs the whole roped vector).
// The slots and positions come from `inl` when given (m ≤ kInlineRows), else the pointers.
cudaError_t rope_write_kv_rows(const DevAttention& p, const DevRope& r, const DecodeSlots* inl, const DevSlot* slots,
                               const int32_t* pos, int64_t m, float* q, float* k, const float* v, cudaStream_t s);
// Token i of k/v ([m × n_kv_heads × head_dim] f32) into slots[i] (skipped where k is null); the
// slots from `inl` when given (m ≤ kInlineRows), else `slots`.
cudaError_t write_kv_rows(const DevAttention& p, const DecodeSlots* inl, const DevSlot* slots, int64_t m,
                          const float* k, const float* v, cudaStream_t s);

}  // namespace flashmem::cuda

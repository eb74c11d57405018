// flashmem/ops/cuda/indexer.cuh — Memory Indexer Level-1 logits on the GPU
// (Backend::index_scores; the CPU reference is ops/cpu/indexer.cpp). Launcher only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace flashmem::cuda {

// One warp per chunk: lanes split each head's dot product, heads are summed in order.
cudaError_t index_scores(int n_heads, int n_kv_heads, int head_dim, float bias, const float* q,
                         const float* w, const uint8_t* keys, const float* scales, int64_t n,
                         float* logits, cudaStream_t s);

}  // namespace flashmem::cuda

// flashmem/ops/cpu/indexer.h — Memory Indexer Level-1 logits on the CPU (Backend::index_scores).
#pragma once

#include <cstdint>

#include "core/thread_pool.h"
#include "ops/backend.h"

namespace flashmem::cpu {

// Chunks [c0, c1) of Backend::index_scores (fp32 accumulation, heads in order).
void index_scores(const IndexScoreParams& p, const float* q, const float* w, const uint8_t* keys,
                  const float* scales, int64_t c0, int64_t c1, float* logits);

}  // namespace flashmem::cpu

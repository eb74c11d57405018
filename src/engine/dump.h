// flashmem/engine/dump.h — runs the model with full attention on one document and records
// what the Memory Indexer is trained from (train/dump.h): target-layer hidden states at
// decision points, the chunks each decode step's attention hit, and every chunk's index keys.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "train/dump.h"

namespace flashmem {

struct DumpSettings {
  std::vector<int> target_layers;  // ascending
  std::vector<std::string> poolings{"post_rope_mean", "pre_rope_mean"};
  int chunk_tokens = 16;
  float top_p = 0.5f;     // per head: the chunks carrying this much of its attention are hit
  int tau = 64;           // steps a decision looks ahead
  int point_stride = 8;   // a decision point every this many decode steps
  int max_new_tokens = 64;
};

struct DumpInput {
  std::string name, source;
  std::vector<int32_t> prompt;
  std::vector<int32_t> forced;            // teacher-forced continuation (prose), or empty
  std::vector<std::string> stop_strings;  // generation ends there (tasks)
};

// Where a document's time went (the decode includes recording the labels).
struct DumpTiming {
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t prompt_tokens = 0, decode_steps = 0;
};

// Error(kInvalidArgument) for bad settings (layers out of range, chunk size not dividing the
// page), Error(kOutOfRange) for a prompt that does not fit. Adds to *timing when given.
train::DumpDoc dump_document(Engine& eng, const DumpInput& in, const DumpSettings& s, DumpTiming* timing = nullptr);

}  // namespace flashmem

// flashmem/models/synthetic.h — models of real shapes with generated weights (`--synthetic NAME`).
//
// Speed and memory depend on a model's shape, not on its weights: these build the GGUF image of a
// known architecture (llama-3.1-8b, qwen2.5-7b, llama-3.2-1b, and a tiny one for tests) in memory,
// with weights drawn from a seed in the type asked for, and everything downstream (backends,
// KV store, residency, scheduler) runs its real path. The vocabulary is byte-level (256 byte
// tokens, no merges) padded with unreachable tokens to the shape's size, so text round-trips and
// the output matrix has its real size; what such a model says is noise. Accuracy needs real
// weights; these are for benchmarks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/quant.h"
#include "io/gguf.h"

namespace flashmem {

struct SyntheticShape {
  std::string name;  // e.g. "llama-3.1-8b"
  std::string arch;  // "llama" or "qwen2"
  int n_layers, d_model, n_ff, n_heads, n_kv_heads, head_dim, n_vocab;
  int64_t n_ctx;
  float rope_base, rms_eps;
  bool tied_embeddings;
};

// The known shapes, by name.
const std::vector<SyntheticShape>& synthetic_shapes();
// "NAME" or "NAME:TYPE" (TYPE one of synthetic_weight_types(), default bf16).
struct SyntheticSpec {
  SyntheticShape shape;
  GgmlType weights = GgmlType::BF16;
};
// Error(kInvalidArgument) naming the known shapes or types.
SyntheticSpec parse_synthetic(const std::string& spec);
std::vector<std::string> synthetic_weight_types();
// Bytes of the weights (and of the whole image) a spec builds, before building it.
uint64_t synthetic_image_bytes(const SyntheticSpec& spec);

// The model's GGUF image, weights drawn from `seed` (the same bytes for a seed whatever
// `threads`): matrices uniform with variance 1/fan-in (quantised types: random codes under
// scales chosen to match), norms 1, biases small. Error(kOutOfMemory) when the host cannot hold
// the image.
GgufFile make_synthetic(const SyntheticSpec& spec, uint64_t seed, int threads);

}  // namespace flashmem

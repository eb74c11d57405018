// flashmem/models/model.h — the architecture-independent model interface.
//
// A model turns tokens into logits. It reads weights from a GGUF file it does not own, runs
// its graph on a Backend, and stores and reads KV only through the memory layer
// (KvStore::append / attend); it never manages memory tiers itself.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "memory/kv_store.h"
#include "ops/backend.h"

namespace flashmem {

class GgufFile;

struct ModelInfo {
  std::string architecture;  // general.architecture, e.g. "llama"
  std::string name;          // general.name
  int n_layers = 0;          // transformer blocks, e.g. 30
  int d_model = 0;           // residual width, e.g. 576
  int n_ff = 0;              // MLP hidden width, e.g. 1536
  int n_heads = 0;           // query heads, e.g. 9
  int n_kv_heads = 0;        // key/value heads (GQA), e.g. 3
  int head_dim = 0;          // per-head width, e.g. 64
  int n_vocab = 0;           // logits per position, e.g. 49152
  int64_t n_ctx_train = 0;   // context length the model was trained for, e.g. 8192
  float rms_eps = 1e-5f;     // RMSNorm epsilon
  RopeParams rope;           // rotary embedding parameters
  bool tied_embeddings = false;  // output projection reuses token_embd

  // K+V bytes per token over all layers at the given KV precision (q8: with its scales).
  size_t kv_bytes_per_token(KvType t) const {
    return 2 * static_cast<size_t>(n_layers) * n_kv_heads * kv_vector_bytes(t, head_dim);
  }
};

// Observes the input of chosen layers (the attention block's RMS-normalised hidden state, the
// vector a layer's q/k/v projections read) for the last token of every forward pass: what the
// Memory Indexer scores from (DESIGN.md §4) and what `flashmem dump` records. Host memory.
class ActivationTap {
 public:
  virtual ~ActivationTap() = default;
  // Layers to observe (ascending, each < n_layers).
  virtual std::span<const int> layers() const = 0;
  // x: d_model floats, the normalised input of layer `layer` for the token at `position`.
  virtual void on_layer_input(int layer, int32_t position, const float* x) = 0;
};

// One sequence's share of a batched forward pass (Model::forward_batch): its new tokens, at
// positions kv->n_tokens() … + tokens.size() − 1, the store that holds its KV, where the
// logits of its last token go (n_vocab floats; nullptr: not wanted), and the tap that observes
// its last token's layer inputs (nullptr: none).
struct SequenceInput {
  std::span<const int32_t> tokens;
  KvStore* kv = nullptr;
  float* logits_last = nullptr;
  ActivationTap* tap = nullptr;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelInfo& info() const = 0;

  // Runs tokens at positions kv.n_tokens() … + n − 1, appending their KV to the cache.
  // Writes the logits of the last token into logits_last (n_vocab floats); when all_logits is
  // given, writes every position's logits there (n × n_vocab).
  virtual void forward(std::span<const int32_t> tokens, KvStore& kv, float* logits_last,
                       float* all_logits = nullptr) = 0;

  // Runs several sequences in one pass: their tokens meet every weight matrix together (the
  // weights are read once for the batch), and each attends only to its own KV. Sequences must be
  // distinct stores of this model's shape. On the CPU, a decode batch (one token per sequence,
  // at most cpu::kDecodeMaxRows = 16 sequences) gives every sequence the logits forward() gives it
  // alone, bit for bit: each row of a matrix product is computed the same way whatever the
  // batch. Each sequence's tap sees its own last token (set_tap's does not apply here).
  // Error(kInvalidArgument) for an empty sequence or a shared or missing store.
  virtual void forward_batch(std::span<const SequenceInput> seqs) = 0;

  // Observes layer inputs in forward() from now on (nullptr: stop). The tap must outlive its use.
  void set_tap(ActivationTap* tap) { tap_ = tap; }

 protected:
  ActivationTap* tap_ = nullptr;
};

// Builds the model for the file's architecture on `backend`. The file and backend must outlive
// the model. Throws Error(kUnsupported) for unknown architectures and Error(kFormat) for
// missing or mis-shaped tensors and hyper-parameters.
std::unique_ptr<Model> load_model(const GgufFile& file, Backend& backend);
// The file's hyper-parameters, checked, without touching any weight (Error as load_model).
ModelInfo read_model_info(const GgufFile& file);
// Architectures load_model accepts.
std::vector<std::string> supported_architectures();

}  // namespace flashmem

// flashmem/models/llama.h — the Llama family (GQA decoders: SmolLM2, Llama 2/3, Mistral-style,
// and Qwen2/2.5 with its Q/K/V biases and NeoX RoPE).
#pragma once

#include <memory>

#include "models/model.h"

namespace flashmem {

// Reads hyper-parameters for `arch` (the GGUF key prefix) with every value range-checked.
ModelInfo llama_read_info(const GgufFile& file, const std::string& arch);
std::unique_ptr<Model> llama_load(const GgufFile& file, Backend& backend);

}  // namespace flashmem

// flashmem/engine/engine.h — a loaded model with its tokenizer, and the generation loop.
//
//   Engine eng = Engine::load({.model_path = "smollm2.gguf"});
//   auto prompt = eng.tokenizer().encode(eng.chat().render({{"user", "Hi"}}, true), true, true);
//   GenerateResult r = eng.generate(prompt, opts, [](std::string_view s) { fputs(...); });
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"
#include "io/chat_template.h"
#include "io/gguf.h"
#include "io/tokenizer.h"
#include "memory/kv_cache.h"
#include "models/model.h"
#include "ops/cpu/cpu_backend.h"

namespace flashmem {

struct EngineOptions {
  std::string model_path;
  int n_threads = 0;             // 0: ThreadPool::default_threads()
  int64_t n_ctx = 0;             // 0: the model's training context
  KvType kv_type = KvType::kF16;
  int page_tokens = 64;
};

struct GenerateOptions {
  int max_new_tokens = 256;
  SamplerParams sampling;
  std::vector<std::string> stop_strings;  // generation ends before the first occurrence
  bool stop_at_eos = true;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (including a final EOS, if any)
  std::string text;             // decoded text, cut before a stop string
  std::string stop_reason;      // "eos", "stop_string", "length", "context"
  int64_t n_prompt = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;    // time of the decode loop (sampling + decode_steps forwards)
  int64_t decode_steps = 0;     // single-token forward passes run after prefill
  size_t kv_bytes_in_use = 0;   // KV pages holding tokens at the end
  size_t kv_bytes_reserved = 0; // the KV arena
  size_t kv_bytes_per_token = 0;
};

class Engine {
 public:
  // Loads and checks everything; throws flashmem::Error on any problem.
  static std::unique_ptr<Engine> load(const EngineOptions& opts);

  const ModelInfo& info() const { return model_->info(); }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  // The chat template; throws Error(kUnsupported) if the model has none flashmem knows.
  const ChatTemplate& chat() const;
  const GgufFile& file() const { return file_; }
  int64_t n_ctx() const { return n_ctx_; }
  KvType kv_type() const { return opts_.kv_type; }
  Backend& backend() { return backend_; }
  Model& model() { return *model_; }

  // A fresh KV cache sized for this engine's context.
  PagedKvCache new_cache() const;

  // Generates after `prompt`, streaming text pieces (complete UTF-8, with stop strings held
  // back until they are ruled out) to on_text. Throws Error(kOutOfRange) when the prompt does
  // not fit the context.
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                          const std::function<void(std::string_view)>& on_text = {});

 private:
  Engine(const EngineOptions& opts, GgufFile file);

  EngineOptions opts_;
  GgufFile file_;
  CpuBackend backend_;
  std::unique_ptr<Model> model_;
  Tokenizer tokenizer_;
  std::optional<ChatTemplate> chat_;
  std::string chat_error_;
  int64_t n_ctx_ = 0;
};

}  // namespace flashmem

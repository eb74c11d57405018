// flashmem/eval/truncation.h — fitting a long-context prompt to a token limit by cutting the
// middle of its context, as the LongBench evaluations do.
//
// Only the context (document, chat history) is cut; the instructions and question around it are
// kept whole. The cut is made in the model's own tokens: with k context tokens allowed, the
// first k/2 and the last k - k/2 tokens of the context are kept (cut at token boundaries,
// snapped to UTF-8 character boundaries) and joined directly. k is the largest count for which
// the re-tokenised full prompt fits, so the result is exactly at or under the limit.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace flashmem {
class Tokenizer;
class ChatTemplate;
}  // namespace flashmem

namespace flashmem::eval {

// Builds the full prompt text (chat template included, if any) around a context.
using PromptBuilder = std::function<std::string(const std::string& context)>;

struct FittedContext {
  std::string context;            // the (possibly cut) context
  std::string prompt;             // build(context)
  int64_t prompt_tokens = 0;      // tokens of `prompt` (Tokenizer::encode with defaults)
  int64_t context_tokens = 0;     // tokens of the original context on its own
  int64_t kept_context_tokens = 0;  // context tokens kept (== context_tokens when not cut)
  bool truncated = false;
};

// Fits build(context) into `max_prompt_tokens` tokens by cutting the middle of `context`.
// No-op (truncated = false) when the full prompt already fits. Error(kOutOfRange) when even an
// empty context does not fit; Error(kInvalidArgument) for max_prompt_tokens <= 0.
FittedContext truncate_context_middle(const Tokenizer& tok, const std::string& context,
                                      const PromptBuilder& build, int64_t max_prompt_tokens);

// `user` wrapped as one user turn with the assistant turn opened; `user` itself when `chat` is
// null. Shared by the data-set prompt builders.
std::string render_user_prompt(const ChatTemplate* chat, const std::string& user);

}  // namespace flashmem::eval

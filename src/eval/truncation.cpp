// flashmem/eval/truncation.cpp — middle truncation of a prompt's context in model tokens.
#include "eval/truncation.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "io/chat_template.h"
#include "io/tokenizer.h"

namespace flashmem::eval {
namespace {

bool is_utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0u) == 0x80u; }

}  // namespace

std::string render_user_prompt(const ChatTemplate* chat, const std::string& user) {
  return chat ? chat->render({{"user", user}}, true) : user;
}

FittedContext truncate_context_middle(const Tokenizer& tok, const std::string& context,
                                      const PromptBuilder& build, int64_t max_prompt_tokens) {
  FM_CHECK(max_prompt_tokens > 0, ErrorCode::kInvalidArgument,
           "middle truncation: the token limit must be positive, got ", max_prompt_tokens);
  auto count = [&](const std::string& prompt) {
    return static_cast<int64_t>(tok.encode(prompt).size());
  };
  FittedContext out;
  // The context alone, as plain text: its token pieces concatenate back to its bytes.
  const std::vector<TokenId> ids = tok.encode(context, false, false);
  const int64_t n_ctx = static_cast<int64_t>(ids.size());
  out.context_tokens = n_ctx;

  std::string prompt = build(context);
  int64_t n = count(prompt);
  if (n <= max_prompt_tokens) {
    out.context = context;
    out.prompt = std::move(prompt);
    out.prompt_tokens = n;
    out.kept_context_tokens = n_ctx;
    return out;
  }

  const std::string bare = build("");
  const int64_t overhead = count(bare);
  FM_CHECK(overhead <= max_prompt_tokens, ErrorCode::kOutOfRange,
           "middle truncation: the prompt without its context already needs ", overhead,
           " tokens, more than the limit of ", max_prompt_tokens);

  std::vector<size_t> offset(ids.size() + 1, 0);  // byte offset of token i in `context`
  for (size_t i = 0; i < ids.size(); ++i) offset[i + 1] = offset[i] + tok.token_bytes(ids[i]).size();
  FM_CHECK(offset.back() == context.size(), ErrorCode::kUnsupported,
           "middle truncation: the tokenizer does not reproduce the context bytes (",
           offset.back(), " vs ", context.size(), ")");

  // First k/2 and last k - k/2 tokens of the context, cut on UTF-8 character boundaries.
  auto cut = [&](int64_t k) {
    size_t head_end = offset[static_cast<size_t>(k / 2)];
    size_t tail_begin = offset[static_cast<size_t>(n_ctx - (k - k / 2))];
    while (head_end > 0 && is_utf8_continuation(context[head_end])) --head_end;
    while (tail_begin < context.size() && is_utf8_continuation(context[tail_begin])) ++tail_begin;
    return context.substr(0, head_end) + context.substr(tail_begin);
  };

  // Start from the budget left by the fixed text; tokens may merge or split at the seam and
  // the boundaries, so step down by the overshoot until the re-tokenised prompt fits.
  int64_t k = std::min(n_ctx - 1, max_prompt_tokens - overhead);
  std::string cut_context;
  for (;;) {
    if (k <= 0) {
      k = 0;
      cut_context.clear();
      prompt = bare;
      n = overhead;
      break;
    }
    cut_context = cut(k);
    prompt = build(cut_context);
    n = count(prompt);
    if (n <= max_prompt_tokens) break;
    k -= std::max<int64_t>(1, n - max_prompt_tokens);
  }
  out.context = std::move(cut_context);
  out.prompt = std::move(prompt);
  out.prompt_tokens = n;
  out.kept_context_tokens = k;
  out.truncated = true;
  return out;
}

}  // namespace flashmem::eval

// flashmem/server/openai.h — the OpenAI-compatible API's bodies: parsing what a client sends and
// writing what it gets back, with no HTTP and no model (so they are unit-tested and fuzzed alone).
//
//   ApiRequest q = parse_api_request(body, ApiKind::kChat);   // Error(kInvalidArgument) naming the field
//   std::string out = completion_body(q, "id-1", created, "SmolLM2", text, "stop", usage);
//
// What is accepted: POST /v1/chat/completions {messages, ...} and /v1/completions {prompt, ...}
// with max_tokens (or max_completion_tokens), temperature, top_p, top_k, seed, stop (a string or
// up to 4), n (only 1), stream, stream_options, and flashmem's own policy and kv_budget. Unknown
// fields are ignored, as OpenAI's API does; a known field of the wrong type or out of range is an
// error that names it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"
#include "io/chat_template.h"

namespace flashmem::server {

enum class ApiKind { kChat, kCompletion };

struct ApiRequest {
  ApiKind kind = ApiKind::kChat;
  std::string model;                  // as sent (informational)
  std::vector<ChatMessage> messages;  // kChat
  std::string prompt;                 // kCompletion
  std::optional<int> max_tokens;      // absent: the server's default
  SamplerParams sampling;
  bool seeded = false;                // a seed was given
  std::vector<std::string> stop;
  bool stream = false;
  std::optional<std::string> policy;     // flashmem: residency policy for this request
  std::optional<std::string> kv_budget;  // flashmem: e.g. "15%"
};

// Bodies larger than this are refused before parsing (HTTP 413).
constexpr size_t kMaxBodyBytes = size_t{16} << 20;

// Error(kInvalidArgument): not JSON, not an object, or a field that is wrong (the message says
// which, as OpenAI's "param" does).
ApiRequest parse_api_request(std::string_view body, ApiKind kind);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// "stop" (end of turn, EOS or a stop string) or "length" (max_tokens or the context).
std::string finish_reason(const std::string& stop_reason);

// A whole (non-streamed) response.
std::string completion_body(ApiKind kind, const std::string& id, int64_t created, const std::string& model,
                            const std::string& text, const std::string& finish, const Usage& usage);
// One server-sent event of a stream ("data: {...}\n\n"): a text delta, or (finish non-empty) the
// last chunk, with the finish reason and the usage; `first` opens a chat stream (role assistant).
std::string stream_event(ApiKind kind, const std::string& id, int64_t created, const std::string& model,
                         const std::string& delta, const std::string& finish = {},
                         const std::optional<Usage>& usage = std::nullopt, bool first = false);
// An OpenAI-shaped error body: {"error": {"message", "type", "param", "code"}}.
std::string error_body(const std::string& message, const std::string& type, const std::string& param = {},
                       const std::string& code = {});

}  // namespace flashmem::server

#include "server/openai.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace flashmem::server {

using nlohmann::json;

namespace {

// The field's value, or nullptr when absent or null (OpenAI treats null as "not given").
const json* field(const json& o, const char* name) {
  const auto it = o.find(name);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

double number_in(const json& o, const char* name, double lo, double hi, double dflt) {
  const json* v = field(o, name);
  if (!v) return dflt;
  FM_CHECK(v->is_number(), ErrorCode::kInvalidArgument, "'", name, "' must be a number");
  const double x = v->get<double>();
  FM_CHECK(std::isfinite(x) && x >= lo && x <= hi, ErrorCode::kInvalidArgument, "'", name, "' must be in [", lo, ", ",
           hi, "], got ", x);
  return x;
}

std::optional<int64_t> integer_in(const json& o, const char* name, int64_t lo, int64_t hi) {
  const json* v = field(o, name);
  if (!v) return std::nullopt;
  FM_CHECK(v->is_number_integer(), ErrorCode::kInvalidArgument, "'", name, "' must be an integer");
  // Unsigned values above int64's range are out of range too.
  FM_CHECK(!v->is_number_unsigned() || v->get<uint64_t>() <= static_cast<uint64_t>(hi), ErrorCode::kInvalidArgument,
           "'", name, "' must be in [", lo, ", ", hi, "]");
  const int64_t x = v->get<int64_t>();
  FM_CHECK(x >= lo && x <= hi, ErrorCode::kInvalidArgument, "'", name, "' must be in [", lo, ", ", hi, "], got ", x);
  return x;
}

std::optional<std::string> string_of(const json& o, const char* name) {
  const json* v = field(o, name);
  if (!v) return std::nullopt;
  FM_CHECK(v->is_string(), ErrorCode::kInvalidArgument, "'", name, "' must be a string");
  return v->get<std::string>();
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::string content_of(const json& m, size_t i) {
  const json* c = field(m, "content");
  FM_CHECK(c != nullptr, ErrorCode::kInvalidArgument, "'messages[", i, "].content' is missing");
  if (c->is_string()) return c->get<std::string>();
  FM_CHECK(c->is_array(), ErrorCode::kInvalidArgument, "'messages[", i, "].content' must be a string or an array of text parts");
  std::string out;
  for (size_t k = 0; k < c->size(); ++k) {
    const json& part = (*c)[k];
    FM_CHECK(part.is_object() && part.value("type", json()).is_string() && part.at("type") == "text" &&
                 part.contains("text") && part.at("text").is_string(),
             ErrorCode::kInvalidArgument, "'messages[", i, "].content[", k,
             "]' must be {\"type\": \"text\", \"text\": ...} (this model reads text only)");
    out += part.at("text").get<std::string>();
  }
  return out;
}

}  // namespace

ApiRequest parse_api_request(std::string_view body, ApiKind kind) {
  FM_CHECK(body.size() <= kMaxBodyBytes, ErrorCode::kInvalidArgument, "the body has ", body.size(),
           " bytes, more than the ", kMaxBodyBytes, " accepted");
  const json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  FM_CHECK(!j.is_discarded(), ErrorCode::kInvalidArgument, "the body is not valid JSON");
  FM_CHECK(j.is_object(), ErrorCode::kInvalidArgument, "the body must be a JSON object");
  ApiRequest q;
  q.kind = kind;
  q.model = string_of(j, "model").value_or("");
  if (kind == ApiKind::kChat) {
    const json* ms = field(j, "messages");
    FM_CHECK(ms && ms->is_array() && !ms->empty(), ErrorCode::kInvalidArgument, "'messages' must be a non-empty array");
    for (size_t i = 0; i < ms->size(); ++i) {
      const json& m = (*ms)[i];
      FM_CHECK(m.is_object(), ErrorCode::kInvalidArgument, "'messages[", i, "]' must be an object");
      const json* role = field(m, "role");
      FM_CHECK(role && role->is_string(), ErrorCode::kInvalidArgument, "'messages[", i, "].role' must be a string");
      std::string r = role->get<std::string>();
      if (r == "developer") r = "system";  // OpenAI's newer name for the system role
      FM_CHECK(r == "system" || r == "user" || r == "assistant", ErrorCode::kInvalidArgument, "'messages[", i,
               "].role' must be system, user or assistant, got '", r, "'");
      q.messages.push_back({r, content_of(m, i)});
    }
  } else {
    const json* p = field(j, "prompt");
    FM_CHECK(p != nullptr, ErrorCode::kInvalidArgument, "'prompt' is missing");
    if (p->is_array()) {
      FM_CHECK(p->size() == 1 && (*p)[0].is_string(), ErrorCode::kInvalidArgument,
               "'prompt' must be a string (or an array of exactly one string: n = 1)");
      q.prompt = (*p)[0].get<std::string>();
    } else {
      FM_CHECK(p->is_string(), ErrorCode::kInvalidArgument, "'prompt' must be a string");
      q.prompt = p->get<std::string>();
    }
  }
  constexpr int64_t kMaxTokens = int64_t{1} << 30;
  if (auto n = integer_in(j, "max_completion_tokens", 1, kMaxTokens)) q.max_tokens = static_cast<int>(*n);
  if (auto n = integer_in(j, "max_tokens", 1, kMaxTokens)) q.max_tokens = static_cast<int>(*n);
  q.sampling.temperature = static_cast<float>(number_in(j, "temperature", 0.0, 2.0, 1.0));
  q.sampling.top_p = static_cast<float>(number_in(j, "top_p", 0.0, 1.0, 1.0));
  FM_CHECK(q.sampling.top_p > 0.0f, ErrorCode::kInvalidArgument, "'top_p' must be in (0, 1]");
  q.sampling.top_k = static_cast<int>(integer_in(j, "top_k", 0, 1 << 30).value_or(0));
  if (auto s = integer_in(j, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max())) {
    q.sampling.seed = static_cast<uint64_t>(*s);
    q.seeded = true;
  }
  if (auto n = integer_in(j, "n", 1, 1 << 30)) FM_CHECK(*n == 1, ErrorCode::kInvalidArgument, "'n' must be 1 (one choice per request)");
  if (const json* s = field(j, "stop")) {
    if (s->is_string()) {
      q.stop.push_back(s->get<std::string>());
    } else {
      FM_CHECK(s->is_array() && s->size() <= 4, ErrorCode::kInvalidArgument, "'stop' must be a string or an array of up to 4 strings");
      for (const json& x : *s) {
        FM_CHECK(x.is_string(), ErrorCode::kInvalidArgument, "'stop' must hold strings only");
        q.stop.push_back(x.get<std::string>());
      }
    }
    for (const auto& x : q.stop) FM_CHECK(!x.empty(), ErrorCode::kInvalidArgument, "'stop' strings must not be empty");
  }
  if (const json* s = field(j, "stream")) {
    FM_CHECK(s->is_boolean(), ErrorCode::kInvalidArgument, "'stream' must be true or false");
    q.stream = s->get<bool>();
  }
  if (const json* s = field(j, "stream_options"))
    FM_CHECK(s->is_object(), ErrorCode::kInvalidArgument, "'stream_options' must be an object");
  q.policy = string_of(j, "policy");
  q.kv_budget = string_of(j, "kv_budget");
  return q;
}

std::string finish_reason(const std::string& stop_reason) {
  return stop_reason == "length" || stop_reason == "context" ? "length" : "stop";
}

namespace {

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

}  // namespace

std::string completion_body(ApiKind kind, const std::string& id, int64_t created, const std::string& model,
                            const std::string& text, const std::string& finish, const Usage& usage) {
  json choice = {{"index", 0}, {"finish_reason", finish}, {"logprobs", nullptr}};
  if (kind == ApiKind::kChat) choice["message"] = {{"role", "assistant"}, {"content", text}};
  else choice["text"] = text;
  const json out = {{"id", id},
                    {"object", kind == ApiKind::kChat ? "chat.completion" : "text_completion"},
                    {"created", created},
                    {"model", model},
                    {"choices", json::array({choice})},
                    {"usage", usage_json(usage)}};
  // Invalid UTF-8 (a model can emit a broken byte sequence) is replaced, never thrown on.
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string stream_event(ApiKind kind, const std::string& id, int64_t created, const std::string& model,
                         const std::string& delta, const std::string& finish, const std::optional<Usage>& usage,
                         bool first) {
  json choice = {{"index", 0}, {"finish_reason", finish.empty() ? json() : json(finish)}, {"logprobs", nullptr}};
  if (kind == ApiKind::kChat) {
    choice["delta"] = delta.empty() && !finish.empty() ? json::object() : json{{"content", delta}};
    if (first) choice["delta"]["role"] = "assistant";
  } else {
    choice["text"] = delta;
  }
  json out = {{"id", id},
              {"object", kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", model},
              {"choices", json::array({choice})}};
  if (usage) out["usage"] = usage_json(*usage);
  return "data: " + out.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

std::string error_body(const std::string& message, const std::string& type, const std::string& param,
                       const std::string& code) {
  const json out = {{"error",
                     {{"message", message},
                      {"type", type},
                      {"param", param.empty() ? json() : json(param)},
                      {"code", code.empty() ? json() : json(code)}}}};
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace flashmem::server

// The OpenAI-compatible bodies (server/openai.h): what is accepted, what is refused with the field
// named, and what the responses look like to a client's JSON parser.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "server/openai.h"

namespace flashmem::server {
namespace {

using nlohmann::json;

std::string refusal(const std::string& body, ApiKind kind = ApiKind::kChat) {
  try {
    parse_api_request(body, kind);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << body;
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << body;
  return {};
}

TEST(OpenAi, ParsesAChatRequestWithEveryField) {
  const ApiRequest q = parse_api_request(R"({
      "model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                                 {"role": "developer", "content": "x"}],
      "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "seed": -3, "stop": ["\n\n", "END"],
      "n": 1, "stream": true, "stream_options": {"include_usage": true}, "policy": "lsa", "kv_budget": "15%",
      "logit_bias": {"1": 2}, "user": "u"})",
                                         ApiKind::kChat);
  ASSERT_EQ(q.messages.size(), 3u);
  EXPECT_EQ(q.messages[1].role, "user");
  EXPECT_EQ(q.messages[1].content, "Hi there");
  EXPECT_EQ(q.messages[2].role, "system");  // developer is OpenAI's newer name for it
  EXPECT_EQ(q.max_tokens, 7);
  EXPECT_FLOAT_EQ(q.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(q.sampling.top_p, 0.9f);
  EXPECT_EQ(q.sampling.top_k, 40);
  EXPECT_TRUE(q.seeded);
  EXPECT_EQ(q.sampling.seed, static_cast<uint64_t>(-3));
  EXPECT_EQ(q.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_TRUE(q.stream);
  EXPECT_EQ(q.policy, "lsa");
  EXPECT_EQ(q.kv_budget, "15%");
}

TEST(OpenAi, DefaultsAreOpenAisAndNullMeansAbsent) {
  const ApiRequest q = parse_api_request(R"({"prompt": "x", "max_tokens": null, "temperature": null, "stop": null})",
                                         ApiKind::kCompletion);
  EXPECT_EQ(q.prompt, "x");
  EXPECT_FALSE(q.max_tokens.has_value());
  EXPECT_FLOAT_EQ(q.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(q.sampling.top_p, 1.0f);
  EXPECT_FALSE(q.seeded);
  EXPECT_TRUE(q.stop.empty());
  EXPECT_FALSE(q.stream);
  EXPECT_EQ(parse_api_request(R"({"prompt": ["only one"]})", ApiKind::kCompletion).prompt, "only one");
  EXPECT_EQ(parse_api_request(R"({"prompt": "x", "max_completion_tokens": 9})", ApiKind::kCompletion).max_tokens, 9);
  EXPECT_EQ(parse_api_request(R"({"prompt": "x", "stop": "."})", ApiKind::kCompletion).stop,
            std::vector<std::string>{"."});
}

TEST(OpenAi, RefusesBadBodiesNamingTheField) {
  EXPECT_NE(refusal("").find("not valid JSON"), std::string::npos);
  EXPECT_NE(refusal("{\"messages\": [").find("not valid JSON"), std::string::npos);
  EXPECT_NE(refusal("[1, 2]").find("JSON object"), std::string::npos);
  EXPECT_NE(refusal("{}").find("'messages'"), std::string::npos);
  EXPECT_NE(refusal(R"({"messages": []})").find("'messages'"), std::string::npos);
  EXPECT_NE(refusal(R"({"messages": [{"role": "user"}]})").find("content"), std::string::npos);
  EXPECT_NE(refusal(R"({"messages": [{"role": "tool", "content": "x"}]})").find("role"), std::string::npos);
  EXPECT_NE(refusal(R"({"messages": [{"role": 3, "content": "x"}]})").find("role"), std::string::npos);
  EXPECT_NE(refusal(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})").find("text"),
            std::string::npos);
  const std::string ok = R"("messages": [{"role": "user", "content": "x"}])";
  auto with = [&](const std::string& extra) { return "{" + ok + ", " + extra + "}"; };
  EXPECT_NE(refusal(with(R"("max_tokens": 0)")).find("'max_tokens'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("max_tokens": 1.5)")).find("'max_tokens'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("max_tokens": "9")")).find("'max_tokens'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("max_tokens": 18446744073709551615)")).find("'max_tokens'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("temperature": 3)")).find("'temperature'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("temperature": -0.1)")).find("'temperature'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("top_p": 0)")).find("'top_p'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("top_k": -1)")).find("'top_k'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("n": 2)")).find("'n'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("stop": ["a", "b", "c", "d", "e"])")).find("'stop'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("stop": [""])")).find("'stop'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("stop": [1])")).find("'stop'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("stream": "yes")")).find("'stream'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("policy": 1)")).find("'policy'"), std::string::npos);
  EXPECT_NE(refusal(with(R"("seed": 1e3)")).find("'seed'"), std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": ["a", "b"]})", ApiKind::kCompletion).find("'prompt'"), std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": 5})", ApiKind::kCompletion).find("'prompt'"), std::string::npos);
  EXPECT_NE(refusal(std::string(kMaxBodyBytes + 1, ' ')).find("bytes"), std::string::npos);
  // Deep nesting is an ordinary parse, not a stack overflow.
  EXPECT_NO_THROW(parse_api_request("{\"prompt\": \"x\", \"junk\": " + std::string(20000, '[') +
                                        std::string(20000, ']') + "}",
                                    ApiKind::kCompletion));
}

TEST(OpenAi, ResponsesAreWhatClientsParse) {
  const json c = json::parse(completion_body(ApiKind::kChat, "chatcmpl-1", 5, "m", "Hello", "stop", {3, 2}));
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "Hello");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c["usage"]["total_tokens"], 5);
  const json t = json::parse(completion_body(ApiKind::kCompletion, "cmpl-1", 5, "m", "ab\xff", "length", {1, 1}));
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "ab\xEF\xBF\xBD");  // a broken byte becomes U+FFFD
  const std::string ev = stream_event(ApiKind::kChat, "id", 1, "m", "He", {}, std::nullopt, true);
  ASSERT_EQ(ev.rfind("data: ", 0), 0u);
  ASSERT_EQ(ev.substr(ev.size() - 2), "\n\n");
  const json e = json::parse(ev.substr(6));
  EXPECT_EQ(e["object"], "chat.completion.chunk");
  EXPECT_EQ(e["choices"][0]["delta"]["content"], "He");
  EXPECT_EQ(e["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(e["choices"][0]["finish_reason"].is_null());
  const json last = json::parse(stream_event(ApiKind::kChat, "id", 1, "m", "", "length", Usage{4, 6}).substr(6));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["usage"]["completion_tokens"], 6);
  EXPECT_EQ(finish_reason("eos"), "stop");
  EXPECT_EQ(finish_reason("stop_string"), "stop");
  EXPECT_EQ(finish_reason("context"), "length");
  const json err = json::parse(error_body("bad", "invalid_request_error", "n", "c"));
  EXPECT_EQ(err["error"]["message"], "bad");
  EXPECT_EQ(err["error"]["param"], "n");
}

}  // namespace
}  // namespace flashmem::server

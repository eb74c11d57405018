// fuzz/fuzz_openai.cpp — libFuzzer target for the server's request bodies (server/openai.h):
// any bytes, as a chat and as a completions body; what is accepted is then written back as a
// response and as a stream event, which must be valid JSON whatever bytes the text held.
//
// Build as fuzz_gguf.cpp says (target fuzz_openai), then for a short run:
//   build-fuzz/fuzz/fuzz_openai -max_total_time=60 -dict=fuzz/json.dict /tmp/openai-corpus fuzz/corpus-openai
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "fuzz_common.h"
#include "server/openai.h"

#if defined(FLASHMEM_FUZZ_NO_MAIN)
#define FLASHMEM_FUZZ_ENTRY fuzz_openai_one_input
#else
#define FLASHMEM_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

extern "C" int FLASHMEM_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  using namespace flashmem::server;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (const ApiKind kind : {ApiKind::kChat, ApiKind::kCompletion}) {
    ApiRequest q;
    try {
      q = parse_api_request(body, kind);
    } catch (const flashmem::Error& e) {
      flashmem::fuzz::check_internal(e);
      continue;
    }
    if (kind == ApiKind::kChat && q.messages.empty()) flashmem::fuzz::fail("a chat request without messages");
    if (q.max_tokens && *q.max_tokens < 1) flashmem::fuzz::fail("max_tokens below 1 accepted");
    if (!(q.sampling.temperature >= 0.0f && q.sampling.temperature <= 2.0f)) flashmem::fuzz::fail("temperature out of range");
    if (!(q.sampling.top_p > 0.0f && q.sampling.top_p <= 1.0f)) flashmem::fuzz::fail("top_p out of range");
    if (q.stop.size() > 4) flashmem::fuzz::fail("more than 4 stop strings");
    const std::string text = kind == ApiKind::kChat ? q.messages.back().content : q.prompt;
    const std::string out = completion_body(kind, "id", 0, q.model, text, "stop", Usage{1, 2});
    const std::string ev = stream_event(kind, "id", 0, q.model, text, "length", Usage{1, 2}, true);
    if (!nlohmann::json::accept(out) || ev.size() < 8 || !nlohmann::json::accept(ev.substr(6, ev.size() - 8)))
      flashmem::fuzz::fail("a response that is not valid JSON");
  }
  return 0;
}

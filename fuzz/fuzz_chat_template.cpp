// fuzz/fuzz_chat_template.cpp — libFuzzer target for chat templates: a GGUF's
// tokenizer.chat_template string (any bytes up to the first NUL) is detected or refused, and
// messages built from the rest are rendered; a rendering holds every message's content.
//
// Build as fuzz_gguf.cpp says (target fuzz_chat_template), then for a short run:
//   build-fuzz/fuzz/fuzz_chat_template -max_total_time=60 /tmp/chat-corpus fuzz/corpus-chat-template
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "io/chat_template.h"

#if defined(FLASHMEM_FUZZ_NO_MAIN)
#define FLASHMEM_FUZZ_ENTRY fuzz_chat_template_one_input
#else
#define FLASHMEM_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

extern "C" int FLASHMEM_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  const size_t nul = all.find('\0');
  const std::string jinja = all.substr(0, nul);
  flashmem::ChatTemplate t;
  try {
    t = flashmem::ChatTemplate::from_template_string(jinja);
  } catch (const flashmem::Error& e) {
    flashmem::fuzz::check_internal(e);
    return 0;
  }
  // Messages: the rest, split at NULs, roles in turn.
  std::vector<flashmem::ChatMessage> msgs;
  const char* roles[3] = {"system", "user", "assistant"};
  std::string rest = nul == std::string::npos ? std::string() : all.substr(nul + 1);
  for (size_t at = 0, i = 0; at <= rest.size() && msgs.size() < 16; ++i) {
    const size_t end = std::min(rest.find('\0', at), rest.size());
    msgs.push_back({roles[(i + (i > 0)) % 3], rest.substr(at, end - at)});
    at = end + 1;
  }
  for (const bool open : {true, false}) {
    std::string out;
    try {
      out = t.render(msgs, open);
    } catch (const flashmem::Error& e) {
      flashmem::fuzz::check_internal(e);
      continue;
    }
    for (const auto& m : msgs)
      if (out.find(m.content) == std::string::npos) flashmem::fuzz::fail("a message's content is missing from the rendering");
  }
  return 0;
}

// flashmem/io/chat_template.cpp — recognises chat-template families and renders them natively.
//
// We do not evaluate Jinja: a template is classified by the markers it contains, and the one
// piece of data a ChatML template may carry — a default system prompt it inserts when the
// conversation has none (SmolLM2, Qwen2.5, ...) — is parsed out of its text, so no model's
// prompt is hard-coded here.
#include "io/chat_template.h"

#include <optional>
#include <string_view>

#include "core/error.h"
#include "io/gguf.h"

namespace flashmem {
namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";
constexpr const char* kSupported = "ChatML (<|im_start|>role\\n...<|im_end|>)";

// Undoes the escapes of a Jinja string literal and rejects text that is not a plain literal
// (an unescaped quote or brace means the content is computed, e.g. messages[0]['content']).
std::optional<std::string> unescape_literal(std::string_view raw) {
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    const char c = raw[i];
    if (c == '\\') {
      if (i + 1 == raw.size()) return std::nullopt;
      const char e = raw[++i];
      switch (e) {
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case '\\':
        case '\'':
        case '"':
          out.push_back(e);
          break;
        default:
          out.push_back('\\');
          out.push_back(e);
          break;
      }
    } else if (c == '\'' || c == '"' || c == '{' || c == '}') {
      return std::nullopt;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Finds a literal "<|im_start|>system\n<text><|im_end|>" block in the template. The newline
// may be a real one (inside a multi-line string literal, as in SmolLM2's template) or the
// two-character escape "\n" (as in Qwen2.5's).
std::string extract_default_system(std::string_view t) {
  const std::string open = std::string(kImStart) + "system";
  for (size_t pos = t.find(open); pos != std::string_view::npos; pos = t.find(open, pos + 1)) {
    size_t p = pos + open.size();
    if (t.substr(p, 1) == "\n") {
      p += 1;
    } else if (t.substr(p, 2) == "\\n") {
      p += 2;
    } else {
      continue;
    }
    const size_t end = t.find(kImEnd, p);
    if (end == std::string_view::npos) break;
    if (auto text = unescape_literal(t.substr(p, end - p))) return *text;
  }
  return "";
}

}  // namespace

ChatTemplate ChatTemplate::from_template_string(const std::string& jinja) {
  FM_CHECK(!jinja.empty(), ErrorCode::kUnsupported,
           "the chat template is empty; flashmem supports ", kSupported,
           " templates; format the prompt yourself or use a model that ships one");
  const bool chatml =
      jinja.find(kImStart) != std::string::npos && jinja.find(kImEnd) != std::string::npos;
  if (!chatml) {
    std::string head = jinja.substr(0, 80);
    for (char& c : head) {
      if (c == '\n') c = ' ';
    }
    FM_FAIL(ErrorCode::kUnsupported, "unrecognised chat template (it begins \"", head,
            jinja.size() > head.size() ? "...\"" : "\"", "); flashmem supports only the ",
            kSupported, " family");
  }
  ChatTemplate t;
  t.kind_ = ChatTemplateKind::kChatML;
  t.default_system_ = extract_default_system(jinja);
  return t;
}

ChatTemplate ChatTemplate::from_gguf(const GgufFile& file) {
  const GgufValue* v = file.find("tokenizer.chat_template");
  FM_CHECK(v != nullptr, ErrorCode::kUnsupported,
           "the model file has no chat template (tokenizer.chat_template is missing); "
           "flashmem supports ",
           kSupported, " templates; format the prompt yourself");
  return from_template_string(v->as_string("tokenizer.chat_template"));
}

const char* ChatTemplate::name() const {
  switch (kind_) {
    case ChatTemplateKind::kChatML:
      return "chatml";
  }
  return "unknown";
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  std::string out;
  // As in the Jinja templates, the default system turn is emitted while visiting the first
  // message, so an empty conversation gets none.
  if (!messages.empty() && messages.front().role != "system" && !default_system_.empty()) {
    out.append(kImStart).append("system\n").append(default_system_).append(kImEnd).append("\n");
  }
  for (const ChatMessage& m : messages) {
    out.append(kImStart).append(m.role).append("\n").append(m.content).append(kImEnd).append("\n");
  }
  if (add_generation_prompt) out.append(kImStart).append("assistant\n");
  return out;
}

std::vector<std::string> ChatTemplate::stop_strings() const { return {std::string(kImEnd)}; }

}  // namespace flashmem

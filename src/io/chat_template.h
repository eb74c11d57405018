// flashmem/io/chat_template.h — chat prompt formatting chosen from GGUF metadata.
//
// flashmem does not run Jinja. It recognises the template family from
// `tokenizer.chat_template` (and the vocabulary) and renders it natively. Supported now:
// ChatML (<|im_start|>role\n...<|im_end|>\n), including SmolLM2's default system prompt when
// the template inserts one. An unknown template throws Error(kUnsupported) with a hint.
#pragma once

#include <string>
#include <vector>

namespace flashmem {

class GgufFile;

struct ChatMessage {
  std::string role;     // "system", "user", "assistant"
  std::string content;
};

enum class ChatTemplateKind { kChatML };

class ChatTemplate {
 public:
  // Detects the family from the file's metadata; throws Error(kUnsupported) if unknown or absent.
  static ChatTemplate from_gguf(const GgufFile& file);
  // Detects from a template string (the contents of tokenizer.chat_template).
  static ChatTemplate from_template_string(const std::string& jinja);

  ChatTemplateKind kind() const { return kind_; }
  const char* name() const;
  // Renders messages; with add_generation_prompt the assistant turn is opened.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // Strings that end an assistant turn (e.g. "<|im_end|>"), for stop detection.
  std::vector<std::string> stop_strings() const;
  // The system prompt the template inserts when the first message is not a system message
  // ("" when it inserts none).
  const std::string& default_system() const { return default_system_; }

 private:
  ChatTemplateKind kind_ = ChatTemplateKind::kChatML;
  std::string default_system_;  // inserted when the first message is not a system message
};

}  // namespace flashmem

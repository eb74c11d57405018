// Chat template tests. Expected renders were produced by evaluating the model's Jinja template
// with jinja2 (messages as below), so they check the native renderer against the template.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "gguf_writer.h"
#include "io/chat_template.h"
#include "io/gguf.h"
#include "io/tokenizer.h"
#include "test_util.h"

namespace flashmem {
namespace {

// SmolLM2-135M-Instruct's tokenizer.chat_template, verbatim.
const std::string kSmolLmTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

const std::string kSmolLmSystem =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

ErrorCode error_of(const std::string& jinja, std::string* message = nullptr) {
  try {
    (void)ChatTemplate::from_template_string(jinja);
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.code();
  }
  return ErrorCode::kInternal;  // "no error"
}

TEST(ChatTemplate, InsertsDefaultSystemPrompt) {
  const ChatTemplate t = ChatTemplate::from_template_string(kSmolLmTemplate);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kChatML);
  EXPECT_STREQ(t.name(), "chatml");
  EXPECT_EQ(t.default_system(), kSmolLmSystem);
  EXPECT_EQ(t.render({{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, KeepsExplicitSystemMessage) {
  const ChatTemplate t = ChatTemplate::from_template_string(kSmolLmTemplate);
  EXPECT_EQ(t.render({{"system", "Be terse."}, {"user", "Hi"}, {"assistant", "Hello!"}}, false),
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n");
}

TEST(ChatTemplate, GenerationPromptAndEmptyConversation) {
  const ChatTemplate t = ChatTemplate::from_template_string(kSmolLmTemplate);
  // The template emits its default system turn inside the message loop: none without messages.
  EXPECT_EQ(t.render({}, true), "<|im_start|>assistant\n");
  EXPECT_EQ(t.render({}, false), "");
  const std::string multi = t.render({{"user", "a"}, {"assistant", "b"}, {"user", "c"}}, true);
  EXPECT_EQ(multi.rfind("<|im_start|>assistant\n"), multi.size() - 22);
  EXPECT_EQ(multi.find("<|im_start|>system\n" + kSmolLmSystem), 0u);
}

TEST(ChatTemplate, StopStrings) {
  const ChatTemplate t = ChatTemplate::from_template_string(kSmolLmTemplate);
  EXPECT_EQ(t.stop_strings(), std::vector<std::string>{"<|im_end|>"});
}

TEST(ChatTemplate, PlainChatMLHasNoDefaultSystem) {
  const std::string plain =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const ChatTemplate t = ChatTemplate::from_template_string(plain);
  EXPECT_EQ(t.default_system(), "");
  EXPECT_EQ(t.render({{"user", "Hi"}}, true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, ParsesEscapedDefaultSystem) {
  // Qwen2.5 style: the newline is the escape \n inside the string literal, and a system
  // message's own content is computed (quoted expression), which must not be mistaken for a
  // default.
  const std::string qwen =
      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
      "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou "
      "are Qwen, created by Alibaba Cloud. You\\'re a helpful assistant.<|im_end|>\\n' }}"
      "{%- endif %}";
  const ChatTemplate t = ChatTemplate::from_template_string(qwen);
  EXPECT_EQ(t.default_system(),
            "You are Qwen, created by Alibaba Cloud. You're a helpful assistant.");
}

TEST(ChatTemplate, UnknownTemplateIsUnsupported) {
  std::string msg;
  EXPECT_EQ(error_of("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]"
                     "{% endfor %}",
                     &msg),
            ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("ChatML"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[INST]"), std::string::npos) << msg;  // says what it saw
  EXPECT_EQ(error_of("", &msg), ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("ChatML"), std::string::npos) << msg;
  // Only one of the two ChatML markers is not enough.
  EXPECT_EQ(error_of("<|im_start|>{{ message }}"), ErrorCode::kUnsupported);
}

TEST(ChatTemplate, MissingTemplateInGguf) {
  testing::GgufWriter w;
  w.add_string("general.architecture", "llama");
  const std::vector<uint8_t> bytes = w.to_bytes();
  const GgufFile f = GgufFile::from_bytes(bytes.data(), bytes.size());
  try {
    (void)ChatTemplate::from_gguf(f);
    ADD_FAILURE() << "expected kUnsupported";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("tokenizer.chat_template"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, FromDefaultModel) {
  const std::string path = test::require_default_model();
  ASSERT_TRUE(std::filesystem::exists(path));
  const GgufFile f = GgufFile::open(path);
  const ChatTemplate t = ChatTemplate::from_gguf(f);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kChatML);
  EXPECT_EQ(t.default_system(), kSmolLmSystem);
  // The stop string and the role markers are single control tokens of the vocabulary.
  const Tokenizer tok = Tokenizer::from_gguf(f);
  const std::vector<TokenId> ids = tok.encode(t.render({{"user", "Hi"}}, true), false);
  EXPECT_EQ(ids.front(), tok.find_token("<|im_start|>"));
  EXPECT_EQ(tok.encode(t.stop_strings().at(0), false), std::vector<TokenId>{tok.special().eos});
}

}  // namespace
}  // namespace flashmem

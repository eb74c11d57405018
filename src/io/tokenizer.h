// flashmem/io/tokenizer.h — tokenizers built from GGUF metadata.
//
// Supported: `tokenizer.ggml.model == "gpt2"` (byte-level BPE) with the pre-tokenizers named by
// `tokenizer.ggml.pre` that flashmem knows (SmolLM2's "smollm", Qwen2's "qwen2", the GPT-2
// default). Special
// (control / user-defined) tokens are matched verbatim in the input before BPE when
// `parse_special` is set. Unknown models or pre-tokenizers throw Error(kUnsupported).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace flashmem {

class GgufFile;

using TokenId = int32_t;

struct SpecialTokens {
  TokenId bos = -1;  // -1 when the model has none
  TokenId eos = -1;
  TokenId unk = -1;
  TokenId pad = -1;
  TokenId eot = -1;  // tokenizer.ggml.eot_token_id (end of turn), when the file names one
  bool add_bos = false;  // tokenizer.ggml.add_bos_token
  bool add_eos = false;
};

// The tokenizer's plain inputs, as GGUF stores them (`tokenizer.ggml.*`). from_gguf extracts
// this and calls from_vocab; tests and tools can build a tokenizer without a GGUF file.
struct VocabData {
  std::string model;                 // tokenizer.ggml.model, e.g. "gpt2"
  std::string pre;                   // tokenizer.ggml.pre, e.g. "smollm"
  std::vector<std::string> tokens;   // id -> vocabulary string
  std::vector<int32_t> token_types;  // id -> GGUF token type (1 normal, 3 control, 4 user-
                                     // defined, ...); empty means all normal
  std::vector<std::string> merges;   // "left right", highest priority first
  SpecialTokens special;
};

// The vocabulary string of byte b in a byte-level BPE vocabulary (GPT-2's reversible mapping:
// printable Latin-1 bytes stand for themselves, the others for U+0100 …).
std::string byte_level_token(uint8_t b);

class Tokenizer {
 public:
  static Tokenizer from_gguf(const GgufFile& file);
  // Validates `data` (Error(kFormat) if inconsistent, Error(kUnsupported) for an unknown
  // model or pre-tokenizer) and builds the tokenizer.
  static Tokenizer from_vocab(VocabData data);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Text → ids. `add_special` prepends BOS (and appends EOS) when the model asks for it;
  // `parse_special` recognises control-token text such as "<|im_start|>" as single tokens
  // (user-defined tokens are always recognised, as in HF tokenizers and llama.cpp).
  std::vector<TokenId> encode(std::string_view text, bool add_special = true,
                              bool parse_special = true) const;
  // Ids → text. Special tokens are rendered as their text when `render_special` is set.
  std::string decode(const std::vector<TokenId>& ids, bool render_special = true) const;
  // The bytes of one token (byte-level BPE pieces decoded to raw bytes; may be partial UTF-8).
  std::string token_bytes(TokenId id) const;
  const std::string& token_text(TokenId id) const;  // the vocabulary string as stored
  bool is_special(TokenId id) const;  // control or user-defined token
  // Whether generating `id` ends the text, as llama.cpp decides its end-of-generation set: EOS,
  // EOT, and the control tokens that close a document or a turn in the known vocabularies
  // ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", ...). Qwen2.5 names
  // <|im_end|> as EOS but also ends plain completions with <|endoftext|>.
  bool ends_generation(TokenId id) const;
  TokenId find_token(std::string_view text) const;  // exact vocabulary string; -1 if absent

  int32_t vocab_size() const;
  const SpecialTokens& special() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Streaming-safe decoding: feed ids one at a time, get back only complete UTF-8 sequences;
// bytes of a character split across tokens are held until it completes. flush() returns
// whatever is left (invalid trailing bytes are replaced by U+FFFD).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool render_special = true)
      : tok_(&tok), render_special_(render_special) {}
  std::string push(TokenId id);
  std::string flush();

 private:
  const Tokenizer* tok_;
  bool render_special_;
  std::string pending_;
};

}  // namespace flashmem

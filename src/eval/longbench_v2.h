// flashmem/eval/longbench_v2.h — LongBench v2 (four-choice long-context questions) from a
// user-supplied `data.json`: loading, the 0-shot prompt, middle truncation to the model limit,
// answer extraction and scoring. Our own implementation and wording; the prompt mirrors the
// structure of the upstream 0-shot prompt (context in <text> tags, question, four choices, and a
// fixed response format).
//
// Answer extraction follows the upstream pattern `The correct answer is \(?([A-D])\)?` (first
// match wins), with labelled tolerances: '*' (markdown bold) is removed first, the phrase is
// matched case-insensitively, and a ':' and extra spaces may follow it ("The correct answer
// is: B"). One deviation in the strict direction: the letter must not be followed by a letter
// or digit ("The correct answer is Apple" extracts nothing).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace flashmem {
class Tokenizer;
class ChatTemplate;
}  // namespace flashmem

namespace flashmem::eval {

struct LongBenchV2Record {
  std::string id;          // _id
  std::string domain;      // e.g. "Single-Document QA"
  std::string sub_domain;
  std::string difficulty;  // "easy" | "hard"
  std::string length;      // "short" | "medium" | "long"
  std::string question;
  std::array<std::string, 4> choices;  // choice_A .. choice_D
  char answer = 'A';                   // gold letter, 'A'..'D'
  std::string context;
};

// Parses a JSON array of records, or JSON Lines (one record per line). `source` names the data
// in error messages. Error(kFormat) naming the source, the record index and _id (when known)
// and the field, for malformed JSON, a missing field, a wrong type or an answer outside A-D.
std::vector<LongBenchV2Record> parse_longbench_v2(const std::string& text,
                                                  const std::string& source);
// Reads and parses a file (Error(kIo) when it cannot be read).
std::vector<LongBenchV2Record> load_longbench_v2(const std::string& path);

// The 0-shot user message for `r` with `context` in place of r.context (no chat template).
std::string longbench_v2_user_prompt(const LongBenchV2Record& r, const std::string& context);

struct LongBenchV2Prompt {
  std::string prompt;       // full text, chat template included when one is given
  int64_t n_tokens = 0;
  bool truncated = false;   // the middle of the context was cut
  int64_t context_tokens = 0;       // tokens of the whole context
  int64_t kept_context_tokens = 0;  // tokens of it that were kept
};

// The prompt for `r`, fitted to `max_prompt_tokens` (the model limit minus the tokens to
// generate) by middle truncation of the context (see eval/truncation.h). `chat` may be null.
LongBenchV2Prompt longbench_v2_prompt(const LongBenchV2Record& r, const Tokenizer& tok,
                                      const ChatTemplate* chat, int64_t max_prompt_tokens);

// The letter 'A'..'D' as a one-character string, or "" when the response states no answer in
// the requested format.
std::string extract_longbench_v2_answer(const std::string& response);
// 1 when the extracted letter equals the gold letter, else 0.
double score_longbench_v2(const std::string& response, const LongBenchV2Record& r);

}  // namespace flashmem::eval

// flashmem/eval/longmemeval.h — LongMemEval (questions over a long multi-session chat history)
// from a user-supplied file (the S, M or oracle JSON): loading, the long-context reading prompt,
// middle truncation to the model limit, and a string-match scorer.
//
// Our own implementation and wording. The prompt mirrors the upstream long-context setting:
// every haystack session rendered in file order under a header with its date, then the current
// date, the question and "Answer:".
//
// Truncation: the rendered chat history is cut in the middle in model tokens (first and last
// halves of the allowed tokens kept; see eval/truncation.h). Sessions are not dropped whole, so
// the session at the seam is cut mid-text.
//
// NOT THE OFFICIAL METRIC. Upstream LongMemEval is judged by GPT-4o with question-type-specific
// prompts (off-by-one tolerance for temporal questions, rubrics for preference questions, ...).
// score_longmemeval is a local, deterministic stand-in:
//  * answerable questions: 1 when the normalised gold answer occurs in the normalised prediction
//    on word boundaries (normalisation: lowercase, ASCII punctuation removed, the articles
//    a/an/the removed, whitespace collapsed), else 0. Long free-form gold answers (preference
//    rubrics, explanations) will rarely match; scores are a lower bound of the judge's;
//  * abstention questions (question_id ending in "_abs"): 1 when the normalised prediction
//    contains one of longmemeval_abstention_phrases(), else 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace flashmem {
class Tokenizer;
class ChatTemplate;
}  // namespace flashmem

namespace flashmem::eval {

struct LongMemEvalTurn {
  std::string role;     // "user" | "assistant"
  std::string content;
  bool has_answer = false;  // the turn holds evidence (absent in the file means false)
};

struct LongMemEvalSession {
  std::string id;    // haystack_session_ids[i]
  std::string date;  // haystack_dates[i]
  std::vector<LongMemEvalTurn> turns;
};

struct LongMemEvalRecord {
  std::string question_id;
  std::string question_type;  // e.g. "temporal-reasoning"
  std::string question;
  std::string answer;         // numbers in the file are converted to their decimal text
  std::string question_date;
  std::vector<LongMemEvalSession> sessions;
  std::vector<std::string> answer_session_ids;

  bool is_abstention() const;  // question_id ends with "_abs"
};

// Parses the JSON array (JSON Lines also accepted). Error(kFormat) naming `source`, the record
// index and question_id (when known) and the field, for malformed JSON, a missing field, a
// wrong type, or session/id/date arrays of different lengths.
std::vector<LongMemEvalRecord> parse_longmemeval(const std::string& text, const std::string& source);
std::vector<LongMemEvalRecord> load_longmemeval(const std::string& path);

// The chat history: every session with its date and turns, in file order.
std::string longmemeval_history(const LongMemEvalRecord& r);
// The user message with `history` in place of the full history (no chat template).
std::string longmemeval_user_prompt(const LongMemEvalRecord& r, const std::string& history);

struct LongMemEvalPrompt {
  std::string prompt;  // full text, chat template included when one is given
  int64_t n_tokens = 0;
  bool truncated = false;
  int64_t history_tokens = 0;       // tokens of the whole rendered history
  int64_t kept_history_tokens = 0;  // tokens of it that were kept
};

// The prompt fitted to `max_prompt_tokens` by cutting the middle of the history. `chat` may be
// null.
LongMemEvalPrompt longmemeval_prompt(const LongMemEvalRecord& r, const Tokenizer& tok,
                                     const ChatTemplate* chat, int64_t max_prompt_tokens);

// Lowercase, ASCII punctuation removed, articles a/an/the removed, whitespace collapsed.
std::string normalize_answer(const std::string& text);
// Phrases (already normalised) that count as abstaining.
const std::vector<std::string>& longmemeval_abstention_phrases();
// The string-match stand-in for the GPT-4o judge described above: 1 or 0.
double score_longmemeval(const std::string& prediction, const LongMemEvalRecord& r);

}  // namespace flashmem::eval

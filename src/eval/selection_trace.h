// flashmem/eval/selection_trace.h — what lsa chose, next to where the answers are
// (`flashmem eval --lsa-trace FILE`, docs/accuracy.md).
//
// One JSON object per lsa decode, appended to the file (a resumed run appends again):
//   {"prompt_id":"ruler/niah_single_1/4096/seed1/9","task":"niah_single_1","length":4096,
//    "budget":"14.5%","page_tokens":16,"chunk_tokens":16,"prompt_tokens":3961,"score":0.0,
//    "answers":[{"text":"2382277","token_begin":166,"token_end":173}],
//    "selections":[{"cycle":0,"step":0,"middle":[4,243],"slots":24,"kept_fraction":0.159,
//                   "score_std":0.21,"pages":[207,208,...],"chunk_scores":[0.74,...]}]}
// token_end is exclusive; pages are the middle pages chosen, best first; chunk_scores are the
// ensemble's, one per indexed chunk of the completed pages.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/results.h"
#include "memory/lsa.h"

namespace flashmem::eval {

struct AnswerSpan {
  std::string text;
  int64_t token_begin = 0;  // first token holding a byte of the answer
  int64_t token_end = 0;    // one past the last
};

// Every occurrence of every answer in the text the tokens spell (token_text[i]: the bytes of
// token i), as token ranges. Empty answers are skipped; occurrences may overlap.
std::vector<AnswerSpan> answer_spans(const std::vector<std::string>& token_text,
                                     const std::vector<std::string>& answers);

// The trace line of one lsa decode: the record's identity and score, the answers' spans and the
// Level-1 passes (format above).
nlohmann::json trace_line(const EvalRecord& rec, int page_tokens, int chunk_tokens,
                          const std::vector<AnswerSpan>& answers, const std::vector<LsaSelection>& selections);

}  // namespace flashmem::eval

#include "eval/selection_trace.h"

#include <algorithm>

namespace flashmem::eval {

std::vector<AnswerSpan> answer_spans(const std::vector<std::string>& token_text,
                                     const std::vector<std::string>& answers) {
  std::string text;
  std::vector<size_t> start;  // byte offset of each token in text
  start.reserve(token_text.size());
  for (const auto& t : token_text) {
    start.push_back(text.size());
    text += t;
  }
  // The token holding byte b: the last one starting at or before it (empty tokens hold none).
  const auto token_of = [&](size_t b) {
    return static_cast<int64_t>(std::upper_bound(start.begin(), start.end(), b) - start.begin()) - 1;
  };
  std::vector<AnswerSpan> out;
  for (const auto& a : answers) {
    if (a.empty()) continue;
    for (size_t at = text.find(a); at != std::string::npos; at = text.find(a, at + 1))
      out.push_back({a, token_of(at), token_of(at + a.size() - 1) + 1});
  }
  return out;
}

nlohmann::json trace_line(const EvalRecord& rec, int page_tokens, int chunk_tokens,
                          const std::vector<AnswerSpan>& answers, const std::vector<LsaSelection>& selections) {
  nlohmann::json j = {{"prompt_id", rec.prompt_id},     {"task", rec.task},   {"length", rec.length},
                      {"budget", rec.budget},           {"page_tokens", page_tokens},
                      {"chunk_tokens", chunk_tokens},   {"prompt_tokens", rec.prompt_tokens},
                      {"score", rec.score},             {"answers", nlohmann::json::array()},
                      {"selections", nlohmann::json::array()}};
  for (const auto& a : answers)
    j["answers"].push_back({{"text", a.text}, {"token_begin", a.token_begin}, {"token_end", a.token_end}});
  for (const auto& s : selections)
    j["selections"].push_back({{"cycle", s.cycle},
                               {"step", s.step},
                               {"middle", {s.middle_begin, s.middle_end}},
                               {"slots", s.slots},
                               {"kept_fraction", s.kept_fraction},
                               {"score_std", s.score_std},
                               {"pages", s.pages},
                               {"chunk_scores", s.chunk_scores}});
  return j;
}

}  // namespace flashmem::eval

// flashmem/eval/longbench_v2.cpp — LongBench v2 loading, prompt, extraction and scoring.
#include "eval/longbench_v2.h"

#include <cctype>

#include "core/error.h"
#include "eval/json_input.h"
#include "eval/truncation.h"

namespace flashmem::eval {
namespace {

using detail::Json;

LongBenchV2Record parse_record(const Json& j, size_t index, const std::string& source) {
  std::string where = source + ": record " + std::to_string(index);
  // Name the record by its _id in every later message when it has one.
  if (j.is_object()) {
    if (const auto it = j.find("_id"); it != j.end() && it->is_string())
      where += " (_id \"" + it->get<std::string>() + "\")";
  }
  LongBenchV2Record r;
  r.id = detail::json_string(j, "_id", where);
  r.domain = detail::json_string(j, "domain", where);
  r.sub_domain = detail::json_string(j, "sub_domain", where);
  r.difficulty = detail::json_string(j, "difficulty", where);
  r.length = detail::json_string(j, "length", where);
  r.question = detail::json_string(j, "question", where);
  static const char* kChoiceFields[4] = {"choice_A", "choice_B", "choice_C", "choice_D"};
  for (size_t c = 0; c < 4; ++c) r.choices[c] = detail::json_string(j, kChoiceFields[c], where);
  const std::string answer = detail::json_string(j, "answer", where);
  FM_CHECK(answer.size() == 1 && answer[0] >= 'A' && answer[0] <= 'D', ErrorCode::kFormat, where,
           ": field 'answer' must be one of A, B, C, D, got \"", answer, "\"");
  r.answer = answer[0];
  r.context = detail::json_string(j, "context", where);
  return r;
}

bool iequal_at(const std::string& s, size_t pos, const std::string& lit) {
  if (pos + lit.size() > s.size()) return false;
  for (size_t i = 0; i < lit.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[pos + i])) != lit[i]) return false;
  return true;
}

}  // namespace

std::vector<LongBenchV2Record> parse_longbench_v2(const std::string& text,
                                                  const std::string& source) {
  const std::vector<Json> records = detail::parse_json_records(text, source);
  std::vector<LongBenchV2Record> out;
  out.reserve(records.size());
  for (size_t i = 0; i < records.size(); ++i) out.push_back(parse_record(records[i], i, source));
  return out;
}

std::vector<LongBenchV2Record> load_longbench_v2(const std::string& path) {
  return parse_longbench_v2(detail::read_text_file(path), path);
}

std::string longbench_v2_user_prompt(const LongBenchV2Record& r, const std::string& context) {
  std::string s = "Read the text below carefully, then answer the question that follows it.\n\n";
  s += "<text>\n" + context + "\n</text>\n\n";
  s += "What is the correct answer to this question: " + r.question + "\n";
  s += "Choices:\n";
  for (size_t c = 0; c < 4; ++c)
    s += std::string("(") + static_cast<char>('A' + c) + ") " + r.choices[c] + "\n";
  s += "\nAnswer in exactly this format: \"The correct answer is (insert answer here)\".";
  return s;
}

LongBenchV2Prompt longbench_v2_prompt(const LongBenchV2Record& r, const Tokenizer& tok,
                                      const ChatTemplate* chat, int64_t max_prompt_tokens) {
  const FittedContext f = truncate_context_middle(
      tok, r.context,
      [&](const std::string& ctx) { return render_user_prompt(chat, longbench_v2_user_prompt(r, ctx)); },
      max_prompt_tokens);
  LongBenchV2Prompt p;
  p.prompt = f.prompt;
  p.n_tokens = f.prompt_tokens;
  p.truncated = f.truncated;
  p.context_tokens = f.context_tokens;
  p.kept_context_tokens = f.kept_context_tokens;
  return p;
}

std::string extract_longbench_v2_answer(const std::string& response) {
  std::string s;
  s.reserve(response.size());
  for (char c : response)
    if (c != '*') s += c;
  static const std::string kPhrase = "the correct answer is";
  for (size_t pos = 0; pos + kPhrase.size() <= s.size(); ++pos) {
    if (!iequal_at(s, pos, kPhrase)) continue;
    size_t i = pos + kPhrase.size();
    if (i < s.size() && s[i] == ':') ++i;
    const size_t spaces_from = i;
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    if (i == spaces_from && (i >= s.size() || s[i] != '(')) continue;  // "is" must end a word
    if (i < s.size() && s[i] == '(') ++i;
    if (i >= s.size() || s[i] < 'A' || s[i] > 'D') continue;
    const char letter = s[i];
    if (i + 1 < s.size() && std::isalnum(static_cast<unsigned char>(s[i + 1]))) continue;
    return std::string(1, letter);
  }
  return "";
}

double score_longbench_v2(const std::string& response, const LongBenchV2Record& r) {
  const std::string a = extract_longbench_v2_answer(response);
  return a.size() == 1 && a[0] == r.answer ? 1.0 : 0.0;
}

}  // namespace flashmem::eval

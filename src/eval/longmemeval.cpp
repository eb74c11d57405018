// flashmem/eval/longmemeval.cpp — LongMemEval loading, prompt and the string-match scorer.
#include "eval/longmemeval.h"

#include <cctype>
#include <sstream>

#include "core/error.h"
#include "eval/json_input.h"
#include "eval/truncation.h"

namespace flashmem::eval {
namespace {

using detail::Json;

std::string answer_text(const Json& j, const std::string& where) {
  const Json& v = detail::json_field(j, "answer", where);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_float()) return v.dump();
  FM_FAIL(ErrorCode::kFormat, where, ": field 'answer' must be a string or a number, got ",
          detail::json_type_name(v));
}

std::vector<std::string> string_array(const Json& j, const char* name, const std::string& where) {
  const Json& a = detail::json_array(j, name, where);
  std::vector<std::string> out;
  out.reserve(a.size());
  for (size_t i = 0; i < a.size(); ++i) out.push_back(detail::json_string_at(a, i, where, name));
  return out;
}

LongMemEvalRecord parse_record(const Json& j, size_t index, const std::string& source) {
  std::string where = source + ": record " + std::to_string(index);
  if (j.is_object()) {
    if (const auto it = j.find("question_id"); it != j.end() && it->is_string())
      where += " (question_id \"" + it->get<std::string>() + "\")";
  }
  LongMemEvalRecord r;
  r.question_id = detail::json_string(j, "question_id", where);
  r.question_type = detail::json_string(j, "question_type", where);
  r.question = detail::json_string(j, "question", where);
  r.answer = answer_text(j, where);
  r.question_date = detail::json_string(j, "question_date", where);
  const std::vector<std::string> ids = string_array(j, "haystack_session_ids", where);
  const std::vector<std::string> dates = string_array(j, "haystack_dates", where);
  const Json& sessions = detail::json_array(j, "haystack_sessions", where);
  FM_CHECK(ids.size() == sessions.size() && dates.size() == sessions.size(), ErrorCode::kFormat,
           where, ": fields 'haystack_session_ids' (", ids.size(), "), 'haystack_dates' (",
           dates.size(), ") and 'haystack_sessions' (", sessions.size(),
           ") must have the same length");
  r.sessions.resize(sessions.size());
  for (size_t s = 0; s < sessions.size(); ++s) {
    LongMemEvalSession& out = r.sessions[s];
    out.id = ids[s];
    out.date = dates[s];
    const Json& turns = sessions[s];
    const std::string swhere = where + ": haystack_sessions[" + std::to_string(s) + "]";
    FM_CHECK(turns.is_array(), ErrorCode::kFormat, swhere, " must be an array of turns, got ",
             detail::json_type_name(turns));
    out.turns.reserve(turns.size());
    for (size_t t = 0; t < turns.size(); ++t) {
      const std::string twhere = swhere + "[" + std::to_string(t) + "]";
      LongMemEvalTurn turn;
      turn.role = detail::json_string(turns[t], "role", twhere);
      turn.content = detail::json_string(turns[t], "content", twhere);
      if (turns[t].contains("has_answer")) turn.has_answer = detail::json_bool(turns[t], "has_answer", twhere);
      out.turns.push_back(std::move(turn));
    }
  }
  r.answer_session_ids = string_array(j, "answer_session_ids", where);
  return r;
}

bool is_ascii_punct(char c) { return c > 0 && std::ispunct(static_cast<unsigned char>(c)); }

// `words` with one space on each side, so that a find() of a padded phrase matches whole words.
std::string padded(const std::string& words) {
  std::string s;
  s.reserve(words.size() + 2);
  s.push_back(' ');
  s.append(words);
  s.push_back(' ');
  return s;
}

}  // namespace

bool LongMemEvalRecord::is_abstention() const {
  static const std::string kSuffix = "_abs";
  return question_id.size() >= kSuffix.size() &&
         question_id.compare(question_id.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0;
}

std::vector<LongMemEvalRecord> parse_longmemeval(const std::string& text, const std::string& source) {
  const std::vector<Json> records = detail::parse_json_records(text, source);
  std::vector<LongMemEvalRecord> out;
  out.reserve(records.size());
  for (size_t i = 0; i < records.size(); ++i) out.push_back(parse_record(records[i], i, source));
  return out;
}

std::vector<LongMemEvalRecord> load_longmemeval(const std::string& path) {
  return parse_longmemeval(detail::read_text_file(path), path);
}

std::string longmemeval_history(const LongMemEvalRecord& r) {
  std::string s;
  for (size_t i = 0; i < r.sessions.size(); ++i) {
    const LongMemEvalSession& ses = r.sessions[i];
    if (i) s += "\n";
    s += "### Session " + std::to_string(i + 1) + " (date: " + ses.date + ")\n";
    for (const LongMemEvalTurn& t : ses.turns) s += t.role + ": " + t.content + "\n";
  }
  return s;
}

std::string longmemeval_user_prompt(const LongMemEvalRecord& r, const std::string& history) {
  return "Below are earlier chat sessions between you and a user, each headed by its date. Use "
         "the relevant parts of this history to answer the question at the end.\n\n"
         "Chat history:\n\n" + history +
         "\n\nCurrent Date: " + r.question_date + "\nQuestion: " + r.question + "\nAnswer:";
}

LongMemEvalPrompt longmemeval_prompt(const LongMemEvalRecord& r, const Tokenizer& tok,
                                     const ChatTemplate* chat, int64_t max_prompt_tokens) {
  const FittedContext f = truncate_context_middle(
      tok, longmemeval_history(r),
      [&](const std::string& h) { return render_user_prompt(chat, longmemeval_user_prompt(r, h)); },
      max_prompt_tokens);
  LongMemEvalPrompt p;
  p.prompt = f.prompt;
  p.n_tokens = f.prompt_tokens;
  p.truncated = f.truncated;
  p.history_tokens = f.context_tokens;
  p.kept_history_tokens = f.kept_context_tokens;
  return p;
}

std::string normalize_answer(const std::string& text) {
  std::string cleaned;
  cleaned.reserve(text.size());
  for (char c : text) {
    if (is_ascii_punct(c)) continue;
    cleaned += std::isspace(static_cast<unsigned char>(c))
                   ? ' '
                   : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  std::istringstream in(cleaned);
  std::string out;
  for (std::string w; in >> w;) {
    if (w == "a" || w == "an" || w == "the") continue;
    if (!out.empty()) out += ' ';
    out += w;
  }
  return out;
}

const std::vector<std::string>& longmemeval_abstention_phrases() {
  static const std::vector<std::string> v = [] {
    const std::vector<std::string> raw = {
        "not mentioned",        "never mentioned",         "no mention",
        "did not mention",      "didn't mention",          "no information",
        "not enough information", "insufficient information", "not provided",
        "cannot answer",        "can't answer",            "cannot be answered",
        "can't be answered",    "unable to answer",        "don't know",
        "do not know",          "unanswerable",            "cannot determine",
        "can't determine",      "not specified"};
    std::vector<std::string> n;
    for (const auto& p : raw) n.push_back(normalize_answer(p));
    return n;
  }();
  return v;
}

double score_longmemeval(const std::string& prediction, const LongMemEvalRecord& r) {
  const std::string pred = padded(normalize_answer(prediction));
  if (r.is_abstention()) {
    for (const auto& p : longmemeval_abstention_phrases())
      if (pred.find(padded(p)) != std::string::npos) return 1.0;
    return 0.0;
  }
  const std::string gold = normalize_answer(r.answer);
  if (gold.empty()) return 0.0;
  return pred.find(padded(gold)) != std::string::npos ? 1.0 : 0.0;
}

}  // namespace flashmem::eval

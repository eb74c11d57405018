// flashmem/eval/ruler_qa.cpp — loaders of the user-supplied QA data behind RULER qa_1 (SQuAD v2)
// and qa_2 (HotpotQA, distractor setting).
#include "eval/ruler.h"

#include <algorithm>
#include <cctype>
#include <unordered_map>

#include "core/error.h"
#include "eval/json_input.h"

namespace flashmem::eval {
namespace {

using detail::Json;

// Adds `doc` to the set's documents once; returns its index.
class DocIndex {
 public:
  explicit DocIndex(RulerQaSet& set) : set_(set) {}
  size_t add(std::string doc) {
    const auto it = index_.find(doc);
    if (it != index_.end()) return it->second;
    const size_t i = set_.docs.size();
    index_.emplace(doc, i);
    set_.docs.push_back(std::move(doc));
    return i;
  }

 private:
  RulerQaSet& set_;
  std::unordered_map<std::string, size_t> index_;
};

void add_answer(std::vector<std::string>& answers, std::string a) {
  if (std::find(answers.begin(), answers.end(), a) == answers.end()) answers.push_back(std::move(a));
}

bool has_text(const std::string& s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return !std::isspace(static_cast<unsigned char>(c)); });
}

}  // namespace

RulerQaSet parse_ruler_squad(const std::string& text, const std::string& source) {
  const Json root = detail::parse_json(text, source);
  RulerQaSet set;
  set.source = source;
  DocIndex docs(set);
  const Json& data = detail::json_array(root, "data", source);
  for (size_t a = 0; a < data.size(); ++a) {
    const std::string aw = source + ": data[" + std::to_string(a) + "]";
    const Json& paragraphs = detail::json_array(data[a], "paragraphs", aw);
    for (size_t pi = 0; pi < paragraphs.size(); ++pi) {
      const std::string pw = aw + ".paragraphs[" + std::to_string(pi) + "]";
      const size_t doc = docs.add(detail::json_string(paragraphs[pi], "context", pw));
      const Json& qas = detail::json_array(paragraphs[pi], "qas", pw);
      for (size_t q = 0; q < qas.size(); ++q) {
        const std::string qw = pw + ".qas[" + std::to_string(q) + "]";
        RulerQaSet::Item item;
        item.question = detail::json_string(qas[q], "question", qw);
        const bool impossible =
            qas[q].contains("is_impossible") && detail::json_bool(qas[q], "is_impossible", qw);
        const Json& answers = detail::json_array(qas[q], "answers", qw);
        if (impossible) continue;
        for (size_t k = 0; k < answers.size(); ++k) {
          std::string t = detail::json_string(answers[k], "text", qw + ".answers[" + std::to_string(k) + "]");
          if (has_text(t)) add_answer(item.answers, std::move(t));
        }
        FM_CHECK(!item.answers.empty(), ErrorCode::kFormat, qw,
                 ": an answerable question (is_impossible false or absent) has no non-empty "
                 "'answers[].text'");
        item.gold = {doc};
        set.items.push_back(std::move(item));
      }
    }
  }
  FM_CHECK(!set.empty(), ErrorCode::kFormat, source,
           ": no answerable question found (expected SQuAD v2 JSON: data[].paragraphs[].qas[])");
  return set;
}

RulerQaSet load_ruler_squad(const std::string& path) {
  return parse_ruler_squad(detail::read_text_file(path), path);
}

RulerQaSet parse_ruler_hotpotqa(const std::string& text, const std::string& source) {
  const std::vector<Json> records = detail::parse_json_records(text, source);
  RulerQaSet set;
  set.source = source;
  DocIndex docs(set);
  for (size_t i = 0; i < records.size(); ++i) {
    const Json& rec = records[i];
    std::string where = source + ": record " + std::to_string(i);
    if (rec.is_object()) {
      if (const auto it = rec.find("_id"); it != rec.end() && it->is_string())
        where += " (_id \"" + it->get<std::string>() + "\")";
    }
    RulerQaSet::Item item;
    item.question = detail::json_string(rec, "question", where);
    const std::string answer = detail::json_string(rec, "answer", where);
    FM_CHECK(has_text(answer), ErrorCode::kFormat, where, ": field 'answer' is empty");
    item.answers = {answer};
    const Json& context = detail::json_array(rec, "context", where);
    FM_CHECK(!context.empty(), ErrorCode::kFormat, where, ": field 'context' has no paragraphs");
    for (size_t c = 0; c < context.size(); ++c) {
      const std::string cw = where + ": context[" + std::to_string(c) + "]";
      const Json& para = context[c];
      FM_CHECK(para.is_array() && para.size() == 2 && para[0].is_string() && para[1].is_array(),
               ErrorCode::kFormat, cw, " must be [title, [sentences...]], got ", para.dump().substr(0, 80));
      std::string doc = para[0].get<std::string>() + "\n";
      bool first = true;
      for (size_t k = 0; k < para[1].size(); ++k) {
        const std::string sentence = detail::json_string_at(para[1], k, cw, "sentences");
        // The data's sentences carry their own leading spaces; add one where they do not.
        if (!first && !sentence.empty() && !std::isspace(static_cast<unsigned char>(sentence[0])) &&
            !std::isspace(static_cast<unsigned char>(doc.back())))
          doc += ' ';
        doc += sentence;
        first = false;
      }
      const size_t d = docs.add(std::move(doc));
      if (std::find(item.gold.begin(), item.gold.end(), d) == item.gold.end()) item.gold.push_back(d);
    }
    set.items.push_back(std::move(item));
  }
  FM_CHECK(!set.empty(), ErrorCode::kFormat, source, ": no question found (expected a JSON array)");
  return set;
}

RulerQaSet load_ruler_hotpotqa(const std::string& path) {
  return parse_ruler_hotpotqa(detail::read_text_file(path), path);
}

}  // namespace flashmem::eval

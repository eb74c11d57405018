// flashmem/eval/ruler.h — our own implementation of RULER-style synthetic long-context tasks
// (needle-in-a-haystack, variable tracking, common/frequent word extraction, QA) and their
// scorers.
//
// Every prompt is fitted in the evaluated model's own tokens: the number of haystack units is
// binary-searched so that n_tokens(prompt, chat template included) + tokens_to_generate <= the
// target length, taking the largest count that fits. Generation is deterministic given
// (task, length, seed, sample index).
//
// Labelled deviations from upstream RULER:
//  * the "essay" haystack is not Paul Graham's essays (not redistributable): it is public-domain
//    prose from a plain-text file named by FLASHMEM_RULER_PROSE, or, when none is given,
//    pseudo-prose sentences generated deterministically from the word list. Debian's
//    bible-kjv-text ships the King James Bible only in a compressed binary (/usr/lib/bible.data);
//    dump it to text with the `bible` tool of package bible-kjv, stripping the verse labels:
//      bible -f Gen1:1-Rev22:21 | sed -E 's/^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ //' > kjv.txt
//    (a labelled RULER variant either way; scores are not comparable with upstream essays);
//  * qa_1 / qa_2 use SQuAD v2 dev / HotpotQA dev-distractor when the user supplies the files
//    (RulerSources::squad / hotpotqa, from FLASHMEM_RULER_SQUAD / FLASHMEM_RULER_HOTPOTQA in
//    load_default): the question's gold paragraph(s) plus distractor paragraphs of other
//    questions, as "Document i:". Without a file they use synthetic generated documents
//    instead (RulerSample::synthetic_substitute = true).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace flashmem {
class Tokenizer;
class ChatTemplate;
}  // namespace flashmem

namespace flashmem::eval {

// A QA data set for qa_1 / qa_2: unique paragraphs and the answerable questions over them.
struct RulerQaSet {
  struct Item {
    std::string question;
    std::vector<std::string> answers;  // accepted answers (string_match_part), deduplicated
    std::vector<size_t> gold;          // indices into `docs` of the question's own paragraphs
  };
  std::string source;              // the file it was read from
  std::vector<std::string> docs;   // unique paragraphs; every one can serve as a distractor
  std::vector<Item> items;

  bool empty() const { return items.empty(); }
};

// SQuAD v2 JSON (`data[].paragraphs[].{context, qas[].{question, answers[].text,
// is_impossible}}`): every paragraph becomes a document; answerable questions only (a missing
// is_impossible means answerable). The gold document is the question's paragraph.
RulerQaSet parse_ruler_squad(const std::string& text, const std::string& source);
RulerQaSet load_ruler_squad(const std::string& path);
// HotpotQA distractor-setting JSON (array of `{question, answer, context: [[title,
// [sentences...]], ...]}`, JSON Lines also accepted): every paragraph becomes the document
// "title\nsentences"; the gold documents are all paragraphs of the question's own context.
RulerQaSet parse_ruler_hotpotqa(const std::string& text, const std::string& source);
RulerQaSet load_ruler_hotpotqa(const std::string& path);
// Both: Error(kIo) when the file cannot be read; Error(kFormat) naming the file, the record
// (path inside the JSON or record index) and the field for malformed input, or when the file
// holds no usable question.

struct RulerSources {
  std::vector<std::string> words;  // lowercase alphabetic words (keys, values, word lists)
  std::string prose;               // haystack prose, sentences separated by whitespace
  RulerQaSet squad;                // qa_1 data; empty: synthetic substitute
  RulerQaSet hotpotqa;             // qa_2 data; empty: synthetic substitute

  // Words from Debian `wamerican` (/usr/share/dict/american-english), filtered to lowercase
  // alphabetic words. Prose from the plain-text file named by FLASHMEM_RULER_PROSE when set,
  // otherwise generated from the words. Error(kIo) naming the package/file when missing.
  // SQuAD / HotpotQA from the files named by FLASHMEM_RULER_SQUAD / FLASHMEM_RULER_HOTPOTQA
  // when set (errors as for load_ruler_squad / load_ruler_hotpotqa), otherwise left empty.
  static RulerSources load_default();
  // Deterministic pseudo-prose built from `words` (about `n_sentences` sentences).
  static std::string synth_prose(const std::vector<std::string>& words, int64_t n_sentences);
};

struct RulerSample {
  std::string task;
  int64_t target_length = 0;
  int64_t index = 0;
  uint64_t seed = 0;
  std::string prompt;  // full text, chat template included when one is given
  std::vector<std::string> answers;
  int tokens_to_generate = 0;
  std::string metric;  // "all" | "part"
  int64_t n_tokens = 0;
  double depth = -1.0;  // depth of the first needle in percent of the context, or -1
  bool synthetic_substitute = false;  // qa_1 / qa_2 built from synthetic documents (no data file)
  // Byte range [context_begin, context_end) of the haystack (needles included) in `prompt`.
  int64_t context_begin = 0;
  int64_t context_end = 0;
};

// The 13 task names, in canonical order.
const std::vector<std::string>& ruler_tasks();

class RulerGenerator {
 public:
  // `chat` may be null: the prompt is then the raw text followed by the answer prefix.
  // `tok` and `chat` must outlive the generator.
  RulerGenerator(const Tokenizer& tok, const ChatTemplate* chat, RulerSources src);

  // Error(kInvalidArgument) for an unknown task; Error(kOutOfRange) when `length` cannot hold
  // the question and needles with an empty haystack.
  RulerSample generate(const std::string& task, int64_t length, uint64_t seed,
                       int64_t index) const;

 private:
  const Tokenizer* tok_;
  const ChatTemplate* chat_;
  RulerSources src_;
  std::vector<std::string> prose_sentences_;
};

// Fraction of refs found (case-insensitive substring) in the prediction, in [0, 1]; 0 for no refs.
double score_string_match_all(const std::string& prediction, const std::vector<std::string>& refs);
// 1 if any ref is found (case-insensitive substring), else 0.
double score_string_match_part(const std::string& prediction, const std::vector<std::string>& refs);

}  // namespace flashmem::eval

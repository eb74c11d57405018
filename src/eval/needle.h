// flashmem/eval/needle.h — needle retrieval over any folder of text files ("families").
//
// A family is a directory of text (man pages, source code, CSV, logs, ...), named by the
// directory's basename. Its files are read recursively in sorted path order; files that are
// empty, binary (a NUL byte, or other C0 control bytes than tab, newline, carriage return and
// form feed in more than 0.1% of it; fewer are dropped) or not UTF-8 are skipped; at most
// `max_bytes` of text are kept per family (the last file cut at a line end). The text is
// cut into units that keep its own shape: a paragraph (lines up to a blank line) is one unit
// when it holds at most kNeedleUnitBytes, otherwise each of its lines is a unit, and a longer
// line is cut at a sentence end or a space. Each unit remembers the separator that
// followed it ("\n\n", "\n" or " "), so code stays code and CSV rows stay rows.
//
// A sample takes a contiguous run of units starting at a seeded offset (wrapping at the end
// of the family) and inserts one needle (two for multi-hop) at a seeded depth, at the unit
// boundary closest to it in bytes. The needle's shape is one of needle_shapes(), rotating with
// the sample index from a seeded start, so any 6 consecutive samples hold every shape once:
//   number    "The access code for the <key> archive is 4812937."
//   word      "The password of the <key> club is <word>."
//   name      "The keeper of the <Key> lighthouse is <First> <Last>."
//   date      "The <key> treaty was signed on March 14, 1867."
//   code      "The function that resets the <key> cache is named reset_<word>_<word>_v3."
//   multihop  "The <key> ledger is stored in box 48213." and "Box 48213 is kept in the <word>
//             room." at two independent depths; the question asks for the ledger's room.
// Keys and word values are drawn from the RULER word list (Debian wamerican, blocklist
// applied). A value is redrawn until it occurs nowhere in the sample's haystack window or in
// the fixed text (case-insensitively), so the answer occurs exactly once in the prompt (the
// multi-hop box number exactly twice, in its two needles).
//
// The prompt is an instruction, the haystack, then the question, in the chat template, followed
// by an answer prefix (as RULER does); the number of units is binary-searched so that
// n_tokens(prompt) + tokens_to_generate <= the target length in the model's own tokens.
// Generation is deterministic given (family name and text, length, seed, index). Text that
// spells one of the tokenizer's special tokens (e.g. "<|im_end|>") is broken with a space so
// a haystack can never open or close a chat turn. Scoring: score_string_match_part.
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

inline constexpr size_t kNeedleUnitBytes = 400;
inline constexpr int64_t kNeedleFamilyMaxBytes = int64_t{8} << 20;  // 8 MiB per family

struct NeedleUnit {
  std::string text;
  // What followed it in the source: "\n\n" (paragraph or file end), "\n", " " or "" (a
  // line without spaces cut at the byte limit).
  std::string sep;
};

struct NeedleFamily {
  std::string name;  // the directory's basename
  std::string dir;
  std::vector<NeedleUnit> units;
  int64_t files_read = 0;     // files whose text was used (the last one perhaps in part)
  int64_t files_skipped = 0;  // empty, binary or non-UTF-8 files
  int64_t bytes = 0;          // bytes of text kept
};

// Reads one family. Error(kIo) when `dir` does not exist, is not a directory or a file cannot
// be read; Error(kFormat) when it holds no usable text (naming how many files were skipped).
NeedleFamily load_needle_family(const std::string& dir, int64_t max_bytes = kNeedleFamilyMaxBytes);
// Several families, in the given order; Error(kInvalidArgument) when two directories have the
// same basename (a family is named by it) or none is given.
std::vector<NeedleFamily> load_needle_families(const std::vector<std::string>& dirs,
                                               int64_t max_bytes = kNeedleFamilyMaxBytes);

// Units of one text, as load_needle_family cuts a file (exposed for tests).
std::vector<NeedleUnit> split_needle_units(const std::string& text);

// "number", "word", "name", "date", "code", "multihop".
const std::vector<std::string>& needle_shapes();

struct NeedleSample {
  std::string family;
  std::string shape;
  int64_t target_length = 0;
  int64_t index = 0;
  uint64_t seed = 0;
  std::string prompt;                // chat template and answer prefix included
  std::string question;
  std::vector<std::string> needles;  // the inserted sentences, key needle first
  std::vector<std::string> answers;  // answers[0] is the value; a date also accepts "14 March 1867"
  int tokens_to_generate = 0;
  int64_t n_tokens = 0;
  double depth = 0.0;  // depth of the key needle in percent of the haystack
  int64_t haystack_units = 0;  // units in the fitted haystack (needles not counted)
  // Byte range [context_begin, context_end) of the haystack (needles included) in `prompt`.
  int64_t context_begin = 0;
  int64_t context_end = 0;
};

class NeedleGenerator {
 public:
  // `words`: lowercase key/value words (RulerSources::load_default().words), at least 1000.
  // `chat` may be null (raw text followed by the answer prefix). `tok` and `chat` must outlive
  // the generator.
  NeedleGenerator(const Tokenizer& tok, const ChatTemplate* chat, std::vector<std::string> words);

  // Error(kOutOfRange) when `length` cannot hold the question and needles with an empty
  // haystack; Error(kInvalidArgument) for a family without units.
  NeedleSample generate(const NeedleFamily& family, int64_t length, uint64_t seed, int64_t index) const;

 private:
  const Tokenizer* tok_;
  const ChatTemplate* chat_;
  std::vector<std::string> words_;
  std::vector<std::string> long_words_;  // 5 letters or more: word values
  std::vector<std::string> specials_;    // special-token texts to break in the haystack
};

}  // namespace flashmem::eval

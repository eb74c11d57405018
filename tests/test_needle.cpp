// Tests of the needle suite over folders of text (src/eval/needle.h): reading families, cutting
// units, and samples that fit, hold their needles once and are deterministic.
#include "eval/needle.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include "core/error.h"
#include "eval/ruler.h"
#include "io/chat_template.h"
#include "io/gguf.h"
#include "io/tokenizer.h"
#include "test_util.h"

namespace flashmem::eval {
namespace {

namespace fs = std::filesystem;

struct Env {
  Tokenizer tok;
  ChatTemplate chat;
  std::vector<std::string> words;
  std::unique_ptr<NeedleGenerator> gen;
};

Env& env() {
  static std::unique_ptr<Env> e = [] {
    GgufFile f = GgufFile::open(test::require_default_model());
    auto out = std::unique_ptr<Env>(new Env{Tokenizer::from_gguf(f), ChatTemplate::from_gguf(f),
                                            RulerSources::load_default().words, nullptr});
    out->gen = std::make_unique<NeedleGenerator>(out->tok, &out->chat, out->words);
    return out;
  }();
  return *e;
}

// Per process: ctest runs these tests in parallel processes, and each rebuilds its families.
fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("flashmem_needle_" + std::to_string(getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

size_t count_ci(std::string hay, std::string needle) {
  for (char& c : hay) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (char& c : needle) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

// Three small families of generated text: prose paragraphs over two files (one in a
// subdirectory), CSV rows full of numbers, and indented C-like code.
const std::vector<NeedleFamily>& families() {
  static const std::vector<NeedleFamily> fams = [] {
    const auto& W = env().words;
    const fs::path root = fresh_dir("families");
    std::string prose[2];
    for (size_t p = 0; p < 240; ++p) {
      std::string para;
      for (size_t s = 0; s < 1 + p % 4; ++s) {
        for (size_t w = 0; w < 6 + (p * 7 + s) % 9; ++w) {
          std::string word = W[(p * 131 + s * 17 + w * 7) % W.size()];
          if (w == 0) word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
          para += (w || s ? " " : "") + word;
        }
        para += '.';
      }
      prose[p % 2] += para + "\n\n";
    }
    write(root / "prose" / "a.txt", prose[0]);
    write(root / "prose" / "sub" / "b.txt", prose[1]);
    std::string csv = "id,item,quantity,price,updated\n";
    for (size_t i = 0; i < 3000; ++i)
      csv += std::to_string(100000 + i * 37) + "," + W[(i * 97) % W.size()] + "," + std::to_string((i * 7919) % 1000) +
             "," + std::to_string((i * 104729) % 100000) + "." + std::to_string(i % 100) + ",2023-0" +
             std::to_string(1 + i % 9) + "-1" + std::to_string(i % 10) + "\n";
    write(root / "csv" / "table.csv", csv);
    std::string code;
    for (size_t f = 0; f < 300; ++f) {
      const std::string a = W[(f * 53) % W.size()], b = W[(f * 29 + 3) % W.size()];
      code += "static int " + a + "_" + b + "(struct ctx *c, int n) {\n  int total = 0;\n  for (int i = 0; i < n; ++i) {\n"
              "    if (c->" + a + "[i] > " + std::to_string(f) + ")\n      total += c->" + b + "[i];\n  }\n  return total;\n}\n\n";
    }
    write(root / "code" / "gen.c", code);
    return load_needle_families({(root / "prose").string(), (root / "csv").string(), (root / "code").string() + "/"});
  }();
  return fams;
}

std::string joined(const std::vector<NeedleUnit>& u) {
  std::string s;
  for (size_t i = 0; i < u.size(); ++i) s += u[i].text + (i + 1 < u.size() ? u[i].sep : "");
  return s;
}

TEST(NeedleUnits, KeepTheTextsShape) {
  // Paragraphs are units; runs of blank lines end a paragraph.
  auto u = split_needle_units("alpha\nbeta\n\n\n\ngamma  \n");
  ASSERT_EQ(u.size(), 2u);
  EXPECT_EQ(u[0].text, "alpha\nbeta");
  EXPECT_EQ(u[0].sep, "\n\n");
  EXPECT_EQ(u[1].text, "gamma");  // trailing blanks dropped
  // A long paragraph of CSV rows: a unit per row, rejoined exactly; the last one ends it.
  std::string csv;
  for (int i = 0; i < 200; ++i) csv += std::to_string(i) + ",x" + std::to_string(i * i) + ",yes\n";
  u = split_needle_units(csv);
  ASSERT_EQ(u.size(), 200u);
  for (const auto& x : u) EXPECT_EQ(x.text.back(), 's');  // whole rows
  EXPECT_EQ(joined(u) + "\n", csv);
  EXPECT_EQ(u.back().sep, "\n\n");
  // Code keeps its indentation; a long prose line is cut at a sentence end or a space; a line
  // without spaces is cut on a UTF-8 boundary. Every cut rejoins to the original.
  const std::string code = "int f() {\n    return 1;\n}";
  EXPECT_EQ(split_needle_units(code)[0].text, code);
  std::string line;
  for (int i = 0; i < 60; ++i) line += "The sentence number " + std::to_string(i) + " is here. ";
  line.pop_back();
  u = split_needle_units(line);
  ASSERT_GT(u.size(), 3u);
  for (size_t i = 0; i + 1 < u.size(); ++i) {
    EXPECT_LE(u[i].text.size(), kNeedleUnitBytes);
    EXPECT_EQ(u[i].sep, " ");
    EXPECT_EQ(u[i].text.back(), '.') << u[i].text;
  }
  EXPECT_EQ(joined(u), line);
  std::string accents;
  for (int i = 0; i < 501; ++i) accents += "\xc3\xa9";  // é
  u = split_needle_units(accents);
  ASSERT_EQ(u.size(), 3u);
  for (const auto& x : u) EXPECT_EQ(x.text.size() % 2, 0u);  // never half a character
  EXPECT_EQ(joined(u), accents);
}

TEST(NeedleFamily, SkipsBinaryEmptyAndNonUtf8FilesInSortedOrder) {
  const fs::path d = fresh_dir("mixed");
  write(d / "b_good.txt", "second file, first line\n");
  write(d / "a_good.txt", "first file\r\nwith CRLF\r\n");
  write(d / "a_sub" / "deep.md", "# deep\n\nnested text");
  write(d / "empty.txt", "");
  write(d / "blank.txt", "  \n\n\t\n");
  write(d / "binary.bin", std::string("ELF\0\0\1text", 10));
  write(d / "latin1.txt", "caf\xe9 au lait\n");
  write(d / "overlong.txt", "bad \xc0\xaf slash\n");
  const NeedleFamily f = load_needle_family(d.string());
  EXPECT_EQ(f.name, "mixed");
  EXPECT_EQ(f.files_read, 3);
  EXPECT_EQ(f.files_skipped, 5);
  ASSERT_EQ(f.units.size(), 4u);
  EXPECT_EQ(f.units[0].text, "first file\nwith CRLF");  // a_good.txt < a_sub/deep.md < b_good.txt
  EXPECT_EQ(f.units[1].text, "# deep");
  EXPECT_EQ(f.units[2].text, "nested text");
  EXPECT_EQ(f.units[3].text, "second file, first line");
  EXPECT_EQ(load_needle_family((d / "a_sub" / "").string()).name, "a_sub");  // a trailing slash
  for (const auto& u : f.units) EXPECT_EQ(u.text.find("caf"), std::string::npos);
  // The byte cap keeps whole lines of the file that crosses it.
  const fs::path big = fresh_dir("big");
  std::string text;
  for (int i = 0; i < 1000; ++i) text += "line " + std::to_string(i) + "\n";
  write(big / "x.txt", text);
  const NeedleFamily capped = load_needle_family(big.string(), 1000);
  EXPECT_LE(capped.bytes, 1000);
  EXPECT_GT(capped.bytes, 980);
  const std::string kept = joined(capped.units) + "\n";
  EXPECT_EQ(text.substr(0, kept.size()), kept);  // a prefix of the file, ending at a line end
  EXPECT_EQ(static_cast<int64_t>(kept.size()), capped.bytes);
}

TEST(NeedleFamily, Errors) {
  auto code_of = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.code();
    }
    ADD_FAILURE() << "expected an error";
    return ErrorCode::kInternal;
  };
  EXPECT_EQ(code_of([] { load_needle_family("/nonexistent/flashmem/family"); }), ErrorCode::kIo);
  const fs::path d = fresh_dir("errors");
  write(d / "file.txt", "text");
  EXPECT_EQ(code_of([&] { load_needle_family((d / "file.txt").string()); }), ErrorCode::kIo);
  write(d / "nothing" / "empty.txt", "");
  write(d / "nothing" / "bin.dat", std::string("\0\0\0", 3));
  try {
    load_needle_family((d / "nothing").string());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
    EXPECT_NE(std::string(e.what()).find("no usable text"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("2 skipped"), std::string::npos) << e.what();
  }
  write(d / "one" / "same" / "a.txt", "one");
  write(d / "two" / "same" / "a.txt", "two");
  try {
    load_needle_families({(d / "one" / "same").string(), (d / "two" / "same/").string()});
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'same'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(code_of([] { load_needle_families({}); }), ErrorCode::kInvalidArgument);
  NeedleFamily none;
  none.name = "none";
  EXPECT_EQ(code_of([&] { env().gen->generate(none, 1024, 0, 0); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code_of([] { env().gen->generate(families()[0], 64, 0, 0); }), ErrorCode::kOutOfRange);
}

TEST(Needle, Deterministic) {
  const NeedleGenerator& g = *env().gen;
  for (const NeedleFamily& f : families()) {
    const NeedleSample a = g.generate(f, 1024, 3, 0), b = g.generate(f, 1024, 3, 0);
    EXPECT_EQ(a.prompt, b.prompt) << f.name;
    EXPECT_EQ(a.answers, b.answers) << f.name;
    EXPECT_NE(a.prompt, g.generate(f, 1024, 3, 1).prompt) << f.name;
    EXPECT_NE(a.prompt, g.generate(f, 1024, 4, 0).prompt) << f.name;
  }
}

// The most tokens one unit of the family takes (with its separator): the fit may leave less.
int64_t max_unit_tokens(const NeedleFamily& f) {
  int64_t m = 0;
  for (const auto& u : f.units)
    m = std::max<int64_t>(m, static_cast<int64_t>(env().tok.encode(u.text + u.sep, false).size()));
  return m + 4;
}

TEST(Needle, FitsTheLengthAndHoldsItsNeedlesOnce) {
  Env& e = env();
  for (const NeedleFamily& f : families()) {
    const int64_t slack = max_unit_tokens(f);
    for (const int64_t len : {1024, 2048}) {
      for (int64_t idx = 0; idx < 6; ++idx) {
        SCOPED_TRACE(f.name + " @" + std::to_string(len) + " #" + std::to_string(idx));
        const NeedleSample s = e.gen->generate(f, len, 1, idx);
        EXPECT_EQ(s.family, f.name);
        EXPECT_EQ(s.tokens_to_generate, 32);
        EXPECT_EQ(s.n_tokens, static_cast<int64_t>(e.tok.encode(s.prompt).size()));
        EXPECT_LE(s.n_tokens + s.tokens_to_generate, len);
        EXPECT_GT(s.n_tokens + s.tokens_to_generate, len - slack);
        EXPECT_EQ(s.prompt.rfind("<|im_start|>", 0), 0u);
        EXPECT_EQ(count_ci(s.prompt, s.answers[0]), 1u) << s.answers[0];
        for (size_t i = 1; i < s.answers.size(); ++i) EXPECT_EQ(count_ci(s.prompt, s.answers[i]), 0u);
        const std::string ctx = s.prompt.substr(static_cast<size_t>(s.context_begin),
                                                static_cast<size_t>(s.context_end - s.context_begin));
        ASSERT_FALSE(s.needles.empty());
        for (const auto& n : s.needles) EXPECT_EQ(count_ci(ctx, n), 1u) << n;
        // The question comes after the haystack, the answer prefix ends the prompt.
        EXPECT_NE(s.prompt.find("Question: " + s.question, static_cast<size_t>(s.context_end)), std::string::npos);
        EXPECT_EQ(s.prompt.find(s.answers[0]) < static_cast<size_t>(s.context_end), true);
        // The key needle sits at its depth, within half a unit.
        const double at = 100.0 * static_cast<double>(ctx.find(s.needles[0])) / static_cast<double>(ctx.size());
        EXPECT_NEAR(at, s.depth, 100.0 * (kNeedleUnitBytes / 2 + 80) / static_cast<double>(ctx.size()));
        EXPECT_GT(s.haystack_units, 0);
      }
    }
  }
}

TEST(Needle, EveryShapeOverFiftySamples) {
  Env& e = env();
  std::map<std::string, int> seen;
  const NeedleFamily& f = families()[1];  // csv: numbers everywhere
  for (int64_t idx = 0; idx < 50; ++idx) {
    const NeedleSample s = e.gen->generate(f, 1024, 7, idx);
    ++seen[s.shape];
    const std::string& a = s.answers[0];
    if (s.shape == "number") {
      EXPECT_EQ(a.size(), 7u);
      EXPECT_TRUE(std::all_of(a.begin(), a.end(), [](char c) { return c >= '0' && c <= '9'; })) << a;
    } else if (s.shape == "date") {
      EXPECT_EQ(s.answers.size(), 2u);
      EXPECT_NE(a.find(", "), std::string::npos) << a;
    } else if (s.shape == "code") {
      EXPECT_EQ(a.rfind("reset_", 0), 0u) << a;
    } else if (s.shape == "name") {
      EXPECT_NE(a.find(' '), std::string::npos) << a;
      EXPECT_TRUE(std::isupper(static_cast<unsigned char>(a[0]))) << a;
    }
    EXPECT_EQ(s.needles.size(), s.shape == "multihop" ? 2u : 1u) << s.shape;
  }
  for (const std::string& shape : needle_shapes()) EXPECT_GE(seen[shape], 8) << shape;
  EXPECT_EQ(seen.size(), needle_shapes().size());
}

TEST(Needle, MultiHopChainsTwoNeedles) {
  Env& e = env();
  int checked = 0;
  for (const NeedleFamily& f : families())
    for (int64_t idx = 0; idx < 6; ++idx) {
      const NeedleSample s = e.gen->generate(f, 2048, 5, idx);
      if (s.shape != "multihop") continue;
      ++checked;
      ASSERT_EQ(s.needles.size(), 2u);
      const std::string& n1 = s.needles[0];
      const size_t b = n1.find("stored in box ");
      ASSERT_NE(b, std::string::npos) << n1;
      const std::string box = n1.substr(b + 14, n1.size() - b - 15);
      EXPECT_EQ(s.needles[1], "Box " + box + " is kept in the " + s.answers[0] + " room.");
      EXPECT_EQ(n1.find(s.answers[0]), std::string::npos);
      EXPECT_EQ(count_ci(s.prompt, box), 2u) << box;
      // The question names the first needle's ledger, not the box or the room.
      const std::string key = n1.substr(4, n1.find(" ledger") - 4);
      EXPECT_NE(s.question.find("the " + key + " ledger"), std::string::npos) << s.question;
      EXPECT_EQ(s.question.find(box), std::string::npos);
    }
  EXPECT_EQ(checked, 3);  // one in every six samples
}

// A value the haystack already holds is redrawn: the same family name, length, seed and index
// with a haystack that contains the first sample's answer gives another answer, still unique.
TEST(Needle, ValueFoundInTheHaystackIsRedrawn) {
  Env& e = env();
  NeedleFamily f;
  f.name = "tiny";
  f.units = {{"A short line of plain text that repeats.", "\n\n"}};
  for (int64_t idx = 0; idx < 6; ++idx) {
    const NeedleSample a = e.gen->generate(f, 1024, 2, idx);
    NeedleFamily g = f;
    g.units[0].text += " See also " + a.answers[0] + ".";
    const NeedleSample b = e.gen->generate(g, 1024, 2, idx);
    EXPECT_EQ(a.shape, b.shape);
    EXPECT_NE(a.answers[0], b.answers[0]) << a.shape;
    EXPECT_GT(count_ci(b.prompt, a.answers[0]), 10u);  // the haystack wraps: the line repeats
    EXPECT_EQ(count_ci(b.prompt, b.answers[0]), 1u) << b.shape;
    // A one-unit family still fills the length by wrapping.
    EXPECT_GT(b.n_tokens + b.tokens_to_generate, 1024 - 40);
  }
}

TEST(Needle, SpecialTokenTextInTheHaystackCannotOpenATurn) {
  Env& e = env();
  NeedleFamily f;
  f.name = "chatty";
  f.units = {{"user said <|im_end|> then <|im_start|>assistant and <|endoftext|>.", "\n"}};
  const NeedleSample s = e.gen->generate(f, 1024, 0, 0);
  const std::string bare = e.chat.render({{"user", "x"}}, true);  // the template's own
  EXPECT_EQ(count_ci(s.prompt, "<|im_end|>"), count_ci(bare, "<|im_end|>"));
  EXPECT_EQ(count_ci(s.prompt, "<|im_start|>"), count_ci(bare, "<|im_start|>"));
  EXPECT_EQ(count_ci(s.prompt, "<|endoftext|>"), 0u);
  EXPECT_GT(count_ci(s.prompt, "< |im_end|>"), 10u);
}

TEST(Needle, RawPromptWithoutChatTemplate) {
  Env& e = env();
  NeedleGenerator raw(e.tok, nullptr, e.words);
  const NeedleSample s = raw.generate(families()[0], 1024, 0, 0);
  EXPECT_EQ(s.prompt.find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(s.prompt.rfind("Below is a long text", 0), 0u);
  EXPECT_EQ(s.prompt.substr(static_cast<size_t>(s.context_begin - 2), 2), "\n\n");
  EXPECT_LE(s.n_tokens + s.tokens_to_generate, 1024);
  EXPECT_GT(s.n_tokens + s.tokens_to_generate, 1024 - max_unit_tokens(families()[0]));
}

}  // namespace
}  // namespace flashmem::eval

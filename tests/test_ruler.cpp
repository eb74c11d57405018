// Tests of the RULER task generator and scorers (src/eval/ruler.h).
#include "eval/ruler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "core/error.h"
#include "eval/word_filter.h"
#include "io/chat_template.h"
#include "io/gguf.h"
#include "io/tokenizer.h"
#include "test_util.h"

namespace flashmem::eval {
namespace {

struct Env {
  Tokenizer tok;
  ChatTemplate chat;
  std::unique_ptr<RulerGenerator> gen_ptr;
  const RulerGenerator& gen() const { return *gen_ptr; }
};

Env& env() {
  static std::unique_ptr<Env> e = [] {
    GgufFile f = GgufFile::open(test::require_default_model());
    auto out = std::unique_ptr<Env>(
        new Env{Tokenizer::from_gguf(f), ChatTemplate::from_gguf(f), nullptr});
    // Synthetic prose whatever FLASHMEM_RULER_PROSE says, so the slack bounds below hold.
    RulerSources src = RulerSources::load_default();
    src.prose = RulerSources::synth_prose(src.words, 8000);
    out->gen_ptr = std::make_unique<RulerGenerator>(out->tok, &out->chat, std::move(src));
    return out;
  }();
  return *e;
}

size_t count_of(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

// Largest accepted gap between n_tokens + tokens_to_generate and the target: about one
// haystack unit of the task (noise sentence, coded word, three list entries, prose sentence or
// document, distractor needle with two UUIDs).
int64_t max_slack(const std::string& task) {
  if (task == "niah_single_1" || task == "vt" || task == "fwe") return 16;
  if (task == "cwe") return 32;
  if (task == "niah_multikey_3") return 100;
  return 80;
}

TEST(Ruler, EveryTaskFitsAndIsRecoverable) {
  Env& e = env();
  for (const int64_t len : {4096, 8192}) {
    for (const std::string& task : ruler_tasks()) {
     int64_t worst = 0;
     for (int64_t idx = 0; idx < 4; ++idx) {
      SCOPED_TRACE(task + " @" + std::to_string(len) + " #" + std::to_string(idx));
      const RulerSample s = e.gen().generate(task, len, 7, idx);
      EXPECT_EQ(s.task, task);
      EXPECT_EQ(s.n_tokens, static_cast<int64_t>(e.tok.encode(s.prompt).size()));
      const int64_t used = s.n_tokens + s.tokens_to_generate;
      EXPECT_LE(used, len);
      EXPECT_GT(used, len - max_slack(task));
      worst = std::max(worst, len - used);
      ASSERT_FALSE(s.answers.empty());
      const std::string ctx =
          s.prompt.substr(static_cast<size_t>(s.context_begin),
                          static_cast<size_t>(s.context_end - s.context_begin));
      for (const auto& a : s.answers) EXPECT_NE(ctx.find(a), std::string::npos) << a;
      EXPECT_EQ(s.metric, task.rfind("qa_", 0) == 0 ? "part" : "all");
      EXPECT_EQ(s.synthetic_substitute, task.rfind("qa_", 0) == 0);
      EXPECT_EQ(s.prompt.rfind("<|im_start|>", 0), 0u);
      if (task.rfind("niah_", 0) == 0) {
        // Each answer's needle sentence appears exactly once.
        for (const auto& a : s.answers) {
          const size_t p = ctx.find(a);
          const size_t st = ctx.rfind("One of the special magic", p);
          ASSERT_NE(st, std::string::npos);
          const std::string sentence = ctx.substr(st, p + a.size() + 1 - st);
          EXPECT_EQ(count_of(s.prompt, sentence), 1u) << sentence;
        }
      }
      if (s.depth >= 0) {
        // The first needle (answer 0 for niah/qa_1, the chain start for vt) sits at the depth.
        std::string first = s.answers[0];
        if (task == "vt") first = "VAR " + s.answers[0] + " = ";
        if (task == "qa_2") first = "The capital of the republic of";
        size_t p = ctx.find(first);
        if (task == "qa_2") {
          // The gold capital document is the one naming the asked republic.
          const std::string q = s.prompt.substr(s.prompt.rfind("the capital of the republic of ") + 31);
          const std::string country = q.substr(0, q.find('?'));
          p = ctx.find("The capital of the republic of " + country + " is");
        }
        ASSERT_NE(p, std::string::npos);
        const double measured = 100.0 * static_cast<double>(p) / static_cast<double>(ctx.size());
        EXPECT_NEAR(measured, s.depth, 3.0);
      }
     }
     std::printf("[ruler] %-16s len %5lld max slack over 4 samples %lld\n", task.c_str(),
                 static_cast<long long>(len), static_cast<long long>(worst));
    }
  }
}

TEST(Ruler, Deterministic) {
  Env& e = env();
  for (const std::string task : {"niah_multikey_2", "cwe", "fwe", "qa_2"}) {
    const RulerSample a = e.gen().generate(task, 4096, 11, 0);
    const RulerSample b = e.gen().generate(task, 4096, 11, 0);
    const RulerSample c = e.gen().generate(task, 4096, 11, 1);
    EXPECT_EQ(a.prompt, b.prompt) << task;
    EXPECT_EQ(a.answers, b.answers) << task;
    EXPECT_NE(a.prompt, c.prompt) << task;
  }
}

TEST(Ruler, RawPromptWithoutChatTemplate) {
  Env& e = env();
  RulerGenerator raw(e.tok, nullptr, RulerSources::load_default());
  const RulerSample s = raw.generate("niah_single_1", 2048, 1, 0);
  EXPECT_EQ(s.prompt.find("<|im_start|>"), std::string::npos);
  EXPECT_LE(s.n_tokens + s.tokens_to_generate, 2048);
  EXPECT_NE(s.prompt.find(s.answers[0]), std::string::npos);
}

TEST(Ruler, DepthHoldsForUnevenSentences) {
  Env& e = env();
  RulerSources src = RulerSources::load_default();
  // Prose whose sentences range from 1 to 80 words: unit counts and text length diverge.
  std::string prose;
  for (size_t i = 0; i < 3000; ++i) {
    const size_t len = 1 + (i * 37) % 80;
    for (size_t w = 0; w < len; ++w) prose += (w ? " " : (i ? " " : "")) + src.words[(i * 131 + w * 7) % src.words.size()];
    prose += '.';
  }
  src.prose = prose;
  RulerGenerator gen(e.tok, &e.chat, std::move(src));
  for (int64_t idx = 0; idx < 6; ++idx) {
    const RulerSample s = gen.generate("niah_single_2", 4096, 5, idx);
    const std::string ctx = s.prompt.substr(static_cast<size_t>(s.context_begin),
                                            static_cast<size_t>(s.context_end - s.context_begin));
    const size_t p = ctx.find(s.answers[0]);
    ASSERT_NE(p, std::string::npos);
    EXPECT_NEAR(100.0 * static_cast<double>(p) / static_cast<double>(ctx.size()), s.depth, 3.0) << idx;
    EXPECT_LE(s.n_tokens + s.tokens_to_generate, 4096);
  }
}

// Counts of whitespace-separated tokens in a text.
std::map<std::string, int> word_counts(const std::string& text) {
  std::map<std::string, int> m;
  std::istringstream in(text);
  for (std::string w; in >> w;) ++m[w];
  return m;
}

TEST(Ruler, WordTasksAnswersMatchCounts) {
  Env& e = env();
  {
    const RulerSample s = e.gen().generate("cwe", 4096, 2, 0);
    const auto m = word_counts(s.prompt.substr(static_cast<size_t>(s.context_begin),
                                               static_cast<size_t>(s.context_end - s.context_begin)));
    ASSERT_EQ(s.answers.size(), 10u);
    for (const auto& a : s.answers) EXPECT_EQ(m.at(a), 30) << a;
    for (const auto& [w, c] : m) {
      if (std::find(s.answers.begin(), s.answers.end(), w) == s.answers.end()) {
        EXPECT_LE(c, 3) << w;  // list numbers "k." occur once, other words three times
      }
    }
  }
  {
    const RulerSample s = e.gen().generate("fwe", 4096, 2, 0);
    auto m = word_counts(s.prompt.substr(static_cast<size_t>(s.context_begin),
                                         static_cast<size_t>(s.context_end - s.context_begin)));
    ASSERT_EQ(s.answers.size(), 3u);
    const int dots = m.at("....");
    m.erase("....");
    std::vector<int> counts;
    for (const auto& [w, c] : m) counts.push_back(c);
    std::sort(counts.rbegin(), counts.rend());
    ASSERT_GE(counts.size(), 4u);
    EXPECT_GE(dots, counts[0]);
    for (size_t k = 0; k < 3; ++k) EXPECT_EQ(m.at(s.answers[k]), counts[k]) << s.answers[k];
  }
}

TEST(WordFilter, HashesAndBlocklist) {
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);  // the FNV-1a 64 offset basis
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);  // FNV reference test vector
  const auto h = blocked_word_hashes();
  ASSERT_GE(h.size(), 500u);
  EXPECT_TRUE(std::is_sorted(h.begin(), h.end()));
  EXPECT_TRUE(std::adjacent_find(h.begin(), h.end()) == h.end());
  EXPECT_FALSE(is_blocked_word("haystack"));
  EXPECT_FALSE(is_blocked_word("needle"));
  EXPECT_FALSE(is_blocked_word(""));
  // A word is blocked exactly when its lowercase hash is on the list.
  for (const char* w : {"haystack", "Needle", "ZEBRA", "a"}) {
    std::string low = w;
    for (char& c : low) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    EXPECT_EQ(is_blocked_word(w), std::binary_search(h.begin(), h.end(), fnv1a64(low))) << w;
  }
}

// The Debian list holds blocked words; the generator's word pool holds none, and no generated
// word-task prompt contains one (case-insensitively).
TEST(WordFilter, GeneratorNeverDrawsABlockedWord) {
  std::ifstream in("/usr/share/dict/american-english");
  ASSERT_TRUE(in);
  int raw_blocked = 0;
  std::set<std::string> pool_kept, pool_blocked;  // the loader's criteria: 3-12 letters a-z
  for (std::string w; std::getline(in, w);) {
    raw_blocked += is_blocked_word(w);
    std::string up = w;
    for (char& c : up) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    ASSERT_EQ(is_blocked_word(w), is_blocked_word(up)) << "case matters for a word";
    if (w.size() >= 3 && w.size() <= 12 &&
        std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; }))
      (is_blocked_word(w) ? pool_blocked : pool_kept).insert(w);
  }
  EXPECT_GE(raw_blocked, 100);  // so the filter has something to do
  EXPECT_GE(pool_blocked.size(), 300u);  // 362 of 60,540 with wamerican 2020.12.07
  Env& e = env();
  const RulerSources src = RulerSources::load_default();
  for (const auto& w : src.words) ASSERT_FALSE(is_blocked_word(w));
  EXPECT_EQ(src.words.size(), pool_kept.size());  // the blocklist is the only other filter
  for (const char* task : {"cwe", "fwe", "vt", "niah_single_2", "niah_multivalue"})
    for (uint64_t seed : {0u, 3u, 11u})
      for (int i = 0; i < 3; ++i) {
        const RulerSample s = e.gen().generate(task, 4096, seed, i);
        for (const auto& a : s.answers) {
          std::string word;  // answers may be phrases; check each letter run
          for (char c : a + " ") {
            if (std::isalpha(static_cast<unsigned char>(c))) {
              word += c;
            } else {
              ASSERT_FALSE(!word.empty() && is_blocked_word(word))
                  << task << " seed " << seed << " sample " << i << " answer";
              word.clear();
            }
          }
        }
        std::string word;
        for (char c : s.prompt + " ") {
          if (std::isalpha(static_cast<unsigned char>(c))) {
            word += c;
          } else {
            ASSERT_FALSE(!word.empty() && is_blocked_word(word))
                << task << " seed " << seed << " sample " << i;
            word.clear();
          }
        }
      }
}

TEST(Ruler, ProseFileErrorNamesThePackage) {
  const char* old = std::getenv("FLASHMEM_RULER_PROSE");
  const std::string saved = old ? old : "";
  ::setenv("FLASHMEM_RULER_PROSE", "/nonexistent/flashmem-kjv.txt", 1);
  try {
    (void)RulerSources::load_default();
    ADD_FAILURE() << "expected an error";
  } catch (const Error& err) {
    EXPECT_EQ(err.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(err.what()).find("bible-kjv-text"), std::string::npos);
  }
  if (old) ::setenv("FLASHMEM_RULER_PROSE", saved.c_str(), 1);
  else ::unsetenv("FLASHMEM_RULER_PROSE");
}

TEST(Ruler, Errors) {
  Env& e = env();
  try {
    e.gen().generate("niah_single_9", 4096, 0, 0);
    FAIL() << "expected an error";
  } catch (const Error& err) {
    EXPECT_EQ(err.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(err.what()).find("niah_multiquery"), std::string::npos);
  }
  try {
    e.gen().generate("vt", 64, 0, 0);
    FAIL() << "expected an error";
  } catch (const Error& err) {
    EXPECT_EQ(err.code(), ErrorCode::kOutOfRange);
    EXPECT_NE(std::string(err.what()).find("at least"), std::string::npos);
  }
}

TEST(Ruler, Scorers) {
  const std::vector<std::string> refs = {"1234567", "Apple", "zebra"};
  EXPECT_DOUBLE_EQ(score_string_match_all("the numbers are 1234567, APPLE and Zebra.", refs), 1.0);
  EXPECT_NEAR(score_string_match_all("only apple here", refs), 1.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(score_string_match_all("123456", refs), 0.0);
  EXPECT_DOUBLE_EQ(score_string_match_all("anything", {}), 0.0);
  EXPECT_DOUBLE_EQ(score_string_match_part("I think ZEBRA", refs), 1.0);
  EXPECT_DOUBLE_EQ(score_string_match_part("nothing", refs), 0.0);
  EXPECT_DOUBLE_EQ(score_string_match_part("anything", {}), 0.0);
}

}  // namespace
}  // namespace flashmem::eval

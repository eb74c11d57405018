// flashmem/eval/ruler.cpp — RULER-style task generation (our own implementation and wording).
#include "eval/ruler.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>

#include "core/error.h"
#include "eval/seeding.h"
#include "io/chat_template.h"
#include "eval/word_filter.h"
#include "io/tokenizer.h"

namespace flashmem::eval {
namespace {

constexpr const char* kWordsPath = "/usr/share/dict/american-english";

using namespace seeding;  // eval/seeding.h
template <typename T>
void shuffle(std::vector<T>& v, Rng& r) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[uni(r, i)]);
}

double pick_depth(Rng& r) { return static_cast<double>(uni(r, 40)) * 100.0 / 39.0; }

std::string number7(Rng& r) { return std::to_string(1000000 + uni(r, 9000000)); }

std::string uuid(Rng& r) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  const uint64_t a = r(), b = r();
  for (int i = 0; i < 32; ++i) {
    unsigned nib = static_cast<unsigned>(((i < 16 ? a : b) >> (4 * (i % 16))) & 15u);
    if (i == 12) nib = 4;                  // version 4
    if (i == 16) nib = 8 | (nib & 3u);     // variant
    if (i == 8 || i == 12 || i == 16 || i == 20) s += '-';
    s += hex[nib];
  }
  return s;
}

std::string capitalize(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const std::vector<std::string>& noise_sentences() {
  static const std::vector<std::string> v = {"The grass is green.", "The sky is blue.",
                                             "The sun is yellow.", "Here we go.",
                                             "There and back again."};
  return v;
}

std::vector<std::string> split_sentences(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  bool space = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !cur.empty();
      continue;
    }
    if (space) cur += ' ';
    space = false;
    cur += c;
    const bool end = (c == '.' || c == '!' || c == '?') &&
                     (i + 1 == text.size() || std::isspace(static_cast<unsigned char>(text[i + 1])));
    if (end) {
      if (cur.size() >= 8) out.push_back(cur);
      cur.clear();
    }
  }
  return out;
}

// A needle and its depth in percent of the haystack text.
struct Needle {
  std::string text;
  double depth;
};

// Joins the first n units with `sep`, inserting each needle at the unit boundary closest (in
// bytes of haystack text) to its depth, so that depth holds for uneven unit lengths too.
std::string weave(const std::vector<std::string>& units, int64_t n, const std::vector<Needle>& needles,
                  const std::string& sep) {
  std::vector<size_t> prefix(static_cast<size_t>(n) + 1, 0);  // bytes before boundary i
  for (int64_t i = 0; i < n; ++i)
    prefix[static_cast<size_t>(i) + 1] = prefix[static_cast<size_t>(i)] + units[static_cast<size_t>(i)].size() + sep.size();
  std::vector<std::vector<const std::string*>> at(static_cast<size_t>(n) + 1);
  for (const Needle& nd : needles) {
    const double target = nd.depth / 100.0 * static_cast<double>(prefix.back());
    size_t p = static_cast<size_t>(std::lower_bound(prefix.begin(), prefix.end(), target) - prefix.begin());
    if (p > 0 && (p == prefix.size() ||
                  target - static_cast<double>(prefix[p - 1]) < static_cast<double>(prefix[p]) - target))
      --p;
    at[std::min(p, static_cast<size_t>(n))].push_back(&nd.text);
  }
  std::string out;
  auto add = [&](const std::string& s) {
    if (!out.empty()) out += sep;
    out += s;
  };
  for (int64_t i = 0; i <= n; ++i) {
    for (const std::string* s : at[static_cast<size_t>(i)]) add(*s);
    if (i < n) add(units[static_cast<size_t>(i)]);
  }
  return out;
}

// What a task needs for the length fit: fixed text around a context built from n units.
struct Plan {
  std::string head, tail, answer_prefix, metric = "all";
  std::vector<std::string> answers;
  int gen = 128;
  double depth = -1.0;
  bool synthetic = false;
  int64_t max_units = 1 << 20;
  std::function<std::string(int64_t)> context;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

RulerSources RulerSources::load_default() {
  RulerSources s;
  std::ifstream in(kWordsPath);
  FM_CHECK(in, ErrorCode::kIo, "RULER word list ", kWordsPath,
           " not found: install the Debian package wamerican");
  std::set<std::string> seen;
  for (std::string line; std::getline(in, line);) {
    if (line.size() < 3 || line.size() > 12) continue;
    if (!std::all_of(line.begin(), line.end(), [](char c) { return c >= 'a' && c <= 'z'; })) continue;
    if (is_blocked_word(line)) continue;  // offensive words are never drawn (word_filter.h)
    if (seen.insert(line).second) s.words.push_back(line);
  }
  FM_CHECK(s.words.size() >= 2000, ErrorCode::kIo, "RULER word list ", kWordsPath,
           " has too few lowercase words: reinstall the Debian package wamerican");
  if (const char* p = std::getenv("FLASHMEM_RULER_PROSE"); p && *p) {
    std::ifstream pf(p);
    FM_CHECK(pf, ErrorCode::kIo, "RULER prose file ", p,
             " (FLASHMEM_RULER_PROSE) not found; e.g. dump the KJV text of the Debian package "
             "bible-kjv-text to a plain-text file");
    std::ostringstream os;
    os << pf.rdbuf();
    s.prose = os.str();
  } else {
    s.prose = synth_prose(s.words, 8000);
  }
  if (const char* p = std::getenv("FLASHMEM_RULER_SQUAD"); p && *p) s.squad = load_ruler_squad(p);
  if (const char* p = std::getenv("FLASHMEM_RULER_HOTPOTQA"); p && *p) s.hotpotqa = load_ruler_hotpotqa(p);
  return s;
}

std::string RulerSources::synth_prose(const std::vector<std::string>& words, int64_t n_sentences) {
  FM_CHECK(!words.empty(), ErrorCode::kInvalidArgument, "synth_prose: empty word list");
  Rng r(0x5EED0F0F0F0Full);
  std::string out;
  for (int64_t i = 0; i < n_sentences; ++i) {
    const uint64_t len = 6 + uni(r, 10);
    for (uint64_t w = 0; w < len; ++w) {
      const std::string& word = words[uni(r, words.size())];
      if (w == 0) {
        if (!out.empty()) out += ' ';
        out += capitalize(word);
      } else {
        out += (w == len / 2 && uni(r, 3) == 0) ? ", " : " ";
        out += word;
      }
    }
    out += '.';
  }
  return out;
}

const std::vector<std::string>& ruler_tasks() {
  static const std::vector<std::string> t = {
      "niah_single_1", "niah_single_2",   "niah_single_3",   "niah_multikey_1", "niah_multikey_2",
      "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt",              "cwe",
      "fwe",           "qa_1",            "qa_2"};
  return t;
}

RulerGenerator::RulerGenerator(const Tokenizer& tok, const ChatTemplate* chat, RulerSources src)
    : tok_(&tok), chat_(chat), src_(std::move(src)) {
  FM_CHECK(src_.words.size() >= 2000, ErrorCode::kInvalidArgument,
           "RulerGenerator: need at least 2000 words, got ", src_.words.size());
  prose_sentences_ = split_sentences(src_.prose);
  FM_CHECK(prose_sentences_.size() >= 16, ErrorCode::kInvalidArgument,
           "RulerGenerator: the prose has too few sentences (", prose_sentences_.size(), ")");
}

namespace {

// Everything per-task lives here; `W` is the word list, `P` the prose sentences.
struct Builder {
  const std::vector<std::string>& W;
  const std::vector<std::string>& P;
  Rng& r;
  uint64_t base;

  std::string word() { return W[uni(r, W.size())]; }
  std::string key() { return word() + "-" + word(); }

  // Haystack units for the first `cap` positions of a kind.
  std::vector<std::string> noise(int64_t cap) {
    std::vector<std::string> u(static_cast<size_t>(cap));
    for (int64_t i = 0; i < cap; ++i) u[static_cast<size_t>(i)] = noise_sentences()[static_cast<size_t>(i) % 5];
    return u;
  }
  std::vector<std::string> prose(int64_t cap) {
    std::vector<std::string> u(static_cast<size_t>(cap));
    const uint64_t off = uni(r, P.size());
    for (int64_t i = 0; i < cap; ++i) u[static_cast<size_t>(i)] = P[(off + static_cast<uint64_t>(i)) % P.size()];
    return u;
  }

  void niah(Plan& p, const std::string& task, int64_t length) {
    const bool uuid_val = task == "niah_single_3" || task == "niah_multikey_3";
    const bool uuid_key = task == "niah_multikey_3";
    const std::string noun_pl = uuid_val ? "uuids" : "numbers";
    const std::string noun_sg = uuid_val ? "uuid" : "number";
    int n_keys = 1, n_vals = 1, n_query = 1;
    if (task == "niah_multikey_1") n_keys = 4;
    if (task == "niah_multivalue") n_vals = 4;
    if (task == "niah_multiquery") n_keys = n_query = 4;
    std::vector<std::string> keys;
    std::set<std::string> used;
    while (static_cast<int>(keys.size()) < n_keys) {
      std::string k = uuid_key ? uuid(r) : key();
      if (used.insert(k).second) keys.push_back(k);
    }
    auto value = [&]() { return uuid_val ? uuid(r) : number7(r); };
    auto needle = [&](const std::string& k, const std::string& v) {
      return "One of the special magic " + noun_pl + " for " + k + " is: " + v + ".";
    };
    std::vector<Needle> needles;
    for (int k = 0; k < n_keys; ++k)
      for (int v = 0; v < n_vals; ++v) {
        const std::string val = value();
        needles.push_back({needle(keys[static_cast<size_t>(k)], val), pick_depth(r)});
        if (k < n_query) p.answers.push_back(val);
      }
    p.depth = needles[0].depth;
    const int64_t cap = std::max<int64_t>(64, length);  // a unit is always >= 1 token
    std::vector<std::string> units;
    if (task == "niah_single_1") {
      units = noise(cap);
    } else if (task == "niah_multikey_2" || task == "niah_multikey_3") {
      units.reserve(static_cast<size_t>(cap / 8 + 64));
      for (int64_t i = 0; i < cap / 8 + 64; ++i) {
        std::string k;
        do k = uuid_key ? uuid(r) : key();
        while (used.count(k));
        units.push_back(needle(k, value()));
      }
    } else {
      units = prose(cap);
    }
    p.max_units = static_cast<int64_t>(units.size());
    p.context = [units = std::move(units), needles](int64_t n) { return weave(units, n, needles, " "); };

    std::string query;
    for (int q = 0; q < n_query; ++q) {
      if (q > 0) query += (q + 1 == n_query) ? ", and " : ", ";
      query += keys[static_cast<size_t>(q)];
    }
    const bool plural = p.answers.size() > 1;
    p.head = "A few special magic " + noun_pl +
             " are hidden in the text below. Memorize them; I will ask you about the " + noun_pl +
             " afterwards.\n";
    if (plural) {
      p.tail = "\nWhat are all the special magic " + noun_pl + " for " + query +
               " mentioned in the text above?";
      p.answer_prefix = " The special magic " + noun_pl + " for " + query + " mentioned in the text above are";
    } else {
      p.tail = "\nWhat is the special magic " + noun_sg + " for " + query + " mentioned in the text above?";
      p.answer_prefix = " The special magic " + noun_sg + " for " + query + " mentioned in the text above is";
    }
  }

  std::string var_name(std::set<std::string>& used) {
    for (;;) {
      std::string s;
      for (int i = 0; i < 5; ++i) s += static_cast<char>('A' + uni(r, 26));
      if (used.insert(s).second) return s;
    }
  }

  // A chain of `hops` assignments from a fresh 5-digit value; names in order.
  std::vector<std::string> chain(int hops, std::set<std::string>& used, std::string& val,
                                 std::vector<std::string>& names) {
    val = std::to_string(10000 + uni(r, 90000));
    names.clear();
    for (int i = 0; i <= hops; ++i) names.push_back(var_name(used));
    std::vector<std::string> st;
    st.push_back("VAR " + names[0] + " = " + val + ".");
    for (int i = 1; i <= hops; ++i) st.push_back("VAR " + names[static_cast<size_t>(i)] + " = VAR " + names[static_cast<size_t>(i) - 1] + ".");
    return st;
  }

  void vt(Plan& p, int64_t length) {
    p.gen = 30;
    std::set<std::string> used;
    std::string ex_val, val;
    std::vector<std::string> ex_names, names;
    const std::vector<std::string> ex = chain(2, used, ex_val, ex_names);
    const std::vector<std::string> st = chain(4, used, val, names);
    p.answers = names;
    std::vector<double> depths;
    for (size_t i = 0; i < st.size(); ++i) depths.push_back(pick_depth(r));
    std::sort(depths.begin(), depths.end());
    std::vector<Needle> needles;
    for (size_t i = 0; i < st.size(); ++i) needles.push_back({st[i], depths[i]});
    p.depth = depths[0];
    std::vector<std::string> ex_units = noise(6);
    std::vector<Needle> ex_needles = {{ex[0], 20.0}, {ex[1], 50.0}, {ex[2], 80.0}};
    const std::string ex_text = weave(ex_units, 6, ex_needles, " ");
    std::string ex_ans;
    for (const auto& n : ex_names) ex_ans += " " + n;
    const std::string q1 = "\nQuestion: Which variables are assigned the value ";
    const std::string q2 = " in the text above, directly or through other variables?";
    p.head = "Memorize the variable assignments in the text below and follow every chain of "
             "assignments.\nExample:\n" + ex_text + q1 + ex_val + q2 +
             "\nAnswer: Following the chain of assignments in the text above, " +
             std::to_string(ex_names.size()) + " variables hold the value " + ex_val + ":" + ex_ans +
             "\n\nNow the real text:\n";
    p.tail = q1 + val + q2;
    p.answer_prefix = " Answer: Following the chain of assignments in the text above, " +
                      std::to_string(names.size()) + " variables hold the value " + val + ":";
    std::vector<std::string> units = noise(std::max<int64_t>(64, length));
    p.max_units = static_cast<int64_t>(units.size());
    p.context = [units = std::move(units), needles](int64_t n) { return weave(units, n, needles, " "); };
  }

  static std::string numbered(const std::vector<std::string>& list) {
    std::string s;
    for (size_t i = 0; i < list.size(); ++i) {
      if (i) s += ' ';
      s += std::to_string(i + 1) + ". " + list[i];
    }
    return s;
  }

  void cwe(Plan& p) {
    p.gen = 120;
    std::vector<size_t> perm(W.size());
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = i;
    shuffle(perm, r);
    // perm[0..9]: example common, [10..19]: example rare, [20..29]: common, [30..]: rare.
    std::vector<std::string> ex_list;
    std::string ex_ans;
    for (size_t i = 0; i < 10; ++i) {
      ex_list.push_back(W[perm[i]]);
      ex_list.push_back(W[perm[i]]);
      ex_list.push_back(W[perm[10 + i]]);
      ex_ans += (i ? ", " : " ") + W[perm[i]];
    }
    shuffle(ex_list, r);
    std::vector<std::string> common;
    for (size_t i = 20; i < 30; ++i) common.push_back(W[perm[i]]);
    p.answers = common;
    const uint64_t sub = base;
    const std::vector<std::string>& words = W;
    p.max_units = static_cast<int64_t>(W.size()) - 30;
    p.context = [perm = std::move(perm), common, sub, &words](int64_t n) {
      std::vector<std::string> list;
      for (const auto& c : common)
        for (int k = 0; k < 30; ++k) list.push_back(c);
      for (int64_t i = 0; i < n; ++i)
        for (int k = 0; k < 3; ++k) list.push_back(words[perm[30 + static_cast<size_t>(i)]]);
      Rng rr(mix(sub, static_cast<uint64_t>(n)));
      shuffle(list, rr);
      return numbered(list);
    };
    const std::string q = "\nQuestion: Which 10 words occur most often in the list above?";
    p.head = "Below is a numbered list of words; some words occur much more often than others.\n"
             "Example:\n" + numbered(ex_list) + q +
             "\nAnswer: The 10 words that occur most often in the list above are:" + ex_ans +
             ".\n\nNow the real list:\n";
    p.tail = q;
    p.answer_prefix = " Answer: The 10 words that occur most often in the list above are:";
  }

  void fwe(Plan& p, int64_t length) {
    p.gen = 50;
    const size_t vocab = static_cast<size_t>(std::max<int64_t>(20, length / 50));
    std::vector<std::string> coded;
    std::set<std::string> used;
    while (coded.size() < vocab) {
      std::string s;
      for (int i = 0; i < 6; ++i) s += static_cast<char>('a' + uni(r, 26));
      if (used.insert(s).second) coded.push_back(s);
    }
    std::vector<double> cdf(vocab);
    double acc = 0.0;
    for (size_t k = 0; k < vocab; ++k) cdf[k] = acc += 1.0 / (static_cast<double>(k + 1) * static_cast<double>(k + 1));
    for (double& c : cdf) c /= acc;
    const uint64_t sub = base;
    auto draw = [cdf, sub](int64_t n) {
      Rng rr(mix(sub, 0xF3Eull));
      std::vector<size_t> seq(static_cast<size_t>(n));
      for (auto& s : seq)
        s = std::min<size_t>(static_cast<size_t>(std::upper_bound(cdf.begin(), cdf.end(), unit01(rr)) - cdf.begin()), cdf.size() - 1);
      return seq;
    };
    // Ranks by actual count in the n-word text; rank 1 is shown as "....".
    auto ranks = [vocab](const std::vector<size_t>& seq) {
      std::vector<int64_t> cnt(vocab, 0);
      for (size_t s : seq) ++cnt[s];
      std::vector<size_t> order(vocab);
      for (size_t i = 0; i < vocab; ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cnt[a] > cnt[b]; });
      return order;
    };
    p.context = [draw, ranks, coded](int64_t n) {
      const std::vector<size_t> seq = draw(n);
      const size_t top = ranks(seq)[0];
      std::string s;
      for (size_t i = 0; i < seq.size(); ++i) {
        if (i) s += ' ';
        s += seq[i] == top ? std::string("....") : coded[seq[i]];
      }
      return s;
    };
    p.head = "Read the coded text below and find the three coded words that occur most often. The "
             "placeholder \"....\" is not a word and does not count.\n";
    p.tail = "\nQuestion: Not counting \"....\", which three coded words occur most often in the coded "
             "text above?";
    p.answer_prefix = " Answer: The three most frequent coded words in the coded text are:";
    // answers depend on n: filled in after the fit (see finish_fwe).
    fwe_draw = draw;
    fwe_ranks = ranks;
    fwe_coded = coded;
  }
  std::function<std::vector<size_t>(int64_t)> fwe_draw;
  std::function<std::vector<size_t>(const std::vector<size_t>&)> fwe_ranks;
  std::vector<std::string> fwe_coded;

  void qa(Plan& p, bool two_hop) {
    p.gen = 32;
    p.metric = "part";
    p.synthetic = true;
    std::vector<size_t> perm(W.size());
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = i;
    shuffle(perm, r);
    auto w = [&](size_t i) { return capitalize(W[perm[i]]); };
    auto capital = [](const std::string& a, const std::string& b) {
      return "The capital of the republic of " + a + " is " + b + ".";
    };
    auto mayor = [](const std::string& b, const std::string& c) {
      return "The mayor of the city of " + b + " is " + c + ".";
    };
    std::vector<Needle> gold;
    const std::string a = w(0), b = w(1), c = w(2);
    gold.push_back({capital(a, b), pick_depth(r)});
    if (two_hop) {
      gold.push_back({mayor(b, c), pick_depth(r)});
      p.answers = {c};
      p.tail = "\n\nQuestion: Who is the mayor of the capital of the republic of " + a + "?";
    } else {
      p.answers = {b};
      p.tail = "\n\nQuestion: What is the capital of the republic of " + a + "?";
    }
    p.depth = gold[0].depth;
    std::vector<std::string> units;
    for (size_t i = 3; i + 1 < perm.size(); i += 2)
      units.push_back(((i / 2) % 2 || !two_hop) ? capital(w(i), w(i + 1)) : mayor(w(i), w(i + 1)));
    documents(p, std::move(units), std::move(gold));
  }

  // The QA context: the first n distractor documents with the gold ones woven in at their
  // depths, numbered "Document i:" after placement.
  static void documents(Plan& p, std::vector<std::string> units, std::vector<Needle> gold) {
    p.max_units = static_cast<int64_t>(units.size());
    p.context = [units = std::move(units), gold = std::move(gold)](int64_t n) {
      const std::string marker = "\x01";
      std::string flat = weave(units, n, gold, marker);
      std::string out;
      int64_t k = 1;
      size_t start = 0;
      for (;;) {
        const size_t e = flat.find(marker, start);
        if (k > 1) out += "\n\n";
        out += "Document " + std::to_string(k++) + ":\n" + flat.substr(start, e - start);
        if (e == std::string::npos) break;
        start = e + marker.size();
      }
      return out;
    };
    p.head = "Read the documents below, then answer the question with only the answer and no other "
             "words.\n\n";
    p.answer_prefix = " Answer:";
  }

  // qa_1 / qa_2 from a real data set: one question picked by the sample's seed, its gold
  // paragraph(s) at random depths, and randomly chosen paragraphs of other questions as
  // distractors (no more than `length` tokens could hold: a document takes several tokens).
  void qa_data(Plan& p, const RulerQaSet& set, int64_t length) {
    p.gen = 32;
    p.metric = "part";
    p.synthetic = false;
    const RulerQaSet::Item& item = set.items[uni(r, set.items.size())];
    p.answers = item.answers;
    p.tail = "\n\nQuestion: " + item.question;
    std::vector<Needle> gold;
    std::vector<char> is_gold(set.docs.size(), 0);
    for (const size_t g : item.gold) {
      gold.push_back({set.docs[g], pick_depth(r)});
      is_gold[g] = 1;
    }
    p.depth = gold.empty() ? -1.0 : gold[0].depth;
    std::vector<size_t> pool;
    pool.reserve(set.docs.size());
    for (size_t i = 0; i < set.docs.size(); ++i)
      if (!is_gold[i]) pool.push_back(i);
    const size_t want = std::min(pool.size(), static_cast<size_t>(length / 4 + 16));
    std::vector<std::string> units;
    units.reserve(want);
    for (size_t i = 0; i < want; ++i) {  // partial Fisher-Yates: `want` distinct distractors
      std::swap(pool[i], pool[i + uni(r, pool.size() - i)]);
      units.push_back(set.docs[pool[i]]);
    }
    documents(p, std::move(units), std::move(gold));
  }
};

}  // namespace

RulerSample RulerGenerator::generate(const std::string& task, int64_t length, uint64_t seed,
                                     int64_t index) const {
  const auto& tasks = ruler_tasks();
  if (std::find(tasks.begin(), tasks.end(), task) == tasks.end()) {
    std::string list;
    for (const auto& t : tasks) list += (list.empty() ? "" : ", ") + t;
    FM_FAIL(ErrorCode::kInvalidArgument, "unknown RULER task '", task, "'; valid tasks: ", list);
  }
  FM_CHECK(length > 0, ErrorCode::kOutOfRange, "RULER length must be positive, got ", length);
  const uint64_t base = mix(mix(mix(hash_str(task), static_cast<uint64_t>(length)), seed),
                            static_cast<uint64_t>(index));
  Rng r(base);
  Plan p;
  Builder b{src_.words, prose_sentences_, r, base, {}, {}, {}};
  if (task.rfind("niah_", 0) == 0) b.niah(p, task, length);
  else if (task == "vt") b.vt(p, length);
  else if (task == "cwe") b.cwe(p);
  else if (task == "fwe") b.fwe(p, length);
  else if (task == "qa_1" && !src_.squad.empty()) b.qa_data(p, src_.squad, length);
  else if (task == "qa_2" && !src_.hotpotqa.empty()) b.qa_data(p, src_.hotpotqa, length);
  else b.qa(p, task == "qa_2");

  auto render = [&](const std::string& context, int64_t* ctx_begin) {
    const std::string user = p.head + context + p.tail;
    std::string full = chat_ ? chat_->render({{"user", user}}, true) : user;
    if (ctx_begin) {
      const size_t pos = full.find(user);
      FM_ICHECK(pos != std::string::npos, "chat template altered the user message");
      *ctx_begin = static_cast<int64_t>(pos + p.head.size());
    }
    return full + p.answer_prefix;
  };
  auto tokens = [&](int64_t n) {
    return static_cast<int64_t>(tok_->encode(render(p.context(n), nullptr)).size());
  };
  const int64_t t0 = tokens(0);
  FM_CHECK(t0 + p.gen <= length, ErrorCode::kOutOfRange, "RULER task ", task, ": length ", length,
           " is too short; the question and needles alone need at least ", t0 + p.gen, " tokens");
  // Exponential then binary search for the largest n that fits (n = lo always fits).
  int64_t lo = 0, hi = 1;
  for (;;) {
    if (hi >= p.max_units) {
      hi = p.max_units;
      if (tokens(hi) + p.gen <= length) lo = hi, hi = hi + 1;
      break;
    }
    if (tokens(hi) + p.gen > length) break;
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (tokens(mid) + p.gen <= length) lo = mid;
    else hi = mid;
  }
  FM_ICHECK(lo < p.max_units + 1);

  RulerSample s;
  s.task = task;
  s.target_length = length;
  s.index = index;
  s.seed = seed;
  const std::string context = p.context(lo);
  s.prompt = render(context, &s.context_begin);
  s.context_end = s.context_begin + static_cast<int64_t>(context.size());
  s.n_tokens = static_cast<int64_t>(tok_->encode(s.prompt).size());
  s.tokens_to_generate = p.gen;
  s.metric = p.metric;
  s.depth = p.depth;
  s.synthetic_substitute = p.synthetic;
  s.answers = p.answers;
  if (task == "fwe") {
    const auto order = b.fwe_ranks(b.fwe_draw(lo));
    for (size_t k = 1; k < 4 && k < order.size(); ++k) s.answers.push_back(b.fwe_coded[order[k]]);
  }
  return s;
}

double score_string_match_all(const std::string& prediction, const std::vector<std::string>& refs) {
  if (refs.empty()) return 0.0;
  const std::string p = lower(prediction);
  size_t hit = 0;
  for (const auto& r : refs)
    if (p.find(lower(r)) != std::string::npos) ++hit;
  return static_cast<double>(hit) / static_cast<double>(refs.size());
}

double score_string_match_part(const std::string& prediction, const std::vector<std::string>& refs) {
  const std::string p = lower(prediction);
  for (const auto& r : refs)
    if (p.find(lower(r)) != std::string::npos) return 1.0;
  return 0.0;
}

}  // namespace flashmem::eval

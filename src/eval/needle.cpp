// flashmem/eval/needle.cpp — needle retrieval over folders of text (see needle.h).
#include "eval/needle.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "core/error.h"
#include "eval/seeding.h"
#include "io/chat_template.h"
#include "io/tokenizer.h"

namespace flashmem::eval {
namespace {

namespace fs = std::filesystem;

using namespace seeding;  // eval/seeding.h
double pick_depth(Rng& r) { return static_cast<double>(uni(r, 40)) * 100.0 / 39.0; }

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string capitalize(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}
// Occurrences of `needle` in `hay`, both already lowercase (overlapping ones counted).
size_t count_of(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

// ---- reading text ---------------------------------------------------------------------------

bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    if (c < 0x80) { ++i; continue; }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

// Text as units are cut from it: CR LF and lone CR become LF, form feed a blank line, other C0
// controls are dropped. False for binary or non-UTF-8 input (see needle.h).
bool clean_text(const std::string& raw, std::string& out) {
  size_t controls = 0;
  for (unsigned char c : raw) {
    if (c == 0) return false;
    if (c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f') ++controls;
  }
  if (controls * 1000 > raw.size() || !valid_utf8(raw)) return false;
  out.clear();
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(raw[i]);
    if (c == '\r') {
      if (i + 1 < raw.size() && raw[i + 1] == '\n') continue;
      out += '\n';
    } else if (c == '\f') {
      out += "\n\n";
    } else if (c >= 0x20 || c == '\t' || c == '\n') {
      out += static_cast<char>(c);
    }
  }
  return true;
}

bool blank(const std::string& line) {
  return std::all_of(line.begin(), line.end(), [](char c) { return c == ' ' || c == '\t'; });
}

// Cuts a line longer than kNeedleUnitBytes at sentence ends, else spaces, else at the limit
// (on a UTF-8 character boundary); the last piece gets `last_sep`.
void cut_long_line(const std::string& line, const std::string& last_sep, std::vector<NeedleUnit>& out) {
  size_t b = 0;
  while (line.size() - b > kNeedleUnitBytes) {
    const std::string_view rest(line.data() + b, kNeedleUnitBytes + 1);
    size_t cut = std::string::npos;
    const size_t dot = rest.rfind(". ");
    if (dot != std::string::npos && dot >= kNeedleUnitBytes / 2) cut = dot + 1;
    if (cut == std::string::npos) {
      const size_t sp = rest.rfind(' ');
      if (sp != std::string::npos && sp >= kNeedleUnitBytes / 4) cut = sp;
    }
    if (cut != std::string::npos) {  // the space at `cut` becomes the separator
      out.push_back({line.substr(b, cut), " "});
      b += cut + 1;
      continue;
    }
    size_t e = kNeedleUnitBytes;
    while (e > 1 && (static_cast<unsigned char>(line[b + e]) & 0xC0) == 0x80) --e;
    out.push_back({line.substr(b, e), ""});
    b += e;
  }
  out.push_back({line.substr(b), last_sep});
}

}  // namespace

std::vector<NeedleUnit> split_needle_units(const std::string& text) {
  std::vector<NeedleUnit> out;
  std::vector<std::string> para;
  auto flush = [&]() {
    if (para.empty()) return;
    size_t total = 0;
    for (const auto& l : para) total += l.size() + 1;
    if (total - 1 <= kNeedleUnitBytes) {
      std::string t;
      for (const auto& l : para) t += (t.empty() ? "" : "\n") + l;
      out.push_back({std::move(t), "\n\n"});
    } else {  // each line a unit: the finest place for a needle and for the length fit
      for (const auto& l : para) {
        if (l.size() > kNeedleUnitBytes) cut_long_line(l, "\n", out);
        else out.push_back({l, "\n"});
      }
      out.back().sep = "\n\n";
    }
    para.clear();
  };
  size_t b = 0;
  while (b <= text.size()) {
    size_t e = text.find('\n', b);
    if (e == std::string::npos) e = text.size();
    std::string line = text.substr(b, e - b);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t')) line.pop_back();
    if (blank(line)) flush();
    else para.push_back(std::move(line));
    b = e + 1;
  }
  flush();
  return out;
}

namespace {

std::string family_name(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") {
    std::error_code ec;
    p = fs::weakly_canonical(fs::absolute(dir), ec);
    name = p.filename().string();
  }
  return name;
}

}  // namespace

NeedleFamily load_needle_family(const std::string& dir, int64_t max_bytes) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  FM_CHECK(fs::exists(st), ErrorCode::kIo, "haystack directory ", dir, " does not exist");
  FM_CHECK(fs::is_directory(st), ErrorCode::kIo, "haystack ", dir, " is not a directory");
  NeedleFamily fam;
  fam.name = family_name(dir);
  fam.dir = dir;
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code fe;
    if (it->is_regular_file(fe)) files.push_back(it->path());
  }
  FM_CHECK(!ec, ErrorCode::kIo, "cannot list haystack directory ", dir, ": ", ec.message());
  std::sort(files.begin(), files.end(),
            [](const fs::path& a, const fs::path& b) { return a.generic_string() < b.generic_string(); });
  std::string raw, text;
  for (const fs::path& f : files) {
    const int64_t room = max_bytes - fam.bytes;
    if (room <= 0) break;
    std::error_code se;
    const uintmax_t size = fs::file_size(f, se);
    FM_CHECK(!se, ErrorCode::kIo, "cannot read haystack file ", f.string(), ": ", se.message());
    const bool cut = size > static_cast<uintmax_t>(room);
    raw.resize(static_cast<size_t>(cut ? static_cast<uintmax_t>(room) : size));
    std::ifstream in(f, std::ios::binary);
    FM_CHECK(in, ErrorCode::kIo, "cannot read haystack file ", f.string());
    in.read(raw.data(), static_cast<std::streamsize>(raw.size()));
    FM_CHECK(!in.bad(), ErrorCode::kIo, "cannot read haystack file ", f.string());
    raw.resize(static_cast<size_t>(in.gcount()));
    if (cut) {  // over the cap: keep whole lines
      const size_t nl = raw.rfind('\n');
      raw.resize(nl == std::string::npos ? 0 : nl + 1);
    }
    if (raw.empty() || !clean_text(raw, text) ||
        std::all_of(text.begin(), text.end(), [](char c) { return std::isspace(static_cast<unsigned char>(c)); })) {
      ++fam.files_skipped;
      continue;
    }
    std::vector<NeedleUnit> u = split_needle_units(text);
    if (u.empty()) {
      ++fam.files_skipped;
      continue;
    }
    fam.units.insert(fam.units.end(), std::make_move_iterator(u.begin()), std::make_move_iterator(u.end()));
    fam.bytes += static_cast<int64_t>(text.size());
    ++fam.files_read;
  }
  FM_CHECK(!fam.units.empty(), ErrorCode::kFormat, "haystack directory ", dir, " (family '", fam.name,
           "') holds no usable text: ", files.size(), " files, ", fam.files_skipped,
           " skipped as empty, binary or not UTF-8");
  return fam;
}

std::vector<NeedleFamily> load_needle_families(const std::vector<std::string>& dirs, int64_t max_bytes) {
  FM_CHECK(!dirs.empty(), ErrorCode::kInvalidArgument, "no haystack directory given");
  std::map<std::string, std::string> seen;
  for (const auto& d : dirs) {
    const std::string name = family_name(d);
    const auto [it, fresh] = seen.emplace(name, d);
    FM_CHECK(fresh, ErrorCode::kInvalidArgument, "two haystack directories are named '", name, "' (", it->second,
             " and ", d, "); a family is named by its directory's basename");
  }
  std::vector<NeedleFamily> out;
  for (const auto& d : dirs) out.push_back(load_needle_family(d, max_bytes));
  return out;
}

const std::vector<std::string>& needle_shapes() {
  static const std::vector<std::string> s = {"number", "word", "name", "date", "code", "multihop"};
  return s;
}

// ---- samples --------------------------------------------------------------------------------

namespace {

const std::vector<std::string>& first_names() {
  static const std::vector<std::string> v = {
      "Ada",    "Bruno",  "Clara", "Dmitri", "Elena",  "Farid", "Greta",  "Hugo",  "Ingrid", "Jonas",
      "Kamala", "Lorenz", "Mirela", "Nadia", "Oskar",  "Priya", "Quentin", "Rosa", "Stefan", "Tamsin",
      "Ulrich", "Vera",   "Wendell", "Ximena", "Yusuf", "Zofia"};
  return v;
}
const std::vector<std::string>& last_names() {
  static const std::vector<std::string> v = {
      "Abernathy", "Baptiste", "Castellanos", "Dubrovsky", "Eriksen",  "Fairweather", "Gallagher",
      "Halvorsen", "Iwasaki",  "Jablonski",   "Kowalczyk", "Lindqvist", "Marchetti",  "Nakashima",
      "Okonkwo",   "Pellegrino", "Quintero",  "Rasmussen", "Szabo",    "Thorvaldsen", "Umarov",
      "Valdivia",  "Whitcombe", "Yamamoto",   "Zielinski"};
  return v;
}
const char* const kMonths[] = {"January", "February", "March",     "April",   "May",      "June",
                               "July",    "August",   "September", "October", "November", "December"};

const char* const kHead =
    "Below is a long text with one or two short facts hidden in it. Read it carefully: a question "
    "about those facts follows it.\n\n";

struct Draw {
  std::vector<std::string> needles;  // key needle first
  std::string question, prefix;
  std::vector<std::string> answers;
  std::string box;  // multihop: the link between the needles (twice in the prompt)
};

Draw draw(const std::string& shape, Rng& r, const std::vector<std::string>& W, const std::vector<std::string>& L) {
  auto word = [&]() { return W[uni(r, W.size())]; };
  auto long_word = [&]() { return L[uni(r, L.size())]; };
  Draw d;
  const std::string k = word();
  if (shape == "number") {
    const std::string v = std::to_string(1000000 + uni(r, 9000000));
    const std::string what = "the access code for the " + k + " archive";
    d.needles = {"The access code for the " + k + " archive is " + v + "."};
    d.question = "What is " + what + "?";
    d.prefix = " The access code for the " + k + " archive is";
    d.answers = {v};
  } else if (shape == "word") {
    std::string v = long_word();
    while (v == k) v = long_word();
    d.needles = {"The password of the " + k + " club is " + v + "."};
    d.question = "What is the password of the " + k + " club?";
    d.prefix = " The password of the " + k + " club is";
    d.answers = {v};
  } else if (shape == "name") {
    const std::string v = first_names()[uni(r, first_names().size())] + " " + last_names()[uni(r, last_names().size())];
    const std::string K = capitalize(k);
    d.needles = {"The keeper of the " + K + " lighthouse is " + v + "."};
    d.question = "Who is the keeper of the " + K + " lighthouse?";
    d.prefix = " The keeper of the " + K + " lighthouse is";
    d.answers = {v};
  } else if (shape == "date") {
    const std::string month = kMonths[uni(r, 12)];
    const std::string day = std::to_string(1 + uni(r, 28));
    const std::string year = std::to_string(1600 + uni(r, 400));
    d.needles = {"The " + k + " treaty was signed on " + month + " " + day + ", " + year + "."};
    d.question = "On what date was the " + k + " treaty signed?";
    d.prefix = " The " + k + " treaty was signed on";
    d.answers = {month + " " + day + ", " + year, day + " " + month + " " + year};
  } else if (shape == "code") {
    const std::string v = "reset_" + word() + "_" + word() + "_v" + std::to_string(2 + uni(r, 8));
    d.needles = {"The function that resets the " + k + " cache is named " + v + "."};
    d.question = "What is the name of the function that resets the " + k + " cache?";
    d.prefix = " The function that resets the " + k + " cache is named";
    d.answers = {v};
  } else {  // multihop
    d.box = std::to_string(10000 + uni(r, 90000));
    std::string room = long_word();
    while (room == k) room = long_word();
    d.needles = {"The " + k + " ledger is stored in box " + d.box + ".",
                 "Box " + d.box + " is kept in the " + room + " room."};
    d.question = "In which room is the box that holds the " + k + " ledger kept?";
    d.prefix = " The box that holds the " + k + " ledger is kept in the";
    d.answers = {room};
  }
  return d;
}

// "<|im_end|>" → "< |im_end|>": text that spells a special token stays text.
void break_special(std::string& text, const std::string& special) {
  size_t p = text.find(special);
  if (p == std::string::npos) return;
  std::string out;
  size_t from = 0;
  for (; p != std::string::npos; p = text.find(special, p + 1)) {
    out.append(text, from, p + 1 - from);
    out += ' ';
    from = p + 1;
  }
  out.append(text, from, std::string::npos);
  text = std::move(out);
}

struct Placed {
  const std::string* text;
  double depth;
};

// The first n units joined by their own separators, each needle inserted at the unit boundary
// closest (in bytes of haystack text) to its depth, followed by the separator that precedes it.
std::string weave(const std::vector<NeedleUnit>& units, int64_t n, const std::vector<Placed>& needles) {
  const size_t N = static_cast<size_t>(n);
  std::vector<size_t> pos(N + 1, 0);  // bytes before unit i
  for (size_t i = 0; i < N; ++i) pos[i + 1] = pos[i] + units[i].text.size() + units[i].sep.size();
  if (N > 0) pos[N] -= units[N - 1].sep.size();
  std::vector<std::vector<const std::string*>> at(N + 1);
  for (const Placed& nd : needles) {
    const double target = nd.depth / 100.0 * static_cast<double>(pos[N]);
    size_t p = static_cast<size_t>(std::lower_bound(pos.begin(), pos.end(), target) - pos.begin());
    if (p > N) p = N;
    if (p > 0 && target - static_cast<double>(pos[p - 1]) < static_cast<double>(pos[p]) - target) --p;
    at[p].push_back(nd.text);
  }
  std::string out;
  std::string pending;  // separator owed before the next piece
  auto add = [&](const std::string& t, const std::string& sep) {
    if (!out.empty()) out += pending;
    out += t;
    pending = sep;
  };
  for (size_t i = 0; i <= N; ++i) {
    for (const std::string* s : at[i]) {
      if (!out.empty() && pending.empty()) pending = " ";
      const std::string& before = i > 0 && i < N ? units[i - 1].sep : std::string("\n\n");
      add(*s, before.empty() ? " " : before);
    }
    if (i < N) add(units[i].text, units[i].sep);
  }
  return out;
}

}  // namespace

NeedleGenerator::NeedleGenerator(const Tokenizer& tok, const ChatTemplate* chat, std::vector<std::string> words)
    : tok_(&tok), chat_(chat), words_(std::move(words)) {
  FM_CHECK(words_.size() >= 1000, ErrorCode::kInvalidArgument, "NeedleGenerator: need at least 1000 words, got ",
           words_.size());
  for (const auto& w : words_)
    if (w.size() >= 5) long_words_.push_back(w);
  FM_CHECK(long_words_.size() >= 500, ErrorCode::kInvalidArgument,
           "NeedleGenerator: need at least 500 words of 5 letters or more");
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    if (tok.is_special(id) && tok.token_text(id).size() >= 2) specials_.push_back(tok.token_text(id));
}

NeedleSample NeedleGenerator::generate(const NeedleFamily& family, int64_t length, uint64_t seed,
                                       int64_t index) const {
  FM_CHECK(!family.units.empty(), ErrorCode::kInvalidArgument, "needle family '", family.name, "' has no text");
  FM_CHECK(length > 0, ErrorCode::kOutOfRange, "needle length must be positive, got ", length);
  const uint64_t fam_len_seed = mix(mix(hash_str(family.name), static_cast<uint64_t>(length)), seed);
  const std::string& shape =
      needle_shapes()[(splitmix(fam_len_seed) + static_cast<uint64_t>(index)) % needle_shapes().size()];
  Rng r(mix(fam_len_seed, static_cast<uint64_t>(index)));
  constexpr int kGen = 32;

  // The haystack window: units from a seeded offset, wrapping, as many as a prompt of `length`
  // tokens could use (every unit is at least one token; no token spans 32 bytes of text).
  const size_t U = family.units.size();
  const size_t off = static_cast<size_t>(uni(r, U));
  std::vector<NeedleUnit> hay;
  size_t bytes = 0;
  const size_t max_units = static_cast<size_t>(length) + 64;
  const size_t max_bytes = 32 * static_cast<size_t>(length) + 4096;
  while (hay.size() < max_units && bytes < max_bytes) {
    NeedleUnit u = family.units[(off + hay.size()) % U];
    for (const std::string& sp : specials_) break_special(u.text, sp);
    bytes += u.text.size() + u.sep.size();
    hay.push_back(std::move(u));
  }
  const std::string window = lower(weave(hay, static_cast<int64_t>(hay.size()), {}));

  auto render = [&](const std::string& context, const Draw& d, int64_t* ctx_begin) {
    const std::string user = kHead + context + "\n\nQuestion: " + d.question;
    std::string full = chat_ ? chat_->render({{"user", user}}, true) : user;
    if (ctx_begin) {
      const size_t pos = full.find(user);
      FM_ICHECK(pos != std::string::npos, "chat template altered the user message");
      *ctx_begin = static_cast<int64_t>(pos + std::string(kHead).size());
    }
    return full + d.prefix;
  };

  // Values are redrawn until they occur nowhere else: not in the window, not in the fixed text.
  Draw d;
  bool ok = false;
  for (int attempt = 0; attempt < 200 && !ok; ++attempt) {
    d = draw(shape, r, words_, long_words_);
    std::string fixed = lower(render("", d, nullptr));
    for (const auto& n : d.needles) fixed += "\n" + lower(n);
    ok = count_of(fixed, lower(d.answers[0])) == 1;
    for (size_t i = 0; i < d.answers.size() && ok; ++i)
      ok = count_of(window, lower(d.answers[i])) == 0 && (i == 0 || count_of(fixed, lower(d.answers[i])) == 0);
    if (ok && !d.box.empty()) ok = count_of(window, d.box) == 0 && count_of(fixed, d.box) == 2;
  }
  FM_CHECK(ok, ErrorCode::kFormat, "needle family '", family.name,
           "': no needle value absent from its text was found in 200 draws");
  std::vector<Placed> placed;
  for (const auto& n : d.needles) placed.push_back({&n, pick_depth(r)});

  auto tokens = [&](int64_t n) {
    return static_cast<int64_t>(tok_->encode(render(weave(hay, n, placed), d, nullptr)).size());
  };
  const int64_t max_n = static_cast<int64_t>(hay.size());
  const int64_t t0 = tokens(0);
  FM_CHECK(t0 + kGen <= length, ErrorCode::kOutOfRange, "needle family '", family.name, "': length ", length,
           " is too short; the question and needles alone need at least ", t0 + kGen, " tokens");
  int64_t lo = 0, hi = 1;  // exponential then binary search for the largest n that fits
  for (;;) {
    if (hi >= max_n) {
      hi = max_n;
      if (tokens(hi) + kGen <= length) lo = hi, hi = hi + 1;
      break;
    }
    if (tokens(hi) + kGen > length) break;
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (tokens(mid) + kGen <= length) lo = mid;
    else hi = mid;
  }

  NeedleSample s;
  s.family = family.name;
  s.shape = shape;
  s.target_length = length;
  s.index = index;
  s.seed = seed;
  const std::string context = weave(hay, lo, placed);
  s.prompt = render(context, d, &s.context_begin);
  s.context_end = s.context_begin + static_cast<int64_t>(context.size());
  s.question = d.question;
  s.needles = d.needles;
  s.answers = d.answers;
  s.tokens_to_generate = kGen;
  s.n_tokens = static_cast<int64_t>(tok_->encode(s.prompt).size());
  s.depth = placed[0].depth;
  s.haystack_units = lo;
  FM_ICHECK(count_of(lower(s.prompt), lower(s.answers[0])) == 1, "needle answer not unique in the prompt");
  return s;
}

}  // namespace flashmem::eval

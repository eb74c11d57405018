#include "train/dump.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"

namespace flashmem::train {

namespace {

constexpr char kMagic[8] = {'F', 'M', 'D', 'U', 'M', 'P', '\r', '\n'};
constexpr uint64_t kMaxHeader = 1 << 20;

uint64_t fnv1a(const uint8_t* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The arrays of a document, in file order: name, element size, data.
struct ArrayRef {
  std::string name;
  std::string dtype;
  size_t elem = 0;
  const void* data = nullptr;
  size_t count = 0;
};

template <class T>
ArrayRef ref(std::string name, const char* dtype, const std::vector<T>& v) {
  return ArrayRef{std::move(name), dtype, sizeof(T), v.data(), v.size()};
}

std::vector<ArrayRef> arrays_of(const DumpDoc& d) {
  std::vector<ArrayRef> a = {ref("point_step", "i32", d.point_step), ref("point_pos", "i32", d.point_pos),
                             ref("hidden", "f16", d.hidden), ref("hit_ptr", "i32", d.hit_ptr),
                             ref("hit_chunk", "i32", d.hit_chunk), ref("hit_count", "i32", d.hit_count),
                             ref("mass_ptr", "i32", d.mass_ptr), ref("mass_chunk", "i32", d.mass_chunk),
                             ref("mass_value", "f32", d.mass_value)};
  for (size_t p = 0; p < d.poolings.size(); ++p)
    for (size_t t = 0; t < d.target_layers.size(); ++t) {
      const std::string sfx = d.poolings[p] + "." + std::to_string(d.target_layers[t]);
      a.push_back(ref("keys." + sfx, "u8", d.keys[p][t]));
      a.push_back(ref("scales." + sfx, "f32", d.scales[p][t]));
    }
  return a;
}

// best[c − cb] = the label weight (0: not golden) of candidate c ∈ [cb, ce) for the window
// [t0, t1): hits — the largest hit count ≥ min_hits; mass — 1 for the top mass_top_p by mass.
void hit_labels(const DumpDoc& d, const LoadOptions& o, int32_t cb, int32_t ce, int64_t t0, int64_t t1,
                std::vector<int32_t>& best) {
  best.assign(static_cast<size_t>(std::max(ce - cb, 0)), 0);
  for (int64_t t = t0; t < t1; ++t)
    for (int32_t k = d.hit_ptr[t]; k < d.hit_ptr[t + 1]; ++k) {
      const int32_t c = d.hit_chunk[k];
      if (c >= cb && c < ce && d.hit_count[k] >= o.min_hits) best[c - cb] = std::max(best[c - cb], d.hit_count[k]);
    }
}

void mass_labels(const DumpDoc& d, const LoadOptions& o, int32_t cb, int32_t ce, int64_t t0, int64_t t1,
                 std::vector<int32_t>& best) {
  const size_t n = static_cast<size_t>(std::max(ce - cb, 0));
  best.assign(n, 0);
  std::vector<double> w(n, 0.0);
  for (int64_t t = t0; t < t1; ++t)
    for (int32_t k = d.mass_ptr[t]; k < d.mass_ptr[t + 1]; ++k) {
      const int32_t c = d.mass_chunk[k];
      if (c >= cb && c < ce) w[c - cb] += d.mass_value[k];
    }
  double total = 0.0;
  for (double x : w) total += x;
  if (total <= 0.0) return;
  std::vector<int32_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return w[a] != w[b] ? w[a] > w[b] : a < b; });
  double cum = 0.0;
  for (int32_t i : order) {  // the shortest prefix reaching mass_top_p of the total
    if (w[i] <= 0.0) break;
    best[i] = 1;
    cum += w[i];
    if (cum >= o.mass_top_p * total) break;
  }
}

}  // namespace

void DumpDoc::check(const std::string& where) const {
  const std::string who = where.empty() ? "dump " + name : where;
  const size_t S = point_step.size(), nt = target_layers.size();
  FM_CHECK(d_model > 0 && n_kv_heads > 0 && head_dim > 0 && page_tokens > 0 && chunk_tokens > 0 &&
               page_tokens % chunk_tokens == 0 && nt > 0 && !poolings.empty() && n_steps >= 0 &&
               n_chunks >= 0 && n_prompt >= 0 && n_layers > 0 && n_heads > 0 && tau >= 1,
           ErrorCode::kFormat, who, ": bad shape parameters");
  // Bounds that keep the size products below from overflowing (a dump of the longest context
  // flashmem loads, 2^24 tokens, stays far inside them).
  FM_CHECK(d_model <= (1 << 16) && n_kv_heads <= 1024 && head_dim <= 1024 && n_layers <= 1024 && n_heads <= 1024 &&
               n_prompt <= (int64_t{1} << 31) &&
               n_steps <= (int64_t{1} << 31) && n_chunks <= (int64_t{1} << 31) && nt <= 1024,
           ErrorCode::kFormat, who, ": implausible shape parameters");
  // Every chunk an attention hit or mass names exists: the prompt's and the decoded tokens'.
  const int64_t n_attended = (n_prompt + n_steps + chunk_tokens - 1) / chunk_tokens;
  FM_CHECK(n_chunks * chunk_tokens <= n_prompt, ErrorCode::kFormat, who, ": ", n_chunks,
           " chunks with index keys but the prompt has only ", n_prompt, " tokens");
  FM_CHECK(point_pos.size() == S && hidden.size() == S * nt * d_model, ErrorCode::kFormat, who,
           ": decision-point arrays disagree (", S, " points)");
  FM_CHECK(hit_ptr.size() == static_cast<size_t>(n_steps) + 1 && hit_ptr.front() == 0 &&
               static_cast<size_t>(hit_ptr.back()) == hit_chunk.size() && hit_count.size() == hit_chunk.size(),
           ErrorCode::kFormat, who, ": hit arrays disagree");
  for (size_t t = 0; t + 1 < hit_ptr.size(); ++t)
    FM_CHECK(hit_ptr[t] <= hit_ptr[t + 1], ErrorCode::kFormat, who, ": hit_ptr decreases");
  for (size_t k = 0; k < hit_chunk.size(); ++k) {
    FM_CHECK(hit_chunk[k] >= 0 && hit_chunk[k] < n_attended, ErrorCode::kFormat, who, ": hit_chunk[", k, "] = ",
             hit_chunk[k], " is outside the ", n_attended, " chunks of its ", n_prompt + n_steps, " tokens");
    FM_CHECK(hit_count[k] >= 1 && hit_count[k] <= n_layers * n_heads, ErrorCode::kFormat, who, ": hit_count[", k,
             "] = ", hit_count[k], " is outside [1, ", n_layers * n_heads, "] (layers × heads)");
  }
  if (!mass_ptr.empty() || !mass_chunk.empty() || !mass_value.empty()) {
    FM_CHECK(mass_ptr.size() == static_cast<size_t>(n_steps) + 1 && mass_ptr.front() == 0 &&
                 static_cast<size_t>(mass_ptr.back()) == mass_chunk.size() && mass_value.size() == mass_chunk.size(),
             ErrorCode::kFormat, who, ": mass arrays disagree");
    for (size_t t = 0; t + 1 < mass_ptr.size(); ++t)
      FM_CHECK(mass_ptr[t] <= mass_ptr[t + 1], ErrorCode::kFormat, who, ": mass_ptr decreases");
    for (size_t k = 0; k < mass_chunk.size(); ++k) {
      FM_CHECK(mass_chunk[k] >= 0 && mass_chunk[k] < n_attended, ErrorCode::kFormat, who, ": mass_chunk[", k,
               "] = ", mass_chunk[k], " is outside the ", n_attended, " chunks of its ", n_prompt + n_steps,
               " tokens");
      FM_CHECK(mass_value[k] >= 0.0f && mass_value[k] <= 1.0f + 1e-3f, ErrorCode::kFormat, who, ": mass_value[",
               k, "] = ", mass_value[k], " is outside [0, 1]");
    }
  }
  for (size_t s = 0; s < S; ++s)
    FM_CHECK(point_step[s] >= 0 && point_step[s] <= n_steps && point_pos[s] >= 0 &&
                 point_pos[s] < n_prompt + n_steps,
             ErrorCode::kFormat, who, ": decision point ", s, " (step ", point_step[s], ", position ",
             point_pos[s], ") out of range");
  FM_CHECK(keys.size() == poolings.size() && scales.size() == poolings.size(), ErrorCode::kFormat,
           who, ": keys for ", keys.size(), " poolings, ", poolings.size(), " named");
  for (size_t p = 0; p < poolings.size(); ++p) {
    FM_CHECK(keys[p].size() == nt && scales[p].size() == nt, ErrorCode::kFormat, who,
             ": keys for the wrong number of layers");
    for (size_t t = 0; t < nt; ++t)
      FM_CHECK(keys[p][t].size() == static_cast<size_t>(n_chunks) * key_dim() &&
                   scales[p][t].size() == static_cast<size_t>(n_chunks),
               ErrorCode::kFormat, who, ": keys of ", poolings[p], " layer ",
               target_layers[t], " do not hold ", n_chunks, " chunks");
  }
}

std::string split_of(const std::string& name) {
  const uint64_t h = fnv1a(reinterpret_cast<const uint8_t*>(name.data()), name.size());
  const int b = static_cast<int>((h >> 17) % 10);
  return b < 8 ? "train" : b == 8 ? "val" : "test";
}

void write_dump(const std::string& path, const DumpDoc& d) {
  d.check();
  nlohmann::json h;
  h["name"] = d.name;
  h["source"] = d.source;
  h["split"] = d.split;
  h["model"] = d.model;
  h["d_model"] = d.d_model;
  h["n_kv_heads"] = d.n_kv_heads;
  h["head_dim"] = d.head_dim;
  h["n_layers"] = d.n_layers;
  h["n_heads"] = d.n_heads;
  h["page_tokens"] = d.page_tokens;
  h["chunk_tokens"] = d.chunk_tokens;
  h["tau"] = d.tau;
  h["top_p"] = d.top_p;
  h["rope"] = {{"n_rot", d.rope.n_rot}, {"freq_base", d.rope.freq_base},
               {"freq_scale", d.rope.freq_scale}, {"neox", d.rope.neox}};
  h["target_layers"] = d.target_layers;
  h["poolings"] = d.poolings;
  h["n_prompt"] = d.n_prompt;
  h["n_steps"] = d.n_steps;
  h["n_points"] = d.point_step.size();
  h["n_chunks"] = d.n_chunks;
  const auto arrays = arrays_of(d);
  for (const auto& a : arrays) h["arrays"].push_back({{"name", a.name}, {"dtype", a.dtype}, {"count", a.count}});
  const std::string hs = h.dump();

  std::vector<uint8_t> buf;
  auto put = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf.insert(buf.end(), b, b + n);
  };
  const uint32_t ver = kDumpVersion, zero = 0;
  const uint64_t hl = hs.size();
  put(kMagic, 8);
  put(&ver, 4);
  put(&zero, 4);
  put(&hl, 8);
  put(hs.data(), hs.size());
  for (const auto& a : arrays) put(a.data, a.elem * a.count);
  const uint64_t sum = fnv1a(buf.data(), buf.size());
  put(&sum, 8);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  FM_CHECK(out.good(), ErrorCode::kIo, "cannot write ", path);
  out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  out.close();
  FM_CHECK(out.good(), ErrorCode::kIo, "writing ", path, " failed");
}

DumpDoc read_dump(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FM_CHECK(in.good(), ErrorCode::kIo, "cannot open ", path);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_dump(bytes, path);
}

DumpDoc parse_dump(const std::vector<uint8_t>& buf, const std::string& path) {
  FM_CHECK(buf.size() >= 32 && std::memcmp(buf.data(), kMagic, 8) == 0, ErrorCode::kFormat, path,
           " is not a flashmem dump file");
  uint32_t ver = 0;
  uint64_t hl = 0, sum = 0;
  std::memcpy(&ver, buf.data() + 8, 4);
  std::memcpy(&hl, buf.data() + 16, 8);
  FM_CHECK(ver == 1 || ver == kDumpVersion, ErrorCode::kFormat, path, ": dump version ", ver,
           ", this build reads 1 to ", kDumpVersion);
  FM_CHECK(hl <= kMaxHeader && 24 + hl + 8 <= buf.size(), ErrorCode::kFormat, path, ": bad header length ", hl);
  std::memcpy(&sum, buf.data() + buf.size() - 8, 8);
  FM_CHECK(fnv1a(buf.data(), buf.size() - 8) == sum, ErrorCode::kFormat, path,
           ": checksum mismatch (the file is damaged or truncated)");
  DumpDoc d;
  size_t at = 24 + hl;
  try {
    const auto h = nlohmann::json::parse(buf.begin() + 24, buf.begin() + 24 + static_cast<std::ptrdiff_t>(hl));
    d.name = h.at("name");
    d.source = h.at("source");
    d.split = h.at("split");
    d.model = h.at("model");
    // Integers are taken only as JSON integers in range: nlohmann would cast a float or a
    // too-large value silently (undefined behaviour for a float out of int's range).
    const auto integer = [&](const nlohmann::json& j, const char* key) -> int64_t {
      constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
      FM_CHECK(j.is_number_integer(), ErrorCode::kFormat, path, ": header field ", key, " is not an integer");
      FM_CHECK(j.is_number_unsigned() ? j.get<uint64_t>() <= kMax : j.get<int64_t>() >= 0 && j.get<int64_t>() <= kMax,
               ErrorCode::kFormat, path, ": header field ", key, " = ", j.dump(), " is outside [0, ", kMax, "]");
      return j.get<int64_t>();
    };
    const auto i32 = [&](const char* key) { return static_cast<int>(integer(h.at(key), key)); };
    d.d_model = i32("d_model");
    d.n_kv_heads = i32("n_kv_heads");
    d.head_dim = i32("head_dim");
    d.n_layers = i32("n_layers");
    d.n_heads = i32("n_heads");
    d.page_tokens = i32("page_tokens");
    d.chunk_tokens = i32("chunk_tokens");
    d.tau = i32("tau");
    // Floats likewise only as JSON numbers inside float's range (a double beyond it would be
    // converted with undefined behaviour).
    const auto real = [&](const nlohmann::json& j, const char* key) -> float {
      FM_CHECK(j.is_number() && std::abs(j.get<double>()) <= std::numeric_limits<float>::max(), ErrorCode::kFormat,
               path, ": header field ", key, " = ", j.dump(), " is not a number in float's range");
      return static_cast<float>(j.get<double>());
    };
    d.top_p = real(h.at("top_p"), "top_p");
    d.rope.n_rot = static_cast<int>(integer(h.at("rope").at("n_rot"), "rope.n_rot"));
    d.rope.freq_base = real(h.at("rope").at("freq_base"), "rope.freq_base");
    d.rope.freq_scale = real(h.at("rope").at("freq_scale"), "rope.freq_scale");
    d.rope.neox = h.at("rope").at("neox");
    for (const auto& l : h.at("target_layers")) d.target_layers.push_back(static_cast<int>(integer(l, "target_layers")));
    d.poolings = h.at("poolings").get<std::vector<std::string>>();
    d.n_prompt = integer(h.at("n_prompt"), "n_prompt");
    d.n_steps = integer(h.at("n_steps"), "n_steps");
    d.n_chunks = integer(h.at("n_chunks"), "n_chunks");
    d.keys.assign(d.poolings.size(), std::vector<std::vector<uint8_t>>(d.target_layers.size()));
    d.scales.assign(d.poolings.size(), std::vector<std::vector<float>>(d.target_layers.size()));
    std::map<std::string, std::pair<void*, size_t>> dst;  // name → (vector to resize, elem size)
    auto read_into = [&](auto& v, size_t count) {
      using T = typename std::remove_reference_t<decltype(v)>::value_type;
      const size_t bytes = count * sizeof(T);
      FM_CHECK(count <= buf.size() && at + bytes + 8 <= buf.size(), ErrorCode::kFormat, path,
               ": arrays run past the end of the file");
      v.resize(count);
      if (bytes > 0) std::memcpy(v.data(), buf.data() + at, bytes);  // an empty vector may have no data()
      at += bytes;
    };
    for (const auto& a : h.at("arrays")) {
      const std::string n = a.at("name");
      const auto count = static_cast<size_t>(integer(a.at("count"), "count"));
      if (n == "point_step") read_into(d.point_step, count);
      else if (n == "point_pos") read_into(d.point_pos, count);
      else if (n == "hidden") read_into(d.hidden, count);
      else if (n == "hit_ptr") read_into(d.hit_ptr, count);
      else if (n == "hit_chunk") read_into(d.hit_chunk, count);
      else if (n == "hit_count") read_into(d.hit_count, count);
      else if (n == "mass_ptr") read_into(d.mass_ptr, count);
      else if (n == "mass_chunk") read_into(d.mass_chunk, count);
      else if (n == "mass_value") read_into(d.mass_value, count);
      else {
        bool found = false;
        for (size_t p = 0; p < d.poolings.size() && !found; ++p)
          for (size_t t = 0; t < d.target_layers.size() && !found; ++t) {
            const std::string sfx = d.poolings[p] + "." + std::to_string(d.target_layers[t]);
            if (n == "keys." + sfx) read_into(d.keys[p][t], count), found = true;
            else if (n == "scales." + sfx) read_into(d.scales[p][t], count), found = true;
          }
        FM_CHECK(found, ErrorCode::kFormat, path, ": unknown array '", n, "'");
      }
    }
  } catch (const nlohmann::json::exception& e) {
    FM_FAIL(ErrorCode::kFormat, path, ": bad dump header: ", e.what());
  }
  FM_CHECK(at + 8 == buf.size(), ErrorCode::kFormat, path, ": ", buf.size() - 8 - at,
           " bytes after the arrays");
  d.check(path);
  return d;
}

LabelKind parse_labels(const std::string& s) {
  if (s == "hits") return LabelKind::kHits;
  if (s == "mass") return LabelKind::kMass;
  FM_FAIL(ErrorCode::kInvalidArgument, "unknown labels '", s, "' (known: hits, mass)");
}

const char* labels_name(LabelKind k) { return k == LabelKind::kMass ? "mass" : "hits"; }

IndexerDataset load_dataset(const std::vector<std::string>& paths, const LoadOptions& o) {
  IndexerDataset ds;
  FM_CHECK(!paths.empty(), ErrorCode::kInvalidArgument, "no dump files given");
  FM_CHECK(o.mass_top_p > 0.0f && o.mass_top_p <= 1.0f, ErrorCode::kInvalidArgument,
           "the mass share of the labels must be in (0, 1], got ", o.mass_top_p);
  for (const std::string& path : paths) {
    const DumpDoc d = read_dump(path);
    const std::string fam = doc_family(d);
    const auto in = [&](const std::vector<std::string>& v) { return std::find(v.begin(), v.end(), fam) != v.end(); };
    if (in(o.families_out) || (!o.families_only.empty() && !in(o.families_only))) continue;
    add_to_dataset(ds, d, o, path);
  }
  return ds;
}

std::string doc_family(const DumpDoc& d) {
  const size_t colon = d.source.find(':');
  return colon == std::string::npos ? d.source : d.source.substr(colon + 1);
}

void add_to_dataset(IndexerDataset& ds, const DumpDoc& d, const LoadOptions& o, const std::string& path) {
  FM_CHECK(o.labels != LabelKind::kMass || !d.mass_ptr.empty(), ErrorCode::kFormat, path,
           " holds no attention mass (a version-1 dump): labels by mass need a newer dump");
  const auto pit = std::find(d.poolings.begin(), d.poolings.end(), o.pooling);
  FM_CHECK(pit != d.poolings.end(), ErrorCode::kFormat, path, " has no keys pooled as ", o.pooling);
  const size_t pi = static_cast<size_t>(pit - d.poolings.begin());
  std::vector<int> layers = o.layers.empty() ? d.target_layers : o.layers;
  std::vector<size_t> ti;
  for (int l : layers) {
    const auto it = std::find(d.target_layers.begin(), d.target_layers.end(), l);
    FM_CHECK(it != d.target_layers.end(), ErrorCode::kFormat, path, " has no target layer ", l);
    ti.push_back(static_cast<size_t>(it - d.target_layers.begin()));
  }
  if (ds.docs.empty()) {
    ds.d_model = d.d_model;
    ds.n_kv_heads = d.n_kv_heads;
    ds.head_dim = d.head_dim;
    ds.n_targets = static_cast<int>(layers.size());
    ds.target_layers = layers;
    ds.rope = d.rope;
    ds.chunk_tokens = d.chunk_tokens;
    ds.max_hits = o.labels == LabelKind::kHits ? static_cast<float>(d.n_layers * d.n_heads) : 1.0f;
  }
  FM_CHECK(ds.d_model == d.d_model && ds.n_kv_heads == d.n_kv_heads && ds.head_dim == d.head_dim &&
               ds.chunk_tokens == d.chunk_tokens,
           ErrorCode::kFormat, path, " does not match the shapes of the first file");
  IndexerDoc doc;
  doc.name = d.name;
  doc.n_chunks = d.n_chunks;
  for (size_t t : ti) {
    doc.keys.push_back(d.keys[pi][t]);
    doc.scales.push_back(d.scales[pi][t]);
  }
  const int64_t pt = d.page_tokens, cpp = d.page_tokens / d.chunk_tokens;
  doc.label_ptr.push_back(0);
  std::vector<int32_t> best;
  for (size_t s = 0; s < d.point_step.size(); ++s) {
    const int64_t tokens = int64_t{d.point_pos[s]} + 1;
    const int64_t pages = tokens / pt;
    const int64_t mb = std::min(pages, ceil_div(o.sink_tokens, pt));
    const int64_t me = std::max(mb, pages - ceil_div(o.tail_tokens, pt));
    const int32_t cb = static_cast<int32_t>(std::min(d.n_chunks, mb * cpp));
    const int32_t ce = static_cast<int32_t>(std::min(d.n_chunks, me * cpp));
    const int64_t t1 = std::min<int64_t>(d.n_steps, int64_t{d.point_step[s]} + d.tau);
    if (o.labels == LabelKind::kHits)
      hit_labels(d, o, cb, ce, d.point_step[s], t1, best);
    else
      mass_labels(d, o, cb, ce, d.point_step[s], t1, best);
    doc.position.push_back(d.point_pos[s]);
    doc.cand_begin.push_back(cb);
    doc.cand_end.push_back(ce);
    for (size_t t : ti) {
      const uint16_t* hrow = d.hidden.data() + (s * d.target_layers.size() + t) * d.d_model;
      for (int i = 0; i < d.d_model; ++i) doc.hidden.push_back(fp16_to_fp32(hrow[i]));
    }
    for (size_t c = 0; c < best.size(); ++c)
      if (best[c] > 0) {
        doc.label_idx.push_back(cb + static_cast<int32_t>(c));
        doc.label_hits.push_back(static_cast<float>(best[c]));
      }
    doc.label_ptr.push_back(static_cast<int32_t>(doc.label_idx.size()));
  }
  ds.docs.push_back(std::move(doc));
}

}  // namespace flashmem::train

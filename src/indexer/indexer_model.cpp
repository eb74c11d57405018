#include "indexer/indexer_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "core/error.h"
#include "core/fp8.h"
#include "core/hadamard.h"
#include "io/safetensors.h"
#include "ops/cpu/elementwise.h"

namespace flashmem {

IndexerModel random_indexer(const IndexerShape& shape, const IndexerKeys& keys, uint64_t seed) {
  IndexerModel m;
  m.shape = shape;
  m.keys = keys;
  std::mt19937_64 rng(seed);
  const auto fill = [&](std::vector<float>& v, size_t n, int fan_in) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const float a = std::sqrt(3.0f / static_cast<float>(fan_in));
    v.resize(n);
    for (float& x : v) x = a * u(rng);
  };
  const size_t qd = static_cast<size_t>(shape.n_heads) * shape.head_dim;
  for (size_t t = 0; t < keys.layers.size(); ++t) {
    IndexerLayer l;
    fill(l.wq_a, static_cast<size_t>(shape.rank) * shape.d_model, shape.d_model);
    l.q_norm.assign(static_cast<size_t>(shape.rank), 1.0f);
    fill(l.wq_b, qd * shape.rank, shape.rank);
    fill(l.weights_proj, static_cast<size_t>(shape.n_heads) * shape.d_model, shape.d_model);
    m.layers.push_back(std::move(l));
  }
  m.check();
  return m;
}

void IndexerModel::check() const {
  const IndexerShape& s = shape;
  FM_CHECK(s.d_model > 0 && s.n_heads > 0 && s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 &&
               is_pow2(s.head_dim) && s.rank > 0,
           ErrorCode::kFormat, "indexer: bad shape (d_model ", s.d_model, ", heads ", s.n_heads, "/",
           s.n_kv_heads, ", head_dim ", s.head_dim, ", rank ", s.rank, ")");
  FM_CHECK(layers.size() == keys.layers.size() && !layers.empty(), ErrorCode::kFormat, "indexer: ",
           layers.size(), " weight sets for ", keys.layers.size(), " target layers");
  const size_t qd = static_cast<size_t>(s.n_heads) * s.head_dim;
  for (const IndexerLayer& l : layers)
    FM_CHECK(l.wq_a.size() == static_cast<size_t>(s.rank) * s.d_model && l.q_norm.size() == static_cast<size_t>(s.rank) &&
                 l.wq_b.size() == qd * s.rank && l.weights_proj.size() == static_cast<size_t>(s.n_heads) * s.d_model,
             ErrorCode::kFormat, "indexer: weights do not match the shape");
}

void IndexerModel::encode_query(int t, const float* h, int32_t position, float* q, float* w,
                                Activations* keep) const {
  const IndexerShape& s = shape;
  const IndexerLayer& l = layers[t];
  std::vector<float> a(s.rank);
  double ss = 0.0;
  for (int r = 0; r < s.rank; ++r) {
    const float* row = l.wq_a.data() + static_cast<size_t>(r) * s.d_model;
    float acc = 0.0f;
    for (int i = 0; i < s.d_model; ++i) acc += row[i] * h[i];
    a[r] = acc;
    ss += static_cast<double>(acc) * acc;
  }
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / s.rank + s.eps));
  if (keep) {
    keep->inv_rms = inv;
    keep->a_hat.resize(s.rank);
    keep->an.resize(s.rank);
  }
  for (int r = 0; r < s.rank; ++r) {
    const float ah = a[r] * inv;
    a[r] = ah * l.q_norm[r];
    if (keep) {
      keep->a_hat[r] = ah;
      keep->an[r] = a[r];
    }
  }
  const int qd = s.n_heads * s.head_dim;
  for (int o = 0; o < qd; ++o) {
    const float* row = l.wq_b.data() + static_cast<size_t>(o) * s.rank;
    float acc = 0.0f;
    for (int r = 0; r < s.rank; ++r) acc += row[r] * a[r];
    q[o] = acc;
  }
  cpu::rope(q, s.n_heads, s.head_dim, position, s.rope);
  for (int hh = 0; hh < s.n_heads; ++hh) hadamard_inplace(q + static_cast<size_t>(hh) * s.head_dim, s.head_dim);
  const float ws = 1.0f / std::sqrt(static_cast<float>(qd));
  for (int hh = 0; hh < s.n_heads; ++hh) {
    const float* row = l.weights_proj.data() + static_cast<size_t>(hh) * s.d_model;
    float acc = 0.0f;
    for (int i = 0; i < s.d_model; ++i) acc += row[i] * h[i];
    w[hh] = acc * ws;
  }
}

void index_logits_reference(const IndexerShape& s, const float* q, const float* w, float bias,
                            const uint8_t* keys, const float* scales, int64_t n, float* logits) {
  const int d = s.head_dim, rep = s.n_heads / s.n_kv_heads;
  for (int64_t c = 0; c < n; ++c) {
    double acc = bias;
    for (int h = 0; h < s.n_heads; ++h) {
      double dot = 0.0;
      for (int i = 0; i < d; ++i)
        dot += static_cast<double>(q[h * d + i]) *
               fp8_e4m3_to_fp32(keys[(c * s.n_kv_heads + h / rep) * d + i]) * scales[c];
      acc += static_cast<double>(w[h]) * (dot > 0.0 ? dot : 0.0);
    }
    logits[c] = static_cast<float>(acc);
  }
}

namespace {

SafeTensor f32_tensor(const std::vector<float>& v, std::vector<int64_t> shape) {
  SafeTensor t;
  t.dtype = "F32";
  t.shape = std::move(shape);
  t.data.resize(v.size() * sizeof(float));
  std::memcpy(t.data.data(), v.data(), t.data.size());
  return t;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The F32 tensor `name` of exactly `shape` (what `dims` names, e.g. "rank × d_model"): a
// transposed matrix has the right number of values but would be read with the wrong strides.
std::vector<float> f32_of(const SafeTensorsFile& f, const std::string& name, const std::vector<int64_t>& shape,
                          const char* dims, const std::string& path) {
  const auto it = f.tensors.find(name);
  FM_CHECK(it != f.tensors.end(), ErrorCode::kFormat, path, ": no tensor ", name);
  FM_CHECK(it->second.dtype == "F32", ErrorCode::kFormat, path, ": tensor ", name, " is ", it->second.dtype,
           ", expected F32");
  FM_CHECK(it->second.shape == shape, ErrorCode::kFormat, path, ": tensor ", name, " has shape ",
           shape_str(it->second.shape), ", expected ", shape_str(shape), " (", dims, " from the metadata)");
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  FM_ICHECK(it->second.data.size() == n * sizeof(float));  // read_safetensors checked the bytes
  std::vector<float> v(n);
  std::memcpy(v.data(), it->second.data.data(), it->second.data.size());
  for (float x : v) FM_CHECK(std::isfinite(x), ErrorCode::kFormat, path, ": tensor ", name, " holds a non-finite value");
  return v;
}

int meta_int(const std::map<std::string, std::string>& m, const std::string& k, const std::string& path) {
  const auto it = m.find(k);
  FM_CHECK(it != m.end(), ErrorCode::kFormat, path, ": metadata lacks ", k);
  try {
    size_t used = 0;
    const long v = std::stol(it->second, &used);
    FM_CHECK(used == it->second.size() && v >= 0 && v < (1L << 30), ErrorCode::kFormat, path, ": bad ", k);
    return static_cast<int>(v);
  } catch (const std::logic_error&) {
    FM_FAIL(ErrorCode::kFormat, path, ": metadata ", k, " = '", it->second, "' is not an integer");
  }
}

float meta_float(const std::map<std::string, std::string>& m, const std::string& k, const std::string& path) {
  const auto it = m.find(k);
  FM_CHECK(it != m.end(), ErrorCode::kFormat, path, ": metadata lacks ", k);
  try {
    size_t used = 0;
    const float v = std::stof(it->second, &used);
    FM_CHECK(used == it->second.size() && std::isfinite(v), ErrorCode::kFormat, path, ": metadata ", k, " = '",
             it->second, "' is not a finite number");
    return v;
  } catch (const std::logic_error&) {
    FM_FAIL(ErrorCode::kFormat, path, ": metadata ", k, " = '", it->second, "' is not a number");
  }
}

}  // namespace

void save_indexer(const std::string& path, const IndexerModel& m, const std::map<std::string, std::string>& extra) {
  m.check();
  SafeTensorsFile f;
  f.metadata = extra;
  const IndexerShape& s = m.shape;
  auto put = [&](const char* k, double v) {
    char b[64];
    std::snprintf(b, sizeof b, "%.9g", v);
    f.metadata[k] = b;
  };
  f.metadata["format"] = "flashmem-memory-indexer";
  f.metadata["version"] = "1";
  put("d_model", s.d_model);
  put("n_heads", s.n_heads);
  put("n_kv_heads", s.n_kv_heads);
  put("head_dim", s.head_dim);
  put("rank", s.rank);
  put("eps", s.eps);
  put("rope_n_rot", s.rope.n_rot);
  put("rope_freq_base", s.rope.freq_base);
  put("rope_freq_scale", s.rope.freq_scale);
  put("rope_neox", s.rope.neox ? 1 : 0);
  put("chunk_tokens", m.keys.chunk_tokens);
  f.metadata["pooling"] = m.keys.pooling;
  std::string ls;
  for (int l : m.keys.layers) ls += (ls.empty() ? "" : ",") + std::to_string(l);
  f.metadata["target_layers"] = ls;
  const int64_t qd = int64_t{s.n_heads} * s.head_dim;
  for (size_t t = 0; t < m.layers.size(); ++t) {
    const std::string pre = "layers." + std::to_string(m.keys.layers[t]) + ".";
    const IndexerLayer& l = m.layers[t];
    f.tensors[pre + "wq_a"] = f32_tensor(l.wq_a, {s.rank, s.d_model});
    f.tensors[pre + "q_norm"] = f32_tensor(l.q_norm, {s.rank});
    f.tensors[pre + "wq_b"] = f32_tensor(l.wq_b, {qd, s.rank});
    f.tensors[pre + "weights_proj"] = f32_tensor(l.weights_proj, {s.n_heads, s.d_model});
    f.tensors[pre + "bias"] = f32_tensor({l.bias}, {1});
  }
  write_safetensors(path, f);
}

IndexerModel select_targets(const IndexerModel& m, std::vector<int> layers) {
  if (layers.empty()) return m;
  std::sort(layers.begin(), layers.end());
  FM_CHECK(std::adjacent_find(layers.begin(), layers.end()) == layers.end(), ErrorCode::kInvalidArgument,
           "indexer layers must not repeat");
  IndexerModel r;
  r.shape = m.shape;
  r.keys = m.keys;
  r.keys.layers = layers;
  for (int L : layers) {
    const auto it = std::find(m.keys.layers.begin(), m.keys.layers.end(), L);
    if (it == m.keys.layers.end()) {
      std::string have;
      for (int l : m.keys.layers) {
        if (!have.empty()) have += ',';
        have += std::to_string(l);
      }
      FM_FAIL(ErrorCode::kInvalidArgument, "the indexer has no scorer for layer ", L, " (its target layers: ", have, ")");
    }
    r.layers.push_back(m.layers[static_cast<size_t>(it - m.keys.layers.begin())]);
  }
  return r;
}

std::map<std::string, std::string> indexer_metadata(const std::string& path) {
  return read_safetensors(path).metadata;
}

std::shared_ptr<IndexerModel> load_indexer(const std::string& path) {
  return indexer_from_safetensors(read_safetensors(path), path);
}

std::shared_ptr<IndexerModel> indexer_from_safetensors(const SafeTensorsFile& f, const std::string& path) {
  const auto& md = f.metadata;
  const auto fmt = md.find("format");
  FM_CHECK(fmt != md.end() && fmt->second == "flashmem-memory-indexer", ErrorCode::kFormat, path,
           " is not a flashmem Memory Indexer checkpoint");
  FM_CHECK(meta_int(md, "version", path) == 1, ErrorCode::kFormat, path, ": unsupported indexer version");
  auto m = std::make_shared<IndexerModel>();
  IndexerShape& s = m->shape;
  s.d_model = meta_int(md, "d_model", path);
  s.n_heads = meta_int(md, "n_heads", path);
  s.n_kv_heads = meta_int(md, "n_kv_heads", path);
  s.head_dim = meta_int(md, "head_dim", path);
  s.rank = meta_int(md, "rank", path);
  s.eps = meta_float(md, "eps", path);
  s.rope.n_rot = meta_int(md, "rope_n_rot", path);
  s.rope.freq_base = meta_float(md, "rope_freq_base", path);
  s.rope.freq_scale = meta_float(md, "rope_freq_scale", path);
  s.rope.neox = meta_int(md, "rope_neox", path) != 0;
  m->keys.chunk_tokens = meta_int(md, "chunk_tokens", path);
  m->keys.pooling = md.count("pooling") ? md.at("pooling") : "";
  FM_CHECK(m->keys.pooling == "post_rope_mean" || m->keys.pooling == "pre_rope_mean", ErrorCode::kFormat, path,
           ": unknown key pooling '", m->keys.pooling, "'");
  const std::string ls = md.count("target_layers") ? md.at("target_layers") : "";
  for (size_t at = 0; at < ls.size();) {
    const size_t comma = std::min(ls.find(',', at), ls.size());
    try {
      m->keys.layers.push_back(std::stoi(ls.substr(at, comma - at)));
    } catch (const std::logic_error&) {
      FM_FAIL(ErrorCode::kFormat, path, ": bad target_layers '", ls, "'");
    }
    at = comma + 1;
  }
  FM_CHECK(!m->keys.layers.empty(), ErrorCode::kFormat, path, ": no target layers");
  FM_CHECK(std::is_sorted(m->keys.layers.begin(), m->keys.layers.end()) &&
               std::adjacent_find(m->keys.layers.begin(), m->keys.layers.end()) == m->keys.layers.end() &&
               m->keys.layers.front() >= 0,
           ErrorCode::kFormat, path, ": target_layers '", ls, "' must be distinct, ascending and ≥ 0");
  // Sizes the metadata could make absurd are bounded before anything is sized from them
  // (meta_int already caps each at 2^30); the products below then fit 64 bits.
  FM_CHECK(s.d_model > 0 && s.d_model <= (1 << 16) && s.n_heads > 0 && s.n_heads <= 1024 && s.n_kv_heads > 0 &&
               s.head_dim > 0 && s.head_dim <= 1024 && s.rank > 0 && s.rank <= (1 << 16) &&
               s.n_heads % s.n_kv_heads == 0 && is_pow2(s.head_dim),
           ErrorCode::kFormat, path, ": bad indexer shape (d_model ", s.d_model, ", heads ", s.n_heads, "/",
           s.n_kv_heads, ", head_dim ", s.head_dim, ", rank ", s.rank, ")");
  FM_CHECK(std::isfinite(s.eps) && s.eps > 0.0f && s.rope.n_rot > 0 && s.rope.n_rot <= s.head_dim &&
               s.rope.n_rot % 2 == 0 && std::isfinite(s.rope.freq_base) && s.rope.freq_base > 1.0f &&
               std::isfinite(s.rope.freq_scale) && s.rope.freq_scale > 0.0f,
           ErrorCode::kFormat, path, ": bad eps ", s.eps, " or RoPE (n_rot ", s.rope.n_rot, ", base ",
           s.rope.freq_base, ", scale ", s.rope.freq_scale, ")");
  FM_CHECK(m->keys.chunk_tokens >= 1 && m->keys.chunk_tokens <= 4096, ErrorCode::kFormat, path, ": chunk_tokens ",
           m->keys.chunk_tokens, " is outside [1, 4096]");
  const int64_t qd = int64_t{s.n_heads} * s.head_dim;
  size_t expected = 0;
  for (int L : m->keys.layers) {
    const std::string pre = "layers." + std::to_string(L) + ".";
    IndexerLayer l;
    l.wq_a = f32_of(f, pre + "wq_a", {s.rank, s.d_model}, "rank × d_model", path);
    l.q_norm = f32_of(f, pre + "q_norm", {s.rank}, "rank", path);
    l.wq_b = f32_of(f, pre + "wq_b", {qd, s.rank}, "n_heads·head_dim × rank", path);
    l.weights_proj = f32_of(f, pre + "weights_proj", {s.n_heads, s.d_model}, "n_heads × d_model", path);
    l.bias = f32_of(f, pre + "bias", {1}, "one value", path)[0];
    m->layers.push_back(std::move(l));
    expected += 5;
  }
  // Every tensor belongs to a target layer: a stray one means the metadata does not describe
  // the weights (e.g. target_layers edited by hand).
  if (f.tensors.size() != expected) {
    for (const auto& [name, t] : f.tensors) {
      bool known = false;
      for (int L : m->keys.layers)
        for (const char* w : {"wq_a", "q_norm", "wq_b", "weights_proj", "bias"})
          known = known || name == "layers." + std::to_string(L) + "." + w;
      FM_CHECK(known, ErrorCode::kFormat, path, ": tensor ", name, " is not a weight of the target layers ", ls);
    }
  }
  m->check();
  return m;
}

}  // namespace flashmem

#include "models/synthetic.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "core/dtype.h"
#include "core/error.h"
#include "io/gguf_image.h"
#include "io/tokenizer.h"

namespace flashmem {

namespace {

// A counter-based generator: each (seed, tensor, row) starts its own stream, so the bytes do
// not depend on how rows are shared among threads.
uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Rng {
  uint64_t s;
  uint64_t next() { return s = splitmix(s); }
  float uniform(float a) {  // in [−a, a)
    return a * (static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
  void bytes(uint8_t* dst, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
      const uint64_t r = next();
      std::memcpy(dst + i, &r, std::min<size_t>(8, n - i));
    }
  }
};

// One row of `cols` values of `type`, uniform-like in [−a, a) with mean ~0.
void fill_row(GgmlType type, uint8_t* dst, int64_t cols, float a, Rng& rng) {
  switch (type) {
    case GgmlType::F32:
      for (int64_t c = 0; c < cols; ++c) {
        const float v = rng.uniform(a);
        std::memcpy(dst + 4 * c, &v, 4);
      }
      return;
    case GgmlType::F16:
    case GgmlType::BF16:
      for (int64_t c = 0; c < cols; ++c) {
        const float v = rng.uniform(a);
        const uint16_t h = type == GgmlType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
        std::memcpy(dst + 2 * c, &h, 2);
      }
      return;
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < cols / kQK8_0; ++b) {
        auto* blk = reinterpret_cast<BlockQ8_0*>(dst) + b;
        blk->d = fp32_to_fp16(a / 127.0f);
        rng.bytes(reinterpret_cast<uint8_t*>(blk->qs), sizeof blk->qs);
        for (int8_t& q : blk->qs) q = q == -128 ? -127 : q;
      }
      return;
    case GgmlType::Q4_0:
      for (int64_t b = 0; b < cols / kQK4_0; ++b) {
        auto* blk = reinterpret_cast<BlockQ4_0*>(dst) + b;
        blk->d = fp32_to_fp16(a / 8.0f);  // (q − 8)·d
        rng.bytes(blk->qs, sizeof blk->qs);
      }
      return;
    case GgmlType::Q4_1:
      for (int64_t b = 0; b < cols / kQK4_1; ++b) {
        auto* blk = reinterpret_cast<BlockQ4_1*>(dst) + b;
        blk->d = fp32_to_fp16(2.0f * a / 15.0f);  // q·d + m
        blk->m = fp32_to_fp16(-a);
        rng.bytes(blk->qs, sizeof blk->qs);
      }
      return;
    case GgmlType::Q4_K:
      for (int64_t b = 0; b < cols / kQK_K; ++b) {
        auto* blk = reinterpret_cast<BlockQ4_K*>(dst) + b;
        // d·sc·q − dmin·m with sc, m 6-bit (mean 31.5) and q 4-bit (mean 7.5): dmin = 7.5·d
        // centres it, and its spread is then ≈ 257·d (a uniform's is a/√3).
        const float d = a / (257.0f * 1.7320508f);
        blk->d = fp32_to_fp16(d);
        blk->dmin = fp32_to_fp16(7.5f * d);
        rng.bytes(blk->scales, sizeof blk->scales);
        rng.bytes(blk->qs, sizeof blk->qs);
      }
      return;
    case GgmlType::Q6_K:
      for (int64_t b = 0; b < cols / kQK_K; ++b) {
        auto* blk = reinterpret_cast<BlockQ6_K*>(dst) + b;
        rng.bytes(blk->ql, sizeof blk->ql);
        rng.bytes(blk->qh, sizeof blk->qh);
        // d·scale·(q − 32), scale any int8 and q 6-bit: spread ≈ 1365·d
        rng.bytes(reinterpret_cast<uint8_t*>(blk->scales), sizeof blk->scales);
        blk->d = fp32_to_fp16(a / (1365.0f * 1.7320508f));
      }
      return;
    default:
      FM_FAIL(ErrorCode::kUnsupported, "synthetic weights of type ", ggml_type_name(type));
  }
}

constexpr GgmlType kWeightTypes[] = {GgmlType::BF16, GgmlType::F16, GgmlType::F32,  GgmlType::Q8_0,
                                     GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K};

std::string lower(std::string_view s) {
  std::string o(s);
  for (char& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}

// What a tensor holds: a matrix (fan-in = its row length) in the weight type, or an F32 vector.
struct Plan {
  GgufImage image;
  std::vector<int> kind;  // per tensor: 0 matrix, 1 norm (ones), 2 bias (small)
  std::vector<GgmlType> type;
  std::vector<int64_t> cols;
};

Plan plan(const SyntheticSpec& spec) {
  const SyntheticShape& s = spec.shape;
  Plan p;
  GgufImage& img = p.image;
  const std::string a = s.arch + ".";
  img.add_string("general.architecture", s.arch);
  img.add_string("general.name", "synthetic " + s.name + " (" + lower(ggml_type_name(spec.weights)) +
                                     ", random weights)");
  img.add_u32(a + "block_count", static_cast<uint32_t>(s.n_layers));
  img.add_u32(a + "context_length", static_cast<uint32_t>(s.n_ctx));
  img.add_u32(a + "embedding_length", static_cast<uint32_t>(s.d_model));
  img.add_u32(a + "feed_forward_length", static_cast<uint32_t>(s.n_ff));
  img.add_u32(a + "attention.head_count", static_cast<uint32_t>(s.n_heads));
  img.add_u32(a + "attention.head_count_kv", static_cast<uint32_t>(s.n_kv_heads));
  img.add_u32(a + "attention.key_length", static_cast<uint32_t>(s.head_dim));
  img.add_u32(a + "attention.value_length", static_cast<uint32_t>(s.head_dim));
  img.add_f32(a + "attention.layer_norm_rms_epsilon", s.rms_eps);
  img.add_f32(a + "rope.freq_base", s.rope_base);
  // Byte-level vocabulary: the 256 bytes, begin/end of text, then unreachable fillers.
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  tokens.reserve(static_cast<size_t>(s.n_vocab));
  for (int b = 0; b < 256; ++b) tokens.push_back(byte_level_token(static_cast<uint8_t>(b)));
  types.assign(256, 1);
  tokens.push_back("<|begin_of_text|>");
  tokens.push_back("<|end_of_text|>");
  types.push_back(3);
  types.push_back(3);
  for (int i = static_cast<int>(tokens.size()); i < s.n_vocab; ++i) {
    tokens.push_back("<|synthetic_" + std::to_string(i) + "|>");
    types.push_back(3);
  }
  img.add_string("tokenizer.ggml.model", "gpt2");
  img.add_string("tokenizer.ggml.pre", "gpt-2");
  img.add_strings("tokenizer.ggml.tokens", tokens);
  img.add_i32s("tokenizer.ggml.token_type", types);
  img.add_strings("tokenizer.ggml.merges", {});
  img.add_u32("tokenizer.ggml.bos_token_id", 256);
  img.add_u32("tokenizer.ggml.eos_token_id", 257);
  img.add_bool("tokenizer.ggml.add_bos_token", true);

  const auto matrix = [&](const std::string& name, int64_t cols, int64_t rows) {
    img.add_tensor(name, spec.weights, {static_cast<uint64_t>(cols), static_cast<uint64_t>(rows)});
    p.kind.push_back(0);
    p.type.push_back(spec.weights);
    p.cols.push_back(cols);
  };
  const auto vec = [&](const std::string& name, int64_t n, int kind) {
    img.add_tensor(name, GgmlType::F32, {static_cast<uint64_t>(n)});
    p.kind.push_back(kind);
    p.type.push_back(GgmlType::F32);
    p.cols.push_back(n);
  };
  const int64_t d = s.d_model, qd = int64_t{s.n_heads} * s.head_dim, kvd = int64_t{s.n_kv_heads} * s.head_dim;
  matrix("token_embd.weight", d, s.n_vocab);
  vec("output_norm.weight", d, 1);
  if (!s.tied_embeddings) matrix("output.weight", d, s.n_vocab);
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    vec(b + "attn_norm.weight", d, 1);
    matrix(b + "attn_q.weight", d, qd);
    matrix(b + "attn_k.weight", d, kvd);
    matrix(b + "attn_v.weight", d, kvd);
    if (s.arch == "qwen2") {
      vec(b + "attn_q.bias", qd, 2);
      vec(b + "attn_k.bias", kvd, 2);
      vec(b + "attn_v.bias", kvd, 2);
    }
    matrix(b + "attn_output.weight", qd, d);
    vec(b + "ffn_norm.weight", d, 1);
    matrix(b + "ffn_gate.weight", d, s.n_ff);
    matrix(b + "ffn_up.weight", d, s.n_ff);
    matrix(b + "ffn_down.weight", s.n_ff, d);
  }
  return p;
}

}  // namespace

const std::vector<SyntheticShape>& synthetic_shapes() {
  // Shapes as their published configurations give them (RoPE scaling left out: it changes
  // no cost).
  static const std::vector<SyntheticShape> shapes = {
      {"llama-3.1-8b", "llama", 32, 4096, 14336, 32, 8, 128, 128256, 131072, 500000.0f, 1e-5f, false},
      {"qwen2.5-7b", "qwen2", 28, 3584, 18944, 28, 4, 128, 152064, 131072, 1000000.0f, 1e-6f, false},
      {"llama-3.2-1b", "llama", 16, 2048, 8192, 32, 8, 64, 128256, 131072, 500000.0f, 1e-5f, true},
      {"tiny", "llama", 2, 256, 512, 4, 2, 64, 384, 4096, 10000.0f, 1e-5f, false},
  };
  return shapes;
}

std::vector<std::string> synthetic_weight_types() {
  std::vector<std::string> v;
  for (const GgmlType t : kWeightTypes) v.push_back(lower(ggml_type_name(t)));
  return v;
}

SyntheticSpec parse_synthetic(const std::string& text) {
  const size_t colon = text.find(':');
  const std::string name = text.substr(0, colon);
  SyntheticSpec spec;
  const auto& shapes = synthetic_shapes();
  const auto it = std::find_if(shapes.begin(), shapes.end(), [&](const SyntheticShape& s) { return s.name == name; });
  if (it == shapes.end()) {
    std::string known;
    for (const auto& s : shapes) known += (known.empty() ? "" : ", ") + s.name;
    FM_FAIL(ErrorCode::kInvalidArgument, "no synthetic model '", name, "' (known: ", known, ")");
  }
  spec.shape = *it;
  if (colon != std::string::npos) {
    const std::string t = lower(text.substr(colon + 1));
    const auto ty = std::find_if(std::begin(kWeightTypes), std::end(kWeightTypes),
                                 [&](GgmlType x) { return lower(ggml_type_name(x)) == t; });
    if (ty == std::end(kWeightTypes)) {
      std::string known;
      for (const auto& s : synthetic_weight_types()) known += (known.empty() ? "" : ", ") + s;
      FM_FAIL(ErrorCode::kInvalidArgument, "synthetic weights of type '", t, "' are not offered (", known, ")");
    }
    spec.weights = *ty;
  }
  const auto blocks = ggml_traits(spec.weights).block_elems;
  FM_CHECK(spec.shape.d_model % blocks == 0 && spec.shape.n_ff % blocks == 0 &&
               (int64_t{spec.shape.n_heads} * spec.shape.head_dim) % blocks == 0,
           ErrorCode::kInvalidArgument, "the ", spec.shape.name, " shape does not split into ",
           ggml_type_name(spec.weights), " blocks of ", blocks);
  return spec;
}

uint64_t synthetic_image_bytes(const SyntheticSpec& spec) { return plan(spec).image.image_bytes(); }

GgufFile make_synthetic(const SyntheticSpec& spec, uint64_t seed, int threads) {
  const Plan p = plan(spec);
  const int nt = std::max(1, threads);
  const auto fill = [&](size_t i, uint8_t* dst, uint64_t n_bytes) {
    const int64_t cols = p.cols[i];
    if (p.kind[i] != 0) {  // F32 vectors: ones (norms) or small values (biases)
      Rng rng{splitmix(seed ^ (uint64_t{i} << 32))};
      for (int64_t c = 0; c < cols; ++c) {
        const float v = p.kind[i] == 1 ? 1.0f : rng.uniform(0.02f);
        std::memcpy(dst + 4 * c, &v, 4);
      }
      return;
    }
    const size_t row_bytes = ggml_row_bytes(p.type[i], static_cast<uint64_t>(cols));
    const int64_t rows = static_cast<int64_t>(n_bytes / row_bytes);
    const float a = std::sqrt(3.0f / static_cast<float>(cols));  // variance 1/fan-in
    const auto work = [&](int k) {
      for (int64_t r = k; r < rows; r += nt) {
        Rng rng{splitmix(seed ^ (uint64_t{i} << 32) ^ (static_cast<uint64_t>(r) << 1 | 1))};
        fill_row(p.type[i], dst + r * row_bytes, cols, a, rng);
      }
    };
    if (nt == 1 || rows < 64) {
      for (int k = 0; k < nt; ++k) work(k);
      return;
    }
    std::vector<std::thread> pool;
    for (int k = 0; k < nt; ++k) pool.emplace_back(work, k);
    for (auto& t : pool) t.join();
  };
  return p.image.build(fill, "synthetic " + spec.shape.name);
}

}  // namespace flashmem

#include "models/llama.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "io/gguf.h"

namespace flashmem {

namespace {

// Largest number of tokens pushed through the graph at once during prefill; bounds scratch.
constexpr int64_t kMaxUbatch = 512;

struct LayerWeights {
  const float* attn_norm;  // (d_model)
  WeightMatrix wq;         // (n_heads·head_dim, d_model)
  WeightMatrix wk;         // (n_kv_heads·head_dim, d_model)
  WeightMatrix wv;         // (n_kv_heads·head_dim, d_model)
  WeightMatrix wo;         // (d_model, n_heads·head_dim)
  const float* ffn_norm;   // (d_model)
  WeightMatrix w_gate;     // (n_ff, d_model)
  WeightMatrix w_up;       // (n_ff, d_model)
  WeightMatrix w_down;     // (d_model, n_ff)
};

// The one checked accessor every weight goes through: name, type and shape are verified
// here so a bad checkpoint fails at load time, not as NaNs later.
WeightMatrix get_matrix(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows) {
  const GgufTensor& t = f.tensor(name);
  FM_CHECK(t.ne.size() == 2 && static_cast<int64_t>(t.ne[0]) == cols &&
               static_cast<int64_t>(t.ne[1]) == rows,
           ErrorCode::kFormat, "tensor ", name, " has shape [", t.ne.size() > 0 ? t.ne[0] : 0, ", ",
           t.ne.size() > 1 ? t.ne[1] : 0, "], expected [", cols, ", ", rows, "]");
  FM_CHECK(ggml_traits(t.type).dequant_supported, ErrorCode::kUnsupported, "tensor ", name,
           " has type ", ggml_type_name(t.type), ", which flashmem cannot compute with yet");
  return WeightMatrix{t.type, rows, cols, t.row_bytes(), t.data, name};
}

const float* get_vector(const GgufFile& f, const std::string& name, int64_t n) {
  const GgufTensor& t = f.tensor(name);
  FM_CHECK(t.type == GgmlType::F32, ErrorCode::kUnsupported, "tensor ", name, " must be F32, is ",
           ggml_type_name(t.type));
  FM_CHECK(t.ne.size() == 1 && static_cast<int64_t>(t.ne[0]) == n, ErrorCode::kFormat, "tensor ",
           name, " must have ", n, " elements");
  return reinterpret_cast<const float*>(t.data);
}

class LlamaModel final : public Model {
 public:
  LlamaModel(const GgufFile& f, Backend& be, ModelInfo info) : be_(be), info_(std::move(info)) {
    const int d = info_.d_model, hd = info_.head_dim;
    tok_embd_ = get_matrix(f, "token_embd.weight", d, info_.n_vocab);
    output_norm_ = get_vector(f, "output_norm.weight", d);
    if (f.find_tensor("output.weight")) {
      output_ = get_matrix(f, "output.weight", d, info_.n_vocab);
    } else {
      output_ = tok_embd_;
      info_.tied_embeddings = true;
    }
    layers_.resize(info_.n_layers);
    for (int l = 0; l < info_.n_layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      LayerWeights& w = layers_[l];
      w.attn_norm = get_vector(f, p + "attn_norm.weight", d);
      w.wq = get_matrix(f, p + "attn_q.weight", d, int64_t{info_.n_heads} * hd);
      w.wk = get_matrix(f, p + "attn_k.weight", d, int64_t{info_.n_kv_heads} * hd);
      w.wv = get_matrix(f, p + "attn_v.weight", d, int64_t{info_.n_kv_heads} * hd);
      w.wo = get_matrix(f, p + "attn_output.weight", int64_t{info_.n_heads} * hd, d);
      w.ffn_norm = get_vector(f, p + "ffn_norm.weight", d);
      w.w_gate = get_matrix(f, p + "ffn_gate.weight", d, info_.n_ff);
      w.w_up = get_matrix(f, p + "ffn_up.weight", d, info_.n_ff);
      w.w_down = get_matrix(f, p + "ffn_down.weight", info_.n_ff, d);
    }
  }

  const ModelInfo& info() const override { return info_; }

  void forward(std::span<const int32_t> tokens, KvStore& kv, float* logits_last,
               float* all_logits) override {
    FM_CHECK(!tokens.empty(), ErrorCode::kInvalidArgument, "forward needs at least one token");
    const auto& c = kv.config();
    FM_CHECK(c.n_layers == info_.n_layers && c.n_kv_heads == info_.n_kv_heads &&
                 c.head_dim == info_.head_dim,
             ErrorCode::kInvalidArgument, "KV cache shape does not match the model");
    for (size_t i = 0; i < tokens.size(); i += kMaxUbatch) {
      const size_t n = std::min<size_t>(kMaxUbatch, tokens.size() - i);
      const bool last = i + n == tokens.size();
      forward_ubatch(tokens.subspan(i, n), kv, last ? logits_last : nullptr,
                     all_logits ? all_logits + i * info_.n_vocab : nullptr);
    }
  }

 private:
  void forward_ubatch(std::span<const int32_t> tokens, KvStore& kv, float* logits_last,
                      float* all_logits) {
    const int64_t m = static_cast<int64_t>(tokens.size());
    const int d = info_.d_model, hd = info_.head_dim;
    const int64_t pos0 = kv.n_tokens();
    ensure_scratch(m);
    for (int64_t i = 0; i < m; ++i) pos_[i] = static_cast<int32_t>(pos0 + i);

    be_.get_rows(tok_embd_, tokens.data(), m, x_.data());
    const AttentionParams ap = kv.attention_params(info_.n_heads, 1.0f / std::sqrt(float(hd)));
    for (int l = 0; l < info_.n_layers; ++l) {
      const LayerWeights& w = layers_[l];
      // Attention block.
      be_.rms_norm(x_.data(), w.attn_norm, m, d, info_.rms_eps, xn_.data());
      {
        const WeightMatrix* ws[3] = {&w.wq, &w.wk, &w.wv};
        float* ys[3] = {q_.data(), k_.data(), v_.data()};
        be_.matmul_n(ws, xn_.data(), m, ys);
      }
      be_.rope(q_.data(), m, info_.n_heads, hd, pos_.data(), info_.rope);
      be_.rope(k_.data(), m, info_.n_kv_heads, hd, pos_.data(), info_.rope);
      kv.append(l, m, k_.data(), v_.data());
      kv.attend(be_, l, ap, q_.data(), pos_.data(), m, attn_.data());
      be_.matmul(w.wo, attn_.data(), m, tmp_.data());
      be_.add(x_.data(), tmp_.data(), m * d);
      // MLP block (SwiGLU).
      be_.rms_norm(x_.data(), w.ffn_norm, m, d, info_.rms_eps, xn_.data());
      {
        const WeightMatrix* ws[2] = {&w.w_gate, &w.w_up};
        float* ys[2] = {gate_.data(), up_.data()};
        be_.matmul_n(ws, xn_.data(), m, ys);
      }
      be_.swiglu(gate_.data(), up_.data(), m * info_.n_ff, gate_.data());
      be_.matmul(w.w_down, gate_.data(), m, tmp_.data());
      be_.add(x_.data(), tmp_.data(), m * d);
    }
    if (all_logits) {
      be_.rms_norm(x_.data(), output_norm_, m, d, info_.rms_eps, xn_.data());
      be_.matmul(output_, xn_.data(), m, all_logits);
      if (logits_last)
        std::copy_n(all_logits + (m - 1) * info_.n_vocab, info_.n_vocab, logits_last);
    } else if (logits_last) {
      const float* xl = x_.data() + (m - 1) * d;
      be_.rms_norm(xl, output_norm_, 1, d, info_.rms_eps, xn_.data());
      be_.matmul(output_, xn_.data(), 1, logits_last);
    }
  }

  void ensure_scratch(int64_t m) {
    if (static_cast<int64_t>(pos_.size()) >= m) return;
    const int64_t d = info_.d_model, hd = info_.head_dim;
    pos_.resize(m);
    x_.resize(m * d);
    xn_.resize(m * d);
    tmp_.resize(m * d);
    q_.resize(m * info_.n_heads * hd);
    attn_.resize(m * info_.n_heads * hd);
    k_.resize(m * info_.n_kv_heads * hd);
    v_.resize(m * info_.n_kv_heads * hd);
    gate_.resize(m * info_.n_ff);
    up_.resize(m * info_.n_ff);
  }

  Backend& be_;
  ModelInfo info_;
  WeightMatrix tok_embd_;   // (n_vocab, d_model)
  WeightMatrix output_;     // (n_vocab, d_model); == tok_embd_ when tied
  const float* output_norm_ = nullptr;
  std::vector<LayerWeights> layers_;
  // Activation scratch, sized for the largest micro-batch seen.
  std::vector<int32_t> pos_;
  std::vector<float> x_, xn_, tmp_, q_, attn_, k_, v_, gate_, up_;
};

int read_count(const GgufFile& f, const std::string& key, int lo, int hi) {
  const uint32_t v = f.get_u32(key);
  FM_CHECK(static_cast<int64_t>(v) >= lo && static_cast<int64_t>(v) <= hi, ErrorCode::kFormat, key,
           " = ", v, " is outside the plausible range [", lo, ", ", hi, "]");
  return static_cast<int>(v);
}

}  // namespace

ModelInfo llama_read_info(const GgufFile& f, const std::string& arch) {
  ModelInfo m;
  m.architecture = arch;
  m.name = f.get_string_or("general.name", "");
  const std::string p = arch + ".";
  m.n_layers = read_count(f, p + "block_count", 1, 1024);
  m.d_model = read_count(f, p + "embedding_length", 1, 1 << 16);
  m.n_ff = read_count(f, p + "feed_forward_length", 1, 1 << 20);
  m.n_heads = read_count(f, p + "attention.head_count", 1, 1024);
  m.n_kv_heads = f.has(p + "attention.head_count_kv")
                     ? read_count(f, p + "attention.head_count_kv", 1, m.n_heads)
                     : m.n_heads;
  FM_CHECK(m.n_heads % m.n_kv_heads == 0, ErrorCode::kFormat, "head_count ", m.n_heads,
           " is not a multiple of head_count_kv ", m.n_kv_heads);
  m.head_dim = f.has(p + "attention.key_length") ? read_count(f, p + "attention.key_length", 1, 1024)
                                                 : m.d_model / m.n_heads;
  FM_CHECK(m.head_dim % 2 == 0, ErrorCode::kFormat, "head_dim ", m.head_dim, " must be even");
  m.n_ctx_train = f.get_u32_or(p + "context_length", 4096);
  m.rms_eps = f.get_f32_or(p + "attention.layer_norm_rms_epsilon", 1e-5f);
  FM_CHECK(m.rms_eps > 0.0f && m.rms_eps < 1.0f, ErrorCode::kFormat, "bad RMSNorm epsilon ", m.rms_eps);
  m.rope.n_rot = static_cast<int>(f.get_u32_or(p + "rope.dimension_count", m.head_dim));
  FM_CHECK(m.rope.n_rot > 0 && m.rope.n_rot <= m.head_dim && m.rope.n_rot % 2 == 0,
           ErrorCode::kFormat, "bad rope.dimension_count ", m.rope.n_rot);
  m.rope.freq_base = f.get_f32_or(p + "rope.freq_base", 10000.0f);
  FM_CHECK(m.rope.freq_base > 1.0f, ErrorCode::kFormat, "bad rope.freq_base ", m.rope.freq_base);
  const std::string scaling = f.get_string_or(p + "rope.scaling.type", "none");
  if (scaling == "linear") {
    const float factor = f.get_f32(p + "rope.scaling.factor");
    FM_CHECK(factor > 0.0f, ErrorCode::kFormat, "bad rope.scaling.factor ", factor);
    m.rope.freq_scale = 1.0f / factor;
  } else {
    FM_CHECK(scaling == "none", ErrorCode::kUnsupported, "rope scaling '", scaling,
             "' is not supported yet (supported: none, linear)");
  }
  m.rope.neox = false;  // GGUF llama checkpoints are permuted for adjacent-pair rotation
  m.n_vocab = static_cast<int>(f.tensor("token_embd.weight").ne.size() == 2
                                   ? f.tensor("token_embd.weight").ne[1] : 0);
  FM_CHECK(m.n_vocab > 0, ErrorCode::kFormat, "token_embd.weight must be 2-D");
  return m;
}

std::unique_ptr<Model> llama_load(const GgufFile& file, Backend& backend) {
  const std::string arch = file.get_string("general.architecture");
  return std::make_unique<LlamaModel>(file, backend, llama_read_info(file, arch));
}

std::vector<std::string> supported_architectures() { return {"llama"}; }

std::unique_ptr<Model> load_model(const GgufFile& file, Backend& backend) {
  const std::string arch = file.get_string("general.architecture");
  if (arch == "llama") return llama_load(file, backend);
  std::string list;
  for (const auto& a : supported_architectures()) list += (list.empty() ? "" : ", ") + a;
  FM_FAIL(ErrorCode::kUnsupported, "architecture '", arch, "' is not supported (supported: ", list, ")");
}

}  // namespace flashmem

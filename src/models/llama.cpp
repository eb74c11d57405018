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
// Bounds on metadata a file could make absurd (see llama_read_info for the context).
constexpr int kMaxContext = 1 << 24;
// Token ids are int32 and logits are n_vocab floats per position; released vocabularies are
// ≤ 262144 (Gemma 3), so 2^24 leaves room and still refuses garbage.
constexpr uint64_t kMaxVocab = uint64_t{1} << 24;

// What separates the Llama-family graphs flashmem runs. Both are pre-norm decoders with RMSNorm,
// GQA, RoPE and a SwiGLU MLP.
//   llama: no biases; RoPE on adjacent pairs (the GGUF converter permutes Q/K rows for it).
//   qwen2: biases on the Q, K and V projections; RoPE on the two halves of a head (NeoX), as
//          llama.cpp runs LLM_ARCH_QWEN2 (its converter does not permute).
struct ArchTraits {
  const char* name;
  bool qkv_bias;
  bool rope_neox;
};
constexpr ArchTraits kArchitectures[] = {
    {"llama", false, false},
    {"qwen2", true, true},
};

const ArchTraits* find_arch(const std::string& name) {
  for (const ArchTraits& a : kArchitectures)
    if (name == a.name) return &a;
  return nullptr;
}

struct LayerWeights {
  const float* attn_norm;  // (d_model)
  WeightMatrix wq;         // (n_heads·head_dim, d_model)
  WeightMatrix wk;         // (n_kv_heads·head_dim, d_model)
  WeightMatrix wv;         // (n_kv_heads·head_dim, d_model)
  const float* bq = nullptr;  // (n_heads·head_dim) — biases, qwen2 only
  const float* bk = nullptr;  // (n_kv_heads·head_dim)
  const float* bv = nullptr;  // (n_kv_heads·head_dim)
  WeightMatrix wo;         // (d_model, n_heads·head_dim)
  const float* ffn_norm;   // (d_model)
  WeightMatrix w_gate;     // (n_ff, d_model)
  WeightMatrix w_up;       // (n_ff, d_model)
  WeightMatrix w_down;     // (d_model, n_ff)
};

// The one checked accessor every weight goes through: name, type and shape are verified
// here so a bad checkpoint fails at load time, not as NaNs later.
std::string shape_str(const GgufTensor& t) {
  std::string s = "[";
  for (size_t i = 0; i < t.ne.size(); ++i) s += (i ? ", " : "") + std::to_string(t.ne[i]);
  return s + "]";
}

// Error(kFormat) naming the tensor, its shape and the expected one (ne order: [cols, rows]),
// and saying so when the tensor is the expected one transposed.
void check_matrix_shape(const GgufTensor& t, int64_t cols, int64_t rows, const char* what) {
  const auto is = [&](int64_t a, int64_t b) {
    return t.ne.size() == 2 && t.ne[0] == static_cast<uint64_t>(a) && t.ne[1] == static_cast<uint64_t>(b);
  };
  FM_CHECK(is(cols, rows), ErrorCode::kFormat, "tensor ", t.name, " has shape ", shape_str(t), ", expected [",
           cols, ", ", rows, "]", what, is(rows, cols) ? "; it is stored transposed" : "");
}

WeightMatrix get_matrix(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows) {
  const GgufTensor& t = f.tensor(name);
  check_matrix_shape(t, cols, rows, "");
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
    // Every weight goes through the backend once (CUDA uploads it; the CPU keeps the file's).
    auto matrix = [&](const std::string& name, int64_t cols, int64_t rows) {
      return be_.prepare(get_matrix(f, name, cols, rows));
    };
    auto vec = [&](const std::string& name, int64_t n) { return be_.prepare(get_vector(f, name, n), n); };
    tok_embd_ = matrix("token_embd.weight", d, info_.n_vocab);
    output_norm_ = vec("output_norm.weight", d);
    if (f.find_tensor("output.weight")) {
      output_ = matrix("output.weight", d, info_.n_vocab);
    } else {
      output_ = tok_embd_;
      info_.tied_embeddings = true;
    }
    layers_.resize(info_.n_layers);
    for (int l = 0; l < info_.n_layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      LayerWeights& w = layers_[l];
      w.attn_norm = vec(p + "attn_norm.weight", d);
      w.wq = matrix(p + "attn_q.weight", d, int64_t{info_.n_heads} * hd);
      w.wk = matrix(p + "attn_k.weight", d, int64_t{info_.n_kv_heads} * hd);
      w.wv = matrix(p + "attn_v.weight", d, int64_t{info_.n_kv_heads} * hd);
      if (find_arch(info_.architecture)->qkv_bias) {
        w.bq = vec(p + "attn_q.bias", int64_t{info_.n_heads} * hd);
        w.bk = vec(p + "attn_k.bias", int64_t{info_.n_kv_heads} * hd);
        w.bv = vec(p + "attn_v.bias", int64_t{info_.n_kv_heads} * hd);
      }
      w.wo = matrix(p + "attn_output.weight", int64_t{info_.n_heads} * hd, d);
      w.ffn_norm = vec(p + "ffn_norm.weight", d);
      w.w_gate = matrix(p + "ffn_gate.weight", d, info_.n_ff);
      w.w_up = matrix(p + "ffn_up.weight", d, info_.n_ff);
      w.w_down = matrix(p + "ffn_down.weight", info_.n_ff, d);
    }
  }

  const ModelInfo& info() const override { return info_; }

  void forward(std::span<const int32_t> tokens, KvStore& kv, float* logits_last,
               float* all_logits) override {
    FM_CHECK(!tokens.empty(), ErrorCode::kInvalidArgument, "forward needs at least one token");
    check_store(kv);
    for (size_t i = 0; i < tokens.size(); i += kMaxUbatch) {
      const size_t n = std::min<size_t>(kMaxUbatch, tokens.size() - i);
      const bool last = i + n == tokens.size();
      const Piece piece{tokens.subspan(i, n), &kv, last ? logits_last : nullptr,
                        all_logits ? all_logits + i * info_.n_vocab : nullptr, tap_};
      forward_ubatch(std::span<const Piece>(&piece, 1));
    }
  }

  void forward_batch(std::span<const SequenceInput> seqs) override {
    for (size_t i = 0; i < seqs.size(); ++i) {
      FM_CHECK(seqs[i].kv != nullptr && !seqs[i].tokens.empty(), ErrorCode::kInvalidArgument, "sequence ", i,
               " of the batch has no KV store or no tokens");
      check_store(*seqs[i].kv);
      for (size_t j = 0; j < i; ++j)
        FM_CHECK(seqs[j].kv != seqs[i].kv, ErrorCode::kInvalidArgument, "sequences ", j, " and ", i,
                 " of the batch share one KV store");
    }
    // Micro-batches of at most kMaxUbatch tokens; a long sequence spans several, and only its
    // last piece asks for logits.
    std::vector<Piece> ub;
    int64_t filled = 0;
    for (const SequenceInput& s : seqs) {
      for (size_t i = 0; i < s.tokens.size();) {
        const size_t n = std::min<size_t>(static_cast<size_t>(kMaxUbatch - filled), s.tokens.size() - i);
        const bool last = i + n == s.tokens.size();
        ub.push_back(Piece{s.tokens.subspan(i, n), s.kv, last ? s.logits_last : nullptr, nullptr, s.tap});
        filled += static_cast<int64_t>(n);
        i += n;
        if (filled == kMaxUbatch) {
          forward_ubatch(ub);
          ub.clear();
          filled = 0;
        }
      }
    }
    if (!ub.empty()) forward_ubatch(ub);
  }

 private:
  // One sequence's tokens within a micro-batch.
  struct Piece {
    std::span<const int32_t> tokens;
    KvStore* kv;
    float* logits_last;  // of its last token, or nullptr
    float* all_logits;   // of every token (n × n_vocab), or nullptr
    ActivationTap* tap;  // observes its last token, or nullptr
  };

  void check_store(const KvStore& kv) const {
    const auto& c = kv.config();
    FM_CHECK(c.n_layers == info_.n_layers && c.n_kv_heads == info_.n_kv_heads && c.head_dim == info_.head_dim,
             ErrorCode::kInvalidArgument, "KV cache shape does not match the model");
  }

  void forward_ubatch(std::span<const Piece> pieces) {
    int64_t m = 0;
    for (const Piece& p : pieces) m += static_cast<int64_t>(p.tokens.size());
    const int d = info_.d_model, hd = info_.head_dim;
    ensure_scratch(m);
    tokens_.clear();
    for (const Piece& p : pieces) {
      const int64_t pos0 = p.kv->n_tokens();
      for (size_t i = 0; i < p.tokens.size(); ++i) pos_[tokens_.size() + i] = static_cast<int32_t>(pos0 + i);
      tokens_.insert(tokens_.end(), p.tokens.begin(), p.tokens.end());
    }

    be_.get_rows(tok_embd_, tokens_.data(), m, x_f());
    for (int l = 0; l < info_.n_layers; ++l) {
      const LayerWeights& w = layers_[l];
      // Attention block.
      {
        const WeightMatrix* ws[3] = {&w.wq, &w.wk, &w.wv};
        float* ys[3] = {q_f(), k_f(), v_f()};
        be_.rms_norm_matmul_n(x_f(), w.attn_norm, m, info_.rms_eps, xn_f(), ws, ys);
        for (int64_t at = 0; const Piece& p : pieces) {
          at += static_cast<int64_t>(p.tokens.size());
          if (p.tap) observe(*p.tap, l, pos_[at - 1], xn_f() + (at - 1) * d);
        }
        if (w.bq) {
          be_.add_rows(q_f(), w.bq, m, int64_t{info_.n_heads} * hd);
          be_.add_rows(k_f(), w.bk, m, int64_t{info_.n_kv_heads} * hd);
          be_.add_rows(v_f(), w.bv, m, int64_t{info_.n_kv_heads} * hd);
        }
      }
      attend_layer(l, pieces, m);
      be_.matmul_add(w.wo, attn_f(), m, x_f(), tmp_f());
      // MLP block (SwiGLU).
      be_.rms_norm_matmul_swiglu(x_f(), w.ffn_norm, m, info_.rms_eps, xn_f(), w.w_gate, w.w_up, gate_f(), up_f());
      be_.matmul_add(w.w_down, gate_f(), m, x_f(), tmp_f());
    }
    // Logits go to host memory: computed in place on the CPU, downloaded from a device. Every
    // token's for a piece that wants them all; else the last token of each piece that asks,
    // their rows gathered so the output matrix is read once.
    const int64_t nv = info_.n_vocab;
    int64_t at = 0, rows = 0;
    for (const Piece& p : pieces) {
      const int64_t n = static_cast<int64_t>(p.tokens.size());
      if (p.all_logits) {
        be_.rms_norm(x_f() + at * d, output_norm_, n, d, info_.rms_eps, xn_f());
        float* dst = be_.host_memory() ? p.all_logits : logits_buffer(n);
        be_.matmul(output_, xn_f(), n, dst);
        if (!be_.host_memory()) be_.download(p.all_logits, dst, n * nv * sizeof(float));
        if (p.logits_last) std::copy_n(p.all_logits + (n - 1) * nv, nv, p.logits_last);
      } else if (p.logits_last) {
        be_.rms_norm(x_f() + (at + n - 1) * d, output_norm_, 1, d, info_.rms_eps, tmp_f() + rows * d);
        ++rows;
      }
      at += n;
    }
    if (rows == 0) return;
    // One row on the CPU (single-sequence decode): straight into its destination.
    const Piece* only = nullptr;
    if (rows == 1 && be_.host_memory())
      for (const Piece& p : pieces)
        if (p.logits_last && !p.all_logits) only = &p;
    float* dst = only ? only->logits_last : logits_buffer(rows);
    be_.matmul(output_, tmp_f(), rows, dst);
    if (only) return;
    // From a device: one download of every row (one wait), then each to its destination.
    const float* rows_host = dst;
    if (!be_.host_memory()) {
      logits_host_.resize(static_cast<size_t>(rows * nv));
      be_.download(logits_host_.data(), dst, logits_host_.size() * sizeof(float));
      rows_host = logits_host_.data();
    }
    int64_t r = 0;
    for (const Piece& p : pieces) {
      if (!p.logits_last || p.all_logits) continue;
      std::copy_n(rows_host + r * nv, nv, p.logits_last);
      ++r;
    }
  }

  // RoPE, then each sequence writes its new K/V and attends its own KV. Decode rows (one token, a
  // store that serves the batched path, the first such row's page layout) are written in one
  // launch and attended in one (when every row is such a row, the RoPE is in the same launch as
  // the write); the others go through append / attend, one sequence at a time.
  void attend_layer(int l, std::span<const Piece> pieces, int64_t m) {
    const int hd = info_.head_dim;
    const int64_t qd = int64_t{info_.n_heads} * hd, kvd = int64_t{info_.n_kv_heads} * hd;
    const float scale = 1.0f / std::sqrt(float(hd));
    slots_.assign(static_cast<size_t>(m), KvSlotRef{});
    batched_.assign(pieces.size(), 0);
    AttentionParams ap0{};
    bool any = false;
    for (size_t i = 0, at = 0; i < pieces.size(); at += pieces[i].tokens.size(), ++i) {
      const Piece& p = pieces[i];
      const AttentionParams ap = p.kv->attention_params(info_.n_heads, scale);
      if (p.tokens.size() != 1 || (any && !same_layout(ap, ap0)) || !p.kv->begin_token(l, slots_[at])) continue;
      batched_[i] = 1;
      if (!any) ap0 = ap;
      any = true;
    }
    const bool all = any && std::all_of(batched_.begin(), batched_.end(), [](char b) { return b != 0; });
    if (all) {
      be_.rope_write_kv_rows(ap0, info_.rope, pos_.data(), slots_, q_f(), k_f(), v_f());
    } else {
      be_.rope_qk(q_f(), k_f(), m, info_.n_heads, info_.n_kv_heads, hd, pos_.data(), info_.rope);
      if (any) be_.write_kv_rows(ap0, slots_, k_f(), v_f());
    }
    for (size_t i = 0, at = 0; i < pieces.size(); at += pieces[i].tokens.size(), ++i) {
      const Piece& p = pieces[i];
      if (batched_[i]) p.kv->commit_token(l);
      else p.kv->append(l, static_cast<int64_t>(p.tokens.size()), k_f() + at * kvd, v_f() + at * kvd);
    }
    // Attention: the rows whose store lists their pages together, the rest alone.
    page_begin_.assign(1, 0);
    row_pages_.clear();
    for (size_t i = 0, at = 0; i < pieces.size(); at += pieces[i].tokens.size(), ++i) {
      const Piece& p = pieces[i];
      const int64_t n = static_cast<int64_t>(p.tokens.size());
      for (int64_t r = 0; r < n; ++r) page_begin_.push_back(page_begin_.back());  // no pages: skipped
      if (batched_[i] &&
          p.kv->decode_pages(be_, l, ap0, q_f() + at * qd, pos_[at], row_pages_)) {
        page_begin_.back() = static_cast<int32_t>(row_pages_.size());
        continue;
      }
      batched_[i] = 0;
      const AttentionParams ap = p.kv->attention_params(info_.n_heads, scale);
      p.kv->attend(be_, l, ap, q_f() + at * qd, pos_.data() + at, n, attn_f() + at * qd);
    }
    if (row_pages_.empty()) return;
    be_.attention_rows(ap0, q_f(), pos_.data(), m, page_begin_, row_pages_, attn_f());
    for (size_t i = 0, at = 0; i < pieces.size(); at += pieces[i].tokens.size(), ++i)
      if (batched_[i]) pieces[i].kv->after_decode_attend(be_, l, ap0, q_f() + at * qd, pos_[at]);
  }

  static bool same_layout(const AttentionParams& a, const AttentionParams& b) {
    return a.n_heads == b.n_heads && a.n_kv_heads == b.n_kv_heads && a.head_dim == b.head_dim &&
           a.page_tokens == b.page_tokens && a.head_stride == b.head_stride && a.kv_type == b.kv_type &&
           a.scale == b.scale;
  }

  void observe(ActivationTap& tap, int layer, int32_t position, const float* x) {
    const auto ls = tap.layers();
    if (!std::binary_search(ls.begin(), ls.end(), layer)) return;
    const int d = info_.d_model;
    if (be_.host_memory()) return tap.on_layer_input(layer, position, x);
    tap_row_.resize(d);
    be_.download(tap_row_.data(), x, d * sizeof(float));
    tap.on_layer_input(layer, position, tap_row_.data());
  }

  void ensure_scratch(int64_t m) {
    if (static_cast<int64_t>(pos_.size()) >= m) return;
    const int64_t d = info_.d_model, hd = info_.head_dim;
    auto floats = [&](int64_t n) { return BackendBuffer(be_, static_cast<size_t>(n) * sizeof(float)); };
    pos_.resize(m);
    x_ = floats(m * d);
    xn_ = floats(m * d);
    tmp_ = floats(m * d);
    q_ = floats(m * info_.n_heads * hd);
    attn_ = floats(m * info_.n_heads * hd);
    k_ = floats(m * info_.n_kv_heads * hd);
    v_ = floats(m * info_.n_kv_heads * hd);
    gate_ = floats(m * info_.n_ff);
    up_ = floats(m * info_.n_ff);
  }

  float* logits_buffer(int64_t m) {
    const size_t bytes = static_cast<size_t>(m) * info_.n_vocab * sizeof(float);
    if (logits_.bytes() < bytes) logits_ = BackendBuffer(be_, bytes);
    return logits_.as<float>();
  }
  float* x_f() { return x_.as<float>(); }
  float* xn_f() { return xn_.as<float>(); }
  float* tmp_f() { return tmp_.as<float>(); }
  float* q_f() { return q_.as<float>(); }
  float* attn_f() { return attn_.as<float>(); }
  float* k_f() { return k_.as<float>(); }
  float* v_f() { return v_.as<float>(); }
  float* gate_f() { return gate_.as<float>(); }
  float* up_f() { return up_.as<float>(); }

  Backend& be_;
  ModelInfo info_;
  WeightMatrix tok_embd_;   // (n_vocab, d_model)
  WeightMatrix output_;     // (n_vocab, d_model); == tok_embd_ when tied
  const float* output_norm_ = nullptr;
  std::vector<LayerWeights> layers_;
  // Activation scratch in backend memory, sized for the largest micro-batch seen; positions
  // are host memory.
  std::vector<int32_t> pos_, tokens_;
  // attend_layer's lists: each token's KV slot (k == nullptr: written by append), which pieces
  // took the batched path, and the batched rows' pages.
  std::vector<KvSlotRef> slots_;
  std::vector<char> batched_;
  std::vector<int32_t> page_begin_;
  std::vector<KvPageRef> row_pages_;
  std::vector<float> tap_row_, logits_host_;
  BackendBuffer x_, xn_, tmp_, q_, attn_, k_, v_, gate_, up_, logits_;
};

int read_count(const GgufFile& f, const std::string& key, int lo, int hi) {
  const uint32_t v = f.get_u32(key);
  FM_CHECK(static_cast<int64_t>(v) >= lo && static_cast<int64_t>(v) <= hi, ErrorCode::kFormat, key,
           " = ", v, " is outside the plausible range [", lo, ", ", hi, "]");
  return static_cast<int>(v);
}

// The vocabulary size, where the token table (tokenizer.ggml.tokens), the optional
// <arch>.vocab_size and the rows of token_embd.weight ([d_model, n_vocab]) must all agree: the
// token ids the tokenizer produces index the embedding and the logits.
int read_vocab_size(const GgufFile& f, const std::string& key, int d_model) {
  const GgufTensor& embd = f.tensor("token_embd.weight");
  FM_CHECK(embd.ne.size() == 2, ErrorCode::kFormat, "tensor token_embd.weight has shape ", shape_str(embd),
           ", expected 2-D [d_model ", d_model, ", n_vocab]");
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  const uint64_t n_tokens = tokens ? tokens->as_array("tokenizer.ggml.tokens").items.size() : 0;
  uint64_t n_vocab = tokens ? n_tokens : embd.ne[1];
  if (f.has(key)) {
    const uint64_t v = f.get_u64(key);
    FM_CHECK(!tokens || v == n_tokens, ErrorCode::kFormat, key, " = ", v, " disagrees with the ", n_tokens,
             " tokens of tokenizer.ggml.tokens");
    n_vocab = v;
  }
  FM_CHECK(n_vocab >= 1 && n_vocab <= kMaxVocab, ErrorCode::kFormat, "the vocabulary of ", n_vocab,
           " tokens is outside the plausible range [1, ", kMaxVocab, "]");
  check_matrix_shape(embd, d_model, static_cast<int64_t>(n_vocab),
                     tokens ? " (d_model × the tokens of tokenizer.ggml.tokens)" : " (d_model × vocab_size)");
  return static_cast<int>(n_vocab);
}

}  // namespace

ModelInfo llama_read_info(const GgufFile& f, const std::string& arch) {
  FM_CHECK(find_arch(arch) != nullptr, ErrorCode::kUnsupported, "architecture '", arch,
           "' is not a Llama-family graph");
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
  // 2^24 tokens: above the longest context any released model has (10M, Llama 4 Scout), the
  // largest range of integers float32 holds exactly (positions reach float GPU kernels), and
  // already ~370 GiB of f16 KV for this 135M model. Anything larger is a broken file, and an
  // absurd value would otherwise become the default context (-c 0) that budgets are cut from.
  m.n_ctx_train = f.has(p + "context_length") ? read_count(f, p + "context_length", 1, kMaxContext) : 4096;
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
  m.rope.neox = find_arch(arch)->rope_neox;
  m.n_vocab = read_vocab_size(f, p + "vocab_size", m.d_model);
  return m;
}

std::unique_ptr<Model> llama_load(const GgufFile& file, Backend& backend) {
  const std::string arch = file.get_string("general.architecture");
  return std::make_unique<LlamaModel>(file, backend, llama_read_info(file, arch));
}

std::vector<std::string> supported_architectures() {
  std::vector<std::string> names;
  for (const ArchTraits& a : kArchitectures) names.emplace_back(a.name);
  return names;
}

namespace {
[[noreturn]] void unsupported_architecture(const std::string& arch) {
  std::string list;
  for (const auto& a : supported_architectures()) list += (list.empty() ? "" : ", ") + a;
  FM_FAIL(ErrorCode::kUnsupported, "architecture '", arch, "' is not supported (supported: ", list, ")");
}
}  // namespace

ModelInfo read_model_info(const GgufFile& file) {
  const std::string arch = file.get_string("general.architecture");
  if (find_arch(arch)) return llama_read_info(file, arch);
  unsupported_architecture(arch);
}

std::unique_ptr<Model> load_model(const GgufFile& file, Backend& backend) {
  const std::string arch = file.get_string("general.architecture");
  if (find_arch(arch)) return llama_load(file, backend);
  unsupported_architecture(arch);
}

}  // namespace flashmem

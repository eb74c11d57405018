#include <cstdio>
#include <map>
#include <optional>

#include "commands.h"
#include "core/error.h"
#include "io/gguf.h"
#include "models/model.h"
#include "models/llama.h"

namespace flashmem::cli {

CLI::App* add_info_command(CLI::App& app, InfoArgs& a) {
  CLI::App* c = app.add_subcommand("info", "Print a model's architecture, hyper-parameters and tensors");
  c->add_option("-m,--model", a.model, "GGUF model file")->required();
  c->add_flag("!--no-tensors", a.tensors, "Omit the tensor table");
  return c;
}

int info_command(const InfoArgs& a) {
  const GgufFile f = GgufFile::open(a.model);
  const std::string arch = f.get_string("general.architecture");
  bool supported = false;
  for (const auto& s : supported_architectures()) supported |= s == arch;
  // Read (and so checked) before anything is printed: a bad file gets its one-line error only.
  std::optional<ModelInfo> info;
  if (supported) info = read_model_info(f);
  std::printf("file          %s (GGUF v%u, %.1f MiB, %zu tensors, %zu metadata keys)\n", a.model.c_str(),
              f.version(), static_cast<double>(f.file_size()) / (1 << 20), f.tensors().size(),
              f.keys().size());
  std::printf("architecture  %s%s\n", arch.c_str(), supported ? "" : "  (not supported by flashmem)");
  if (info) {
    const ModelInfo& m = *info;
    std::printf("name          %s\n", m.name.c_str());
    std::printf("layers        %d\nd_model       %d\nffn           %d\n", m.n_layers, m.d_model, m.n_ff);
    std::printf("heads         %d query / %d kv (GQA %d:1), head_dim %d\n", m.n_heads, m.n_kv_heads,
                m.n_heads / m.n_kv_heads, m.head_dim);
    std::printf("vocab         %d\ncontext       %lld (trained)\n", m.n_vocab,
                static_cast<long long>(m.n_ctx_train));
    std::printf("rope          base %g, %d dims, scale %g, %s\n", m.rope.freq_base, m.rope.n_rot,
                m.rope.freq_scale, m.rope.neox ? "neox" : "adjacent pairs");
    std::printf("rms_eps       %g\n", m.rms_eps);
    std::printf("kv bytes/tok  %zu (f16), %zu (f32), %zu (q8); at %lld tokens: %.1f MiB (f16)\n",
                m.kv_bytes_per_token(KvType::kF16), m.kv_bytes_per_token(KvType::kF32),
                m.kv_bytes_per_token(KvType::kQ8),
                static_cast<long long>(m.n_ctx_train),
                static_cast<double>(m.kv_bytes_per_token(KvType::kF16) * m.n_ctx_train) / (1 << 20));
  }
  if (a.tensors) {
    std::map<std::string, std::pair<int, uint64_t>> by_type;
    std::printf("\n%-32s %-6s %-20s %12s\n", "tensor", "type", "shape", "bytes");
    for (const auto& t : f.tensors()) {
      std::string shape;
      for (size_t i = 0; i < t.ne.size(); ++i) shape += (i ? " x " : "") + std::to_string(t.ne[i]);
      std::printf("%-32s %-6s %-20s %12llu\n", t.name.c_str(), std::string(ggml_type_name(t.type)).c_str(),
                  shape.c_str(), static_cast<unsigned long long>(t.n_bytes));
      auto& e = by_type[std::string(ggml_type_name(t.type))];
      e.first++;
      e.second += t.n_bytes;
    }
    std::printf("\n");
    for (const auto& [type, e] : by_type)
      std::printf("%-6s %4d tensors %10.2f MiB\n", type.c_str(), e.first, static_cast<double>(e.second) / (1 << 20));
  }
  return 0;
}

}  // namespace flashmem::cli

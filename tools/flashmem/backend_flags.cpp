// flashmem CLI: choosing the compute backend.
#include "commands.h"
#include "engine/engine.h"
#include "ops/cpu/cpu_backend.h"
#ifdef FLASHMEM_HAVE_CUDA
#include "ops/cuda/cuda_backend.h"
#endif

namespace flashmem::cli {

void add_gpu_memory_option(CLI::App* c, double& gb) {
  c->add_option("--gpu-memory", gb,
                "Cap in GB on everything the engine allocates on its backend (weights, working memory, KV "
                "reserve), to see what a smaller device would serve; 0: none")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
}

void add_backend_option(CLI::App* c, std::string& backend, std::string& cpu_dot) {
  c->add_option("--backend", backend,
                cuda_compiled() ? "compute on: cpu or cuda (the first visible GPU)"
                                : "compute on: cpu (this build has no CUDA)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  c->add_option("--cpu-dot", cpu_dot,
                "CPU decode dot products: q8 (activations rounded to 8 bits, as llama.cpp; about "
                "twice as fast) or f32 (exact activations, logits within ~1e-6 of float64)")
      ->check(CLI::IsMember({"q8", "f32"}))
      ->capture_default_str();
}

std::string backend_label(Engine& e) {
  Backend& be = e.backend();
  if (auto* cpu = dynamic_cast<CpuBackend*>(&be))
    return "cpu, " + std::to_string(cpu->pool().size()) + " threads, " + cpu_dot_name(cpu->dot()) + " dot";
#ifdef FLASHMEM_HAVE_CUDA
  if (auto* gpu = dynamic_cast<CudaBackend*>(&be)) return "cuda, " + gpu->device_name();
#endif
  return be.name();
}

}  // namespace flashmem::cli

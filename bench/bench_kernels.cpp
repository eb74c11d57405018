// Micro-benchmarks of the CPU kernels that bound decode speed, reported as bytes/s so they can
// be read against the machine's memory bandwidth (BM_Memcpy measures that limit here).
//   build/bench/flashmem_bench_kernels --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "ops/cpu/matmul.h"

namespace flashmem {
namespace {

std::vector<uint8_t> weights(GgmlType type, int64_t rows, int64_t cols) {
  std::vector<uint8_t> buf(ggml_row_bytes(type, cols) * rows);
  std::mt19937 rng(1);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  // Keep block scales finite: every block starts with an f16 scale for Q8_0/Q4_1.
  const size_t bb = ggml_traits(type).block_bytes;
  for (size_t at = 0; at + 2 <= buf.size(); at += bb) {
    const uint16_t h = fp32_to_fp16(0.01f);
    std::memcpy(buf.data() + at, &h, 2);
    if (type == GgmlType::Q4_1) std::memcpy(buf.data() + at + 2, &h, 2);
  }
  return buf;
}

void BM_Matvec(benchmark::State& st, GgmlType type, int64_t rows, int64_t cols) {
  auto data = weights(type, rows, cols);
  WeightMatrix w{type, rows, cols, ggml_row_bytes(type, cols), data.data(), "w"};
  std::vector<float> x(cols, 0.5f), y(rows);
  ThreadPool pool(static_cast<int>(st.range(0)));
  const CpuDot dot = st.range(1) ? CpuDot::kQ8 : CpuDot::kF32;
  st.SetLabel(cpu_dot_name(dot));
  for (auto _ : st) {
    cpu::matmul(pool, w, x.data(), 1, y.data(), dot);
    benchmark::DoNotOptimize(y.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * static_cast<int64_t>(data.size()));
}

void BM_Memcpy(benchmark::State& st) {
  const size_t n = 64 << 20;
  std::vector<uint8_t> a(n, 1), b(n, 2);
  for (auto _ : st) {
    std::memcpy(b.data(), a.data(), n);
    benchmark::DoNotOptimize(b.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * static_cast<int64_t>(2 * n));
}

// SmolLM2-135M shapes: FFN up (1536×576, Q4_1) and the tied output (49152×576, Q8_0); arguments
// (threads, dot: 0 f32, 1 q8).
BENCHMARK_CAPTURE(BM_Matvec, q4_1_ffn_up, GgmlType::Q4_1, 1536, 576)->ArgsProduct({{1, 2}, {0, 1}});
BENCHMARK_CAPTURE(BM_Matvec, q8_0_output, GgmlType::Q8_0, 49152, 576)->ArgsProduct({{1, 2}, {0, 1}});
BENCHMARK_CAPTURE(BM_Matvec, q4_1_large, GgmlType::Q4_1, 8192, 4096)->ArgsProduct({{1, 2}, {0, 1}});
BENCHMARK(BM_Memcpy);

}  // namespace
}  // namespace flashmem

// GPU check (runs only on a machine with an NVIDIA GPU: scripts/gpu-check): the CUDA
// dequantisers equal the CPU scalar reference bit for bit on random rows of every type.
// Plain main, no GoogleTest, so it builds on the bare device image. Prints "N passed, M failed".
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/quant.h"
#include "ops/cuda/dequant.cuh"

using namespace flashmem;

namespace {

int passed = 0, failed = 0;

void check(bool ok, const char* what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what);
  }
}

std::vector<uint8_t> random_rows(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t rb = ggml_row_bytes(type, static_cast<uint64_t>(cols));
  std::vector<uint8_t> buf(rb * rows);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> scl(-0.1f, 0.1f);
  const uint32_t bb = ggml_traits(type).block_bytes;
  if (ggml_traits(type).block_elems > 1)  // keep the f16 scale(s) finite
    for (size_t at = 0; at + bb <= buf.size(); at += bb) {
      const uint16_t d = fp32_to_fp16(scl(rng)), m = fp32_to_fp16(scl(rng));
      std::memcpy(buf.data() + at + (type == GgmlType::Q6_K ? 208 : 0), &d, 2);
      if (type == GgmlType::Q4_1 || type == GgmlType::Q4_K) std::memcpy(buf.data() + at + 2, &m, 2);
    }
  return buf;
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device\n0 passed, 1 failed\n");
    return 1;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  std::mt19937 rng(7);
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                        GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
    for (int64_t rows : {1, 3, 129}) {
      for (int64_t cols : {32, 576, 4096}) {
        if (cols % ggml_traits(type).block_elems != 0) continue;  // K types: 256-value blocks
        auto host = random_rows(type, rows, cols, rng);
        const size_t rb = ggml_row_bytes(type, static_cast<uint64_t>(cols));
        std::vector<float> ref(rows * cols), got(rows * cols, -1.0f);
        for (int64_t r = 0; r < rows; ++r)
          dequantize_row_ref(type, host.data() + r * rb, ref.data() + r * cols, static_cast<uint64_t>(cols));
        void* d_src = nullptr;
        float* d_dst = nullptr;
        bool ok = cudaMalloc(&d_src, host.size()) == cudaSuccess &&
                  cudaMalloc(&d_dst, got.size() * sizeof(float)) == cudaSuccess &&
                  cudaMemcpy(d_src, host.data(), host.size(), cudaMemcpyHostToDevice) == cudaSuccess &&
                  cuda::dequantize_rows(type, d_src, rb, d_dst, rows, cols, nullptr) == cudaSuccess &&
                  cudaMemcpy(got.data(), d_dst, got.size() * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess;
        cudaFree(d_src);
        cudaFree(d_dst);
        // Bit-identical, NaN payloads included (random F32/F16/BF16 bits contain NaNs).
        ok = ok && std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float)) == 0;
        char what[96];
        std::snprintf(what, sizeof what, "%s rows %lld cols %lld", std::string(ggml_type_name(type)).c_str(),
                      static_cast<long long>(rows), static_cast<long long>(cols));
        check(ok, what);
      }
    }
  }
  // Unsupported type and a partial block are refused without launching.
  check(cuda::dequantize_rows(GgmlType::Q5_1, nullptr, 0, nullptr, 1, 256, nullptr) == cudaErrorInvalidValue,
        "Q5_1 (no dequantiser) refused");
  check(cuda::dequantize_rows(GgmlType::Q4_K, nullptr, 0, nullptr, 1, 128, nullptr) == cudaErrorInvalidValue,
        "a partial Q4_K super-block refused");
  check(cuda::dequantize_rows(GgmlType::Q8_0, nullptr, 0, nullptr, 1, 33, nullptr) == cudaErrorInvalidValue,
        "partial block refused");
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

// GPU kernel figures (runs on a machine with an NVIDIA GPU, next to scripts/gpu-check): each
// CUDA kernel's achieved bandwidth against the limits measured on the same device in the same
// run — the device-to-device copy (HBM: bytes read plus bytes written per second, the rate a
// kernel that only reads can approach) and a large page-locked host-to-device copy (PCIe).
//   flashmem_gpu_bench            # prints one markdown table
// Plain main (the device image has no Google Benchmark). Times are wall-clock over repeated
// launches after a warm-up, with the stream drained before and after.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/quant.h"
#include "ops/cuda/cuda_backend.h"

using namespace flashmem;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds per call of f, over enough calls to take ~0.2 s.
template <typename F>
double time_per_call(CudaBackend& g, F&& f) {
  f();
  g.synchronize();
  int n = 1;
  for (;;) {
    const double t0 = now_s();
    for (int i = 0; i < n; ++i) f();
    g.synchronize();
    const double dt = now_s() - t0;
    if (dt > 0.2 || n >= (1 << 16)) return dt / n;
    n *= 4;
  }
}

void row(const std::string& what, double bytes, double s, double limit_gbs, const char* limit_name) {
  const double gbs = bytes / s / 1e9;
  std::printf("| %s | %.1f µs | %.1f GB/s | %.0f%% of %s |\n", what.c_str(), s * 1e6, gbs, 100.0 * gbs / limit_gbs,
              limit_name);
  std::fflush(stdout);
}

std::vector<uint8_t> random_blocks(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t rb = ggml_row_bytes(t, static_cast<uint64_t>(cols));
  std::vector<uint8_t> buf(rb * rows);
  for (auto& b : buf) b = static_cast<uint8_t>(rng() & 0x77);  // small values, finite scales
  return buf;
}

}  // namespace

int main() {
  CudaBackend g;
  std::mt19937 rng(5);
  std::printf("device: %s\n\n| kernel | time | achieved | against the limit |\n|---|---|---|---|\n",
              g.device_name().c_str());
  // Limits.
  const size_t big = size_t{1} << 30;
  BackendBuffer a(g, big), b(g, big);
  g.fill_zero(a.get(), big);
  const PageCopy one{a.as<uint8_t>(), b.as<uint8_t>()};
  const double d2d_s = time_per_call(g, [&] { g.copy_pages(CopyDir::kBackendToBackend, {&one, 1}, big); });
  const double hbm = 2.0 * big / d2d_s / 1e9;  // read + write
  std::printf("| device copy, 1 GiB (the HBM limit: read + write) | %.1f µs | %.1f GB/s | — |\n", d2d_s * 1e6, hbm);
  const size_t hb = size_t{256} << 20;
  auto* host = static_cast<uint8_t*>(g.alloc_host(hb));
  std::memset(host, 1, hb);
  // A plain DMA copy: the gather is not used for a single page of a size it takes, so time the
  // driver's copy through upload() of page-locked memory (no staging above the slab size).
  const double h2d_s = time_per_call(g, [&] { g.upload(b.get(), host, hb); });
  const double pcie = hb / h2d_s / 1e9;
  std::printf("| host→device DMA, 256 MiB page-locked (the PCIe limit) | %.1f µs | %.1f GB/s | — |\n", h2d_s * 1e6, pcie);

  // Recall gather: pages of 16 and 64 tokens of a 135M-shape layer (3 KV heads × 64 dims, f16)
  // and of an 8B-shape layer (8 × 128), scattered in the host mirror, into the device reserve.
  for (auto [heads, hd] : {std::pair{3, 64}, std::pair{8, 128}})
    for (int pt : {16, 64}) {
      const size_t page = static_cast<size_t>(2) * heads * pt * hd * 2;  // K and V halves
      const int n = static_cast<int>(std::min<size_t>(hb / page, 16384));
      std::vector<PageCopy> copies(n);
      std::vector<int> order(n);
      for (int i = 0; i < n; ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), rng);
      for (int i = 0; i < n; ++i) copies[i] = {host + static_cast<size_t>(order[i]) * page, b.as<uint8_t>() + i * page};
      const double s = time_per_call(g, [&] { g.copy_pages(CopyDir::kHostToBackend, copies, page); });
      row("recall gather, " + std::to_string(n) + " pages of " + std::to_string(pt) + " tok (" +
              std::to_string(page) + " B)",
          static_cast<double>(n) * page, s, pcie, "the PCIe copy");
    }

  // Decode attention over f16 KV: m sequences of ctx tokens each, bytes = K and V read once.
  for (auto [heads, kv, hd] : {std::tuple{9, 3, 64}, std::tuple{32, 8, 128}})
    for (int ctx : {8192, 32768, 131072})
      for (int m : {1, 16}) {
        AttentionParams p;
        p.n_heads = heads;
        p.n_kv_heads = kv;
        p.head_dim = hd;
        p.page_tokens = 64;
        p.head_stride = int64_t{64} * hd;
        p.kv_type = KvType::kF16;
        p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
        const size_t half = kv_half_bytes(p.kv_type, kv, 64, hd);
        const int pages_per_seq = ctx / 64;
        const size_t need = static_cast<size_t>(m) * pages_per_seq * 2 * half;
        if (need > big) continue;
        std::vector<KvPageRef> pages;
        std::vector<int32_t> begin{0}, pos(m, ctx - 1);
        for (int s = 0; s < m; ++s) {
          for (int i = 0; i < pages_per_seq; ++i) {
            const uint8_t* base = a.as<uint8_t>() + (static_cast<size_t>(s) * pages_per_seq + i) * 2 * half;
            pages.push_back({base, base + half, i * 64, 64});
          }
          begin.push_back(static_cast<int32_t>(pages.size()));
        }
        BackendBuffer q(g, static_cast<size_t>(m) * heads * hd * 4), out(g, static_cast<size_t>(m) * heads * hd * 4);
        g.fill_zero(q.get(), q.bytes());
        const double s = time_per_call(g, [&] { g.attention_rows(p, q.as<float>(), pos.data(), m, begin, pages, out.as<float>()); });
        row("decode attention " + std::to_string(heads) + "/" + std::to_string(kv) + " heads × " + std::to_string(hd) +
                ", " + std::to_string(m) + " × " + std::to_string(ctx) + " tok f16",
            static_cast<double>(need), s, hbm, "the HBM limit");
      }

  // Decode GEMV: weight bytes read once.
  struct W {
    const char* what;
    GgmlType t;
    int64_t rows, cols;
  };
  for (const W w : {W{"135M ffn_up Q4_1 1536×576", GgmlType::Q4_1, 1536, 576},
                    W{"135M output Q4_1 49152×576", GgmlType::Q4_1, 49152, 576},
                    W{"8B ffn_up Q4_K 14336×4096", GgmlType::Q4_K, 14336, 4096},
                    W{"8B ffn_down Q6_K 4096×14336", GgmlType::Q6_K, 4096, 14336},
                    W{"8B ffn_up Q8_0 14336×4096", GgmlType::Q8_0, 14336, 4096},
                    W{"8B ffn_up BF16 14336×4096", GgmlType::BF16, 14336, 4096}}) {
    auto bytes = random_blocks(w.t, w.rows, w.cols, rng);
    const WeightMatrix host_w{w.t, w.rows, w.cols, ggml_row_bytes(w.t, w.cols), bytes.data(), w.what};
    const WeightMatrix pw = g.prepare(host_w);
    for (int m : {1, 2, 4, 8, 16}) {
      BackendBuffer x(g, static_cast<size_t>(m) * w.cols * 4), y(g, static_cast<size_t>(m) * w.rows * 4);
      g.fill_zero(x.get(), x.bytes());
      const double s = time_per_call(g, [&] { g.matmul(pw, x.as<float>(), m, y.as<float>()); });
      row(std::string("product ") + w.what + ", m=" + std::to_string(m), static_cast<double>(bytes.size()), s, hbm,
          "the HBM limit");
    }
  }
  g.free_host(host);
  return 0;
}

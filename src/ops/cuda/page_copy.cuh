// flashmem/ops/cuda/page_copy.cuh — a batch of equal-sized page copies as one kernel (recall from
// the page-locked host mirror, write-back to it, copies inside the device).
//
// One cudaMemcpyAsync per page costs a driver call and a DMA setup each: with 16-token pages a
// recall is thousands of small copies. Here one launch reads the (src, dst) list from device
// memory and moves every page with 16-byte loads and stores; host-side pointers are page-locked
// memory, which the GPU reads and writes directly (unified addressing).
//
// Launchers only: included by the C++20 backend.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace flashmem::cuda {

// The device twin of PageCopy (same layout).
struct DevCopy {
  const uint8_t* src;
  uint8_t* dst;
};

// Whether the gather takes pages of `bytes` (a multiple of 16).
inline bool page_copy_supported(size_t bytes) { return bytes > 0 && bytes % 16 == 0; }
// copies (device memory, n entries; every src and dst 16-byte aligned) of `bytes` each.
cudaError_t copy_pages(const DevCopy* copies, int64_t n, size_t bytes, cudaStream_t s);

}  // namespace flashmem::cuda

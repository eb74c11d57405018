// flashmem/memory/reserve.h — the device reserve: the KV page slots shared by the requests of
// one engine.
//
// Admission gives each request a quota of slots; quotas never add up to more than the arena,
// and a request never holds more slots than its quota. So a request below its quota always
// finds a free slot, and no request ever has to evict a page another request holds: pages a
// live request uses are safe by construction, and eviction (LRU) happens only among a
// request's own cached pages (see TieredKvStore).
//
// A fixed reserve is one backend allocation of exactly capacity × page_bytes (device memory on
// CUDA, a separate host allocation on the CPU backend). The engine's reserve is growable: it
// starts empty, admission allocates a region for the shortfall when the free capacity is too
// small (up to a cap), and a region is given back as soon as none of its slots is held and the
// other regions cover every quota. Either way what is allocated is what admitted requests may
// hold, so every byte the reserve saves is real.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ops/backend.h"

namespace flashmem {

class KvReserve {
 public:
  // A fixed arena of n_slots shared by its clients. Throws Error(kInvalidArgument) for zero
  // sizes and Error(kOutOfMemory) when the arena cannot be allocated.
  KvReserve(Backend& be, size_t page_bytes, int64_t n_slots);
  // A growable reserve (the engine's): each admission allocates a region of exactly its quota,
  // its client's slots come from it alone, and its release gives the region back; the quotas
  // together never exceed max_slots (0: no cap but the backend's memory).
  static std::unique_ptr<KvReserve> growable(Backend& be, size_t page_bytes, int64_t max_slots);
  KvReserve(const KvReserve&) = delete;
  KvReserve& operator=(const KvReserve&) = delete;

  int64_t capacity() const { return capacity_; }  // slots allocated now
  size_t page_bytes() const { return page_bytes_; }
  size_t bytes_allocated() const { return static_cast<size_t>(capacity_) * page_bytes_; }
  bool growable() const { return growable_; }
  int64_t max_slots() const { return max_slots_; }  // 0: no cap
  // The allocations (backend memory: readable by the caller only when backend().host_memory()).
  // A fixed reserve has one; arena() is the first.
  size_t regions() const { return regions_.size(); }
  const uint8_t* region(size_t i) const { return regions_[i].buf.as<uint8_t>(); }
  size_t region_bytes(size_t i) const { return static_cast<size_t>(regions_[i].n) * page_bytes_; }
  const uint8_t* arena() const { return regions_.empty() ? nullptr : region(0); }
  Backend& backend() const { return be_; }

  // Admits a client that may hold up to `quota` slots. Throws Error(kOutOfMemory) naming the
  // shortfall when the quota does not fit (the arena or the cap) or the backend cannot allocate
  // it; nothing changes then.
  int64_t admit(int64_t quota);
  // Returns every slot of the client (scrubbed) and its quota; a growable reserve gives the
  // client's region back to the backend.
  void release(int64_t client);

  // A free slot for the client; Error(kInternal) if it already holds its quota.
  int64_t acquire(int64_t client);
  // Gives a slot back (it must belong to the client).
  void free(int64_t client, int64_t slot);

  uint8_t* slot(int64_t s) { return slot_ptr_[s]; }
  // The client holding slot s, −1 when free, kNoSlot for an id no allocation covers; ids run
  // from 0 to slot_ids() − 1.
  int64_t owner(int64_t s) const { return owner_[s]; }
  int64_t slot_ids() const { return static_cast<int64_t>(owner_.size()); }
  static constexpr int64_t kNoSlot = -2;
  int64_t held(int64_t client) const;
  int64_t quota(int64_t client) const;
  // Slots a new client could still be admitted with (a growable reserve without a cap: no limit).
  int64_t unreserved() const;

 private:
  struct Client {
    int64_t quota = 0;
    int64_t held = 0;
    bool live = false;
  };
  struct Region {
    int64_t first = 0;  // slot ids first … first + n − 1
    int64_t n = 0;
    int64_t client = -1;  // the client it was allocated for (−1: shared, a fixed reserve)
    BackendBuffer buf;
    std::vector<int64_t> free;  // its free slot ids
  };
  KvReserve(Backend& be, size_t page_bytes);
  const Client& client(int64_t id) const;
  Region& region_of(int64_t client);
  void add_region(int64_t n, int64_t client);  // Error(kOutOfMemory) when it cannot be allocated

  Backend& be_;
  size_t page_bytes_;
  int64_t capacity_ = 0;
  bool growable_ = false;
  int64_t max_slots_ = 0;
  std::vector<Region> regions_;     // by first slot id
  std::vector<int64_t> owner_;      // per slot id
  std::vector<uint8_t*> slot_ptr_;  // per slot id (nullptr where no region is)
  std::vector<Client> clients_;
  int64_t reserved_ = 0;
};

}  // namespace flashmem

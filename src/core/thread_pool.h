// flashmem/core/thread_pool.h — a small persistent thread pool for data-parallel kernels.
//
// Decode runs hundreds of short parallel sections per token, so dispatch latency matters more
// than anything else: workers spin briefly on a generation counter before sleeping, and the
// calling thread takes part in the work. One pool per engine instance (no process globals).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace flashmem {

class ThreadPool {
 public:
  // n_threads counts the caller: ThreadPool(1) runs everything inline.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(task, thread) for task in [0, n_tasks), spread dynamically over the threads;
  // returns when all tasks are done. Exceptions thrown by fn are rethrown here (the first one).
  // Not reentrant: fn must not call run() on the same pool.
  void run(int64_t n_tasks, const std::function<void(int64_t task, int thread)>& fn);

  // Splits [0, n) into contiguous ranges of at least `grain` items, ~4 per thread, and calls
  // fn(begin, end, thread) for each.
  void parallel_for(int64_t n, int64_t grain,
                    const std::function<void(int64_t begin, int64_t end, int thread)>& fn);

  // Default thread count: FLASHMEM_THREADS if set, else the number of online CPUs.
  static int default_threads();

 private:
  void worker_loop(int thread);
  void work(int thread);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_task_{0};
  std::atomic<int> active_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};  // workers blocked on cv_ (so run() only notifies when needed)
  int64_t n_tasks_ = 0;
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  std::mutex err_mu_;
  std::exception_ptr error_;
};

}  // namespace flashmem

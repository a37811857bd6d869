// Work sharing for the XLA FFI kernels of arjax/nn (cpu_attention.cc, cpu_int8.cc, cpu_bf16.cc) over XLA:CPU's
// intra-op threads.
#ifndef ARJAX_NN_CPU_PARALLEL_H_
#define ARJAX_NN_CPU_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace arjax {

// Runs fn(i) for i in [0, n) on the calling thread and (parallel) the pool's others; returns when all are done.
// Each thread works on its own copy of fn, after fn.begin() (per-thread scratch). Work is claimed from a shared
// counter, so a task the pool starts late finds nothing left and the caller never waits for one not started.
template <typename F>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, bool parallel, F fn) {
  struct Counters {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto c = std::make_shared<Counters>();
  auto work = [c, n, fn]() mutable {
    fn.begin();
    for (int64_t i; (i = c->next.fetch_add(1)) < n;) {
      fn(i);
      c->done.fetch_add(1);
    }
  };
  const int64_t helpers = parallel ? std::min<int64_t>(pool.num_threads(), n) - 1 : 0;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work]() mutable { work(); });
  work();
  while (c->done.load() < n) std::this_thread::yield();
}

template <typename F>
struct Rows {  // fn(row) for each row of a 64-row chunk of [0, n)
  int64_t n;
  F fn;
  void begin() {}
  void operator()(int64_t i) {
    for (int64_t r = i * 64; r < std::min(n, i * 64 + 64); ++r) fn(r);
  }
};

// fn(r) for r in [0, n), in chunks of 64 rows shared as parallel_for's items.
template <typename F>
void for_rows(xla::ffi::ThreadPool& pool, int64_t n, bool parallel, F fn) {
  parallel_for(pool, (n + 63) / 64, parallel, Rows<F>{n, fn});
}

}  // namespace arjax

#endif  // ARJAX_NN_CPU_PARALLEL_H_

#pragma once
// Deterministic parallel reductions: the work is cut into a fixed number of tasks that does not
// depend on the thread count, each task writes its own row of partial results, and the caller
// combines the rows in task order. Results are therefore identical for any number of threads.
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace pyquant::cpu {

// Calls fn(task, row) for every task in [0, tasks) (in parallel, any order), where row points to
// `width` values of T initialised to `init` and owned by that task alone. Returns all rows,
// task-major: row t starts at t * width.
template <typename T, typename Fn>
std::vector<T> task_partials(int64_t tasks, int64_t width, T init, Fn&& fn) {
  std::vector<T> rows(static_cast<size_t>(tasks * width), init);
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) fn(t, rows.data() + t * width);
  });
  return rows;
}

}  // namespace pyquant::cpu

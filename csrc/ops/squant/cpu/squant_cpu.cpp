// CPU implementation of squant_round: one task per output channel (at::parallel_for); per channel,
// SQuant-E and SQuant-K kernel by kernel with the shared math of pyquant/squant_math.h, then
// SQuant-C: each kernel's candidate move, the channel's move count, and a partial sort of the
// candidates in the shared order (priority, then kernel index). The work is sequential per channel,
// so the result does not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "../squant.h"
#include "pyquant/squant_math.h"

namespace pyquant::ops {
namespace {

using at::Tensor;

struct ChannelScratch {
  std::vector<double> q, err, ksum, prio;
  std::vector<int64_t> cand, order;
};

void squant_channel(ChannelScratch& s, int64_t I, int64_t K, bool kernel_stage, bool channel_stage) {
  for (int64_t i = 0; i < I; ++i) {
    double* q = s.q.data() + i * K;
    double* err = s.err.data() + i * K;
    s.ksum[i] = kernel_stage ? squant::kernel_flip(q, err, K) : squant::error_sum(err, K);
  }
  if (!channel_stage) return;
  double total = 0.0;
  for (int64_t i = 0; i < I; ++i) total += s.ksum[i];
  const double dir = squant::sign_of(total);
  const int64_t flips = squant::channel_flips(total);
  if (flips == 0) return;
  s.order.clear();
  for (int64_t i = 0; i < I; ++i) {
    if (squant::sign_of(s.ksum[i]) != dir) continue;
    s.cand[i] = squant::kernel_candidate(s.err.data() + i * K, K, s.ksum[i], &s.prio[i]);
    if (s.cand[i] >= 0) s.order.push_back(i);
  }
  const int64_t take = std::min<int64_t>(flips, static_cast<int64_t>(s.order.size()));
  std::partial_sort(s.order.begin(), s.order.begin() + take, s.order.end(), [&](int64_t a, int64_t b) {
    return squant::ranks_before(s.prio[a], a, s.prio[b], b);
  });
  for (int64_t t = 0; t < take; ++t) {
    const int64_t i = s.order[t];
    const int64_t j = i * K + s.cand[i];
    s.q[j] -= dir;
    s.err[j] -= dir;
  }
}

Tensor squant_round_cpu(const Tensor& x, int64_t quant_min, int64_t quant_max, bool kernel_stage,
                        bool channel_stage) {
  const SquantShape shape = check_squant_args(x, quant_min, quant_max);
  const int64_t O = shape.out_channels, I = shape.kernels, K = shape.kernel_size;
  const int64_t M = I * K;
  const Tensor src = x.contiguous();
  Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const double qmin = static_cast<double>(quant_min);
  const double qmax = static_cast<double>(quant_max);
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "squant_round", [&] {
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / M);
    at::parallel_for(0, O, grain, [&](int64_t begin, int64_t end) {
      ChannelScratch s;
      s.q.resize(M);
      s.err.resize(M);
      s.ksum.resize(I);
      s.prio.resize(I);
      s.cand.resize(I);
      s.order.reserve(I);
      for (int64_t o = begin; o < end; ++o) {
        const scalar_t* row = in + o * M;
        bool row_finite = true;
        for (int64_t j = 0; j < M; ++j) {
          const double v = static_cast<double>(row[j]);
          row_finite &= std::isfinite(v);
          squant::round_element(v, qmin, qmax, &s.q[j], &s.err[j]);
        }
        if (!row_finite) {  // reported after the loop; the rest of this task is skipped
          finite.store(false, std::memory_order_relaxed);
          return;
        }
        squant_channel(s, I, K, kernel_stage, channel_stage);
        scalar_t* out_row = dst + o * M;
        for (int64_t j = 0; j < M; ++j) out_row[j] = static_cast<scalar_t>(s.q[j]);
      }
    });
  });
  check_squant_finite(finite.load());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CPU, m) {
  m.impl("squant_round", &squant_round_cpu);
}

}  // namespace pyquant::ops

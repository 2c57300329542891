// CPU implementation of the BN-statistic loss: argument and value checks, at::parallel_for over rows
// (each row's Welford state is computed by one thread from fixed chunks), then the per-statistic
// loss terms on the host in a fixed order. The arithmetic per statistic is pyquant/bn_stats.h,
// the same code the CUDA kernels run; the reduction order never depends on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../bn_stat_loss.h"
#include "bn_stat_loss_kernel.h"

namespace pyquant::ops {
namespace {

using at::Tensor;
using cpu::BnStatKernels;
using cpu::RowCoef;

// Rows are handed to threads in groups of at least this many values.
constexpr int64_t kParallelGrain = 32768;

const BnStatKernels& kernels() {
  static const BnStatKernels& table = PYQ_SELECT_ISA_TABLE(bn_stat_loss_kernels);
  return table;
}

std::vector<double> host_vector(const Tensor& t) {
  const Tensor h = t.detach().to(at::kCPU, at::kDouble).contiguous();
  const double* p = h.const_data_ptr<double>();
  return std::vector<double>(p, p + h.numel());
}

void check_values(const char* name, const std::vector<double>& v, bool non_negative) {
  for (size_t i = 0; i < v.size(); ++i) {
    TORCH_CHECK_VALUE(std::isfinite(v[i]), "bn_stat_loss: ", name, " must be finite, got ", v[i], " at index ", i);
    TORCH_CHECK_VALUE(!non_negative || v[i] >= 0.0, "bn_stat_loss: ", name, " must be >= 0, got ", v[i],
                      " at index ", i);
  }
}

int64_t row_grain(int64_t row_len) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(row_len, 1));
}

std::tuple<Tensor, Tensor> bn_stat_loss_cpu(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                                            double eps, bool per_sample, bool unbiased,
                                            const std::optional<Tensor>& mean_margin,
                                            const std::optional<Tensor>& std_margin,
                                            const std::optional<Tensor>& sample_weight, bool match_var) {
  const BnStatLayout L = check_bn_stat_loss_args(x, running_mean, running_var, eps, per_sample, unbiased,
                                                 mean_margin, std_margin, sample_weight);
  const std::vector<double> rm = host_vector(running_mean);
  const std::vector<double> rv = host_vector(running_var);
  check_values("running_mean", rm, false);
  check_values("running_var", rv, true);
  std::vector<double> mm(L.channels, 0.0), sm(L.channels, 0.0), w;
  if (mean_margin.has_value()) {
    mm = host_vector(*mean_margin);
    check_values("mean_margin", mm, true);
  }
  if (std_margin.has_value()) {
    sm = host_vector(*std_margin);
    check_values("std_margin", sm, true);
  }
  if (sample_weight.has_value()) {
    w = host_vector(*sample_weight);
    check_values("sample_weight", w, true);
  }

  const Tensor xd = x.contiguous();
  const int64_t rows = L.samples * L.channels;
  std::vector<WelfordState> states(static_cast<size_t>(rows));
  const void* x_ptr = xd.const_data_ptr();
  const auto dtype = xd.scalar_type();
  const auto& k = kernels();
  at::parallel_for(0, rows, row_grain(L.row_len), [&](int64_t r0, int64_t r1) {
    k.row_stats(dtype, x_ptr, L.row_len, r0, r1, states.data());
  });

  Tensor stats = at::empty({L.stats, kStatColumns}, x.options().dtype(at::kDouble));
  double* out = stats.mutable_data_ptr<double>();
  const double ddof = unbiased ? 1.0 : 0.0;
  double loss = 0.0;
  for (int64_t j = 0; j < L.stats; ++j) {
    const int64_t c = j % L.channels;
    WelfordState s;
    double weight = 1.0;
    if (per_sample) {
      s = states[j];
      const int64_t n = j / L.channels;
      weight = (w.empty() ? 1.0 : w[n]) / static_cast<double>(L.samples);
    } else {
      s = welford_empty();
      for (int64_t n = 0; n < L.samples; ++n) s = welford_merge(s, states[n * L.channels + c]);
    }
    TORCH_CHECK_VALUE(std::isfinite(s.mean) && std::isfinite(s.m2), "bn_stat_loss: x contains NaN or Inf (",
                      per_sample ? "sample " + std::to_string(j / L.channels) + ", " : std::string(), "channel ", c,
                      ")");
    const StatTerms t = stat_terms(s, StatTarget{rm[c], rv[c], mm[c], sm[c]}, eps, ddof, match_var, weight);
    loss += t.loss;
    out[j * kStatColumns + kStatMean] = t.mean;
    out[j * kStatColumns + kStatVar] = t.var;
    out[j * kStatColumns + kStatCoefA] = t.coef_a;
    out[j * kStatColumns + kStatCoefB] = t.coef_b;
  }
  Tensor loss_t = at::scalar_tensor(loss, x.options().dtype(bn_stat_loss_dtype(x.scalar_type())));
  return {loss_t, stats};
}

Tensor bn_stat_loss_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& stats, bool per_sample) {
  const BnStatLayout L = check_bn_stat_loss_backward_args(grad, x, stats, per_sample);
  const double g = grad.detach().to(at::kDouble).item<double>();
  const Tensor st = stats.contiguous();
  const double* sp = st.const_data_ptr<double>();
  const int64_t rows = L.samples * L.channels;
  std::vector<RowCoef> coef(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t j = per_sample ? r : r % L.channels;
    const double* row = sp + j * kStatColumns;
    coef[r] = RowCoef{row[kStatMean], g * row[kStatCoefA], g * row[kStatCoefB]};
  }
  const Tensor xd = x.contiguous();
  Tensor dx = at::empty_like(xd);
  const void* x_ptr = xd.const_data_ptr();
  void* d_ptr = dx.mutable_data_ptr();
  const auto dtype = xd.scalar_type();
  const auto& k = kernels();
  at::parallel_for(0, rows, row_grain(L.row_len), [&](int64_t r0, int64_t r1) {
    k.row_backward(dtype, x_ptr, d_ptr, L.row_len, r0, r1, coef.data());
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CPU, m) {
  m.impl("bn_stat_loss", &bn_stat_loss_cpu);
  m.impl("bn_stat_loss_backward", &bn_stat_loss_backward_cpu);
}

}  // namespace pyquant::ops

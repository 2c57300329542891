#pragma once
// Argument checking and layout logic of the BN-statistic loss ops, shared by every backend.
#include <ATen/core/Tensor.h>

#include <optional>

namespace pyquant::ops {

// How x = [N, C, *] is seen by the kernels: N * C rows of `row_len` contiguous values (x made
// contiguous first); row r belongs to sample r / C and channel r % C.
struct BnStatLayout {
  int64_t samples;   // N
  int64_t channels;  // C
  int64_t row_len;   // prod(x.shape[2:]), 1 for [N, C]
  int64_t stats;     // statistics: N * C (per sample) or C (batch)
  double count;      // values per statistic: row_len (per sample) or N * row_len (batch)
};

// Validates the arguments of bn_stat_loss (dtype, device, shapes, eps, ddof) and returns the layout.
// Value checks that need the data (negative running_var, NaN) are done by the CPU kernel; raises
// ValueError / TypeError naming the argument.
BnStatLayout check_bn_stat_loss_args(const at::Tensor& x, const at::Tensor& running_mean,
                                     const at::Tensor& running_var, double eps, bool per_sample, bool unbiased,
                                     const std::optional<at::Tensor>& mean_margin,
                                     const std::optional<at::Tensor>& std_margin,
                                     const std::optional<at::Tensor>& sample_weight);

// Validates the arguments of bn_stat_loss_backward and returns the layout.
BnStatLayout check_bn_stat_loss_backward_args(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& stats,
                                              bool per_sample);

// Columns of the saved-statistics tensor [stats, 4] (float64).
enum BnStatColumn : int { kStatMean = 0, kStatVar = 1, kStatCoefA = 2, kStatCoefB = 3, kStatColumns = 4 };

// The dtype of the loss for an input dtype: float64 for float64, float32 otherwise.
at::ScalarType bn_stat_loss_dtype(at::ScalarType x_dtype);

}  // namespace pyquant::ops

// CPU implementation of range_search: per-channel statistics (ATen aminmax), candidate constants on
// the host (calib_math.h), then one pass over the data in fixed chunks that scores every candidate
// (range_search_kernel.cpp), partial errors combined in chunk order (thread-count independent).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../range_search.h"
#include "cpu/partials.h"
#include "range_search_kernel.h"

namespace pyquant::ops {
namespace {

using at::Tensor;

// Elements per task: a multiple of every variant's tile (16 vectors of up to 16 floats).
constexpr int64_t kChunk = 8192;

const cpu::RangeSearchKernels& kernels() {
  static const cpu::RangeSearchKernels& table = PYQ_SELECT_ISA_TABLE(range_search_kernels);
  return table;
}

struct Candidates {
  std::vector<float> scale, inv_scale, lo_level, hi_level, zero_point;
  std::vector<char> degenerate;  // per channel
};

Candidates build_candidates(const Tensor& mins, const Tensor& maxs, bool symmetric, int64_t K, int64_t quant_min,
                            int64_t quant_max) {
  const int64_t C = mins.numel();
  const float* mn = mins.const_data_ptr<float>();
  const float* mx = maxs.const_data_ptr<float>();
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  Candidates c;
  for (auto* v : {&c.scale, &c.inv_scale, &c.lo_level, &c.hi_level, &c.zero_point}) v->resize(C * K);
  c.degenerate.resize(C);
  for (int64_t ch = 0; ch < C; ++ch) {
    const ChannelSpan span{std::min(mn[ch], 0.0f), std::max(mx[ch], 0.0f)};
    c.degenerate[ch] = span_is_degenerate(span, symmetric);
    for (int64_t k = 0; k < K; ++k) {
      const AffineParams p = candidate_params(span, symmetric, k + 1, K, qmin, qmax);
      const int64_t i = ch * K + k;
      c.scale[i] = p.scale;
      c.inv_scale[i] = p.inv_scale;
      c.zero_point[i] = p.zero_point;
      c.lo_level[i] = qmin - p.zero_point;
      c.hi_level[i] = qmax - p.zero_point;
    }
  }
  return c;
}

std::tuple<Tensor, Tensor, Tensor> range_search_cpu(const Tensor& x, int64_t quant_min, int64_t quant_max,
                                                    std::optional<int64_t> axis, bool symmetric,
                                                    int64_t num_candidates, double p) {
  const RangeSearchArgs args =
      check_range_search_args(x, quant_min, quant_max, axis, symmetric, num_candidates, p);
  const Tensor rows = channel_rows(x, axis);
  const int64_t C = rows.size(0);
  const int64_t N = rows.size(1);
  const int64_t K = num_candidates;
  auto [mins, maxs] = at::aminmax(rows, 1);
  check_finite_stats("range_search", mins, maxs);
  const Candidates cand = build_candidates(mins.contiguous(), maxs.contiguous(), symmetric, K, quant_min, quant_max);

  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const float* data = rows.const_data_ptr<float>();
  const auto& k = kernels();
  const std::vector<double> partial = cpu::task_partials<double>(C * chunks, K, 0.0, [&](int64_t task, double* err) {
    const int64_t ch = task / chunks;
    if (cand.degenerate[ch]) return;
    const int64_t begin = (task % chunks) * kChunk;
    const cpu::CandidateTable table{cand.scale.data() + ch * K, cand.inv_scale.data() + ch * K,
                                    cand.lo_level.data() + ch * K, cand.hi_level.data() + ch * K, K};
    k.score(data + ch * N + begin, std::min(kChunk, N - begin), table, args.norm, args.p, err);
  });

  Tensor errors = at::zeros({C, K}, rows.options().dtype(at::kDouble));
  Tensor scale = at::empty({C}, rows.options().dtype(at::kFloat));
  Tensor zero_point = at::empty({C}, rows.options().dtype(at::kInt));
  double* e = errors.mutable_data_ptr<double>();
  float* s = scale.mutable_data_ptr<float>();
  int32_t* z = zero_point.mutable_data_ptr<int32_t>();
  for (int64_t ch = 0; ch < C; ++ch) {
    double* row = e + ch * K;
    for (int64_t j = 0; j < chunks; ++j) {
      const double* part = partial.data() + (ch * chunks + j) * K;
      for (int64_t i = 0; i < K; ++i) {
        row[i] = args.norm == ErrorNorm::kLinf ? std::max(row[i], part[i]) : row[i] + part[i];
      }
    }
    if (cand.degenerate[ch]) {
      s[ch] = 1.0f;
      z[ch] = 0;
      continue;
    }
    const int64_t best = pick_candidate(row, K);
    s[ch] = cand.scale[ch * K + best];
    z[ch] = static_cast<int32_t>(cand.zero_point[ch * K + best]);
  }
  if (!axis.has_value()) errors = errors.view({K});
  return {scale, zero_point, errors};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CPU, m) {
  m.impl("range_search", &range_search_cpu);
}

}  // namespace pyquant::ops

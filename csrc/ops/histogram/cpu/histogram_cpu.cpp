// CPU implementation of the histogram op. The data are seen as runs of `inner` contiguous elements
// of one channel (no copy for per-tensor histograms or dense layouts whose runs are long; other
// layouts are first gathered channel by channel). Work is cut into fixed tasks of at most kBlock
// elements of one channel, each counting into private interleaved 32-bit copies; counts are
// integers, so the result does not depend on the number of threads.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../histogram.h"
#include "cpu/partials.h"
#include "histogram_kernel.h"
#include "ops/fake_quant/fake_quant.h"

namespace pyquant::ops {
namespace {

using at::Tensor;

constexpr int64_t kBlock = int64_t{1} << 18;
// Runs shorter than this are gathered into one contiguous row per channel first.
constexpr int64_t kMinRun = 64;

const cpu::HistogramKernels& kernels() {
  static const cpu::HistogramKernels& table = PYQ_SELECT_ISA_TABLE(histogram_kernels);
  return table;
}

std::tuple<Tensor, Tensor, Tensor> histogram_cpu(const Tensor& x, int64_t bins, const std::optional<Tensor>& lo,
                                                  const std::optional<Tensor>& hi, std::optional<int64_t> axis,
                                                  const std::optional<Tensor>& counts) {
  const HistogramArgs args = check_histogram_args(x, bins, lo, hi, axis, counts);
  auto [lo_t, hi_t] = histogram_range(x, args, axis, lo, hi);
  const int64_t C = args.channels;

  // Memory view: element (o, c, i) at ((o * C + c) * inner + i).
  Tensor data = dense_view(x);
  ChannelLayout layout = channel_layout(data, axis);
  if (C > 1 && (layout.channels != C || layout.inner < kMinRun)) {
    data = data.movedim(at::maybe_wrap_dim(*axis, x.dim()), 0).contiguous();
    layout = ChannelLayout{C, data.numel() / C};
  }
  if (C == 1) layout = ChannelLayout{1, data.numel()};
  const int64_t inner = layout.inner;
  const int64_t per_channel = data.numel() / C;
  const int64_t blocks = (per_channel + kBlock - 1) / kBlock;

  const float* lo_p = lo_t.const_data_ptr<float>();
  const float* hi_p = hi_t.const_data_ptr<float>();
  const char* base = static_cast<const char*>(data.const_data_ptr());
  const int64_t elem = data.element_size();
  const auto dtype = data.scalar_type();
  const auto& k = kernels();
  std::vector<int64_t> bad(static_cast<size_t>(C * blocks), 0);
  const std::vector<int64_t> partial =
      cpu::task_partials<int64_t>(C * blocks, bins, 0, [&](int64_t task, int64_t* row) {
        const int64_t c = task / blocks;
        const int64_t e_begin = (task % blocks) * kBlock;
        const int64_t e_end = std::min(per_channel, e_begin + kBlock);
        std::vector<uint32_t> hist(static_cast<size_t>(cpu::kHistogramCopies * bins), 0);
        int64_t nonfinite = 0;
        for (int64_t e = e_begin; e < e_end;) {
          const int64_t o = e / inner;
          const int64_t i = e % inner;
          const int64_t len = std::min(inner - i, e_end - e);
          const char* ptr = base + ((o * C + c) * inner + i) * elem;
          nonfinite += k.accumulate(dtype, ptr, len, lo_p[c], hi_p[c], bins, hist.data());
          e += len;
        }
        for (int64_t j = 0; j < bins; ++j) {
          int64_t sum = 0;
          for (int64_t copy = 0; copy < cpu::kHistogramCopies; ++copy) sum += hist[copy * bins + j];
          row[j] = sum;
        }
        bad[task] = nonfinite;
      });
  for (int64_t b : bad) {
    TORCH_CHECK_VALUE(b == 0, "histogram: x must be finite, but it contains NaN or Inf");
  }
  Tensor out = counts.has_value() ? counts->clone(at::MemoryFormat::Contiguous) : at::zeros({C, bins}, x.options().dtype(at::kLong));
  Tensor out2d = out.view({C, bins});
  int64_t* o = out2d.mutable_data_ptr<int64_t>();
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t* row = partial.data() + (c * blocks + b) * bins;
      for (int64_t j = 0; j < bins; ++j) o[c * bins + j] += row[j];
    }
  }
  if (!axis.has_value()) out = out.view({bins});
  return {out, lo_t, hi_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CPU, m) {
  m.impl("histogram", &histogram_cpu);
}

}  // namespace pyquant::ops

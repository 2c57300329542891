"""Range estimators (calibration): each a small class with ``observe(x)`` and
``qparams(qmin, qmax) -> (scale, zero_point)``.

Which to use (measured on ResNet-20, see docs/calibration.md): weights -> :class:`MSEEstimator`
(per channel, ops.range_search) at any bit-width, :class:`SAWBEstimator` when a closed form is
wanted; activations -> :class:`HistogramLpEstimator` (MSE) or :class:`EntropyEstimator` at 8 bit,
MSE / :class:`PercentileEstimator` at 4 bit; :class:`MinMaxEstimator` only as a baseline.
"""

from pyquant.calib.base import RangeEstimator, qparams_from_range
from pyquant.calib.histogram import (
    EntropyEstimator,
    HistogramCollector,
    HistogramLpEstimator,
    PercentileEstimator,
    kl_divergences,
)
from pyquant.calib.minmax import MinMaxEstimator
from pyquant.calib.mse import MSEEstimator
from pyquant.calib.sawb import SAWB_COEFFICIENTS, SAWBEstimator, fit_sawb_coefficients, sawb_clip

__all__ = [
    "RangeEstimator",
    "qparams_from_range",
    "MinMaxEstimator",
    "PercentileEstimator",
    "MSEEstimator",
    "HistogramLpEstimator",
    "EntropyEstimator",
    "HistogramCollector",
    "kl_divergences",
    "SAWBEstimator",
    "SAWB_COEFFICIENTS",
    "fit_sawb_coefficients",
    "sawb_clip",
]

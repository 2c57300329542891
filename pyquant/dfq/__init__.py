"""Data-free transforms (DESIGN.md section 2): cross-layer equalization and high-bias absorption
(Nagel et al. 2019), bias correction (analytic and empirical), ABN (BN re-estimation on the quantized
network), BN-moment propagation for DFQ's activation ranges."""

from pyquant.dfq.abn import adaptive_bn, data_misfit
from pyquant.dfq.bias_correction import analytic_bias_correction, empirical_bias_correction
from pyquant.dfq.cle import absorb_high_bias, cross_layer_equalization, equalization_pairs, equalize_pair
from pyquant.dfq.moments import (bn_activation_ranges, clipped_gaussian_moments, expected_layer_inputs, propagate,
                                  weight_times_input)

__all__ = ["cross_layer_equalization", "equalization_pairs", "equalize_pair", "absorb_high_bias",
           "analytic_bias_correction", "empirical_bias_correction", "adaptive_bn", "data_misfit",
           "clipped_gaussian_moments", "expected_layer_inputs", "propagate", "bn_activation_ranges", "weight_times_input"]

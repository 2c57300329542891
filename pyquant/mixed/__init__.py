"""Mixed-precision weight bit allocation (ZeroQ, Cai et al., CVPR 2020, section 3.3): KL sensitivity
of each layer at each bit-width on distilled data, then the exact Pareto frontier of model size vs.
total sensitivity and the best assignment under a size budget."""

from pyquant.mixed.pareto import allocate_bits, pareto_frontier
from pyquant.mixed.plot import plot_frontier
from pyquant.mixed.sensitivity import layer_sensitivity, quantizable_layers, quantize_weight, weight_sizes

__all__ = [
    "layer_sensitivity",
    "allocate_bits",
    "pareto_frontier",
    "plot_frontier",
    "weight_sizes",
    "quantizable_layers",
    "quantize_weight",
]

"""Per-channel mean / variance of every tensor of a BN-folded network, propagated from the folded BN
statistics (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction",
ICCV 2019, section 4.2): a folded layer's output is N(beta, gamma^2) per channel; ReLU and clipped
ReLU outputs get the moments of a rectified / clipped Gaussian (paper eq. 19 and appendix);
residual adds sum means and variances (independence assumed); grid-preserving ops (slicing,
flatten, channel zero-padding of option-A shortcuts, quantizers) pass moments through. Nodes whose
moments are unknown get None.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from pyquant.quant.graph import BN_LAYERS, is_add, is_relu, is_transparent, module_of
from pyquant.quant.quantizer import FakeQuantizer

Moments = Optional[Tuple[Tensor, Tensor]]  # (mean, var), per channel (or 1 element, broadcast)


def _phi(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)


def _Phi(t: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0)))


def clipped_gaussian_moments(mean: Tensor, std: Tensor, upper: float = math.inf) -> Tuple[Tensor, Tensor]:
    """Mean and variance of clamp(z, 0, upper) for z ~ N(mean, std^2) (ReLU: upper = inf; ReLU6: 6).

    With a = -mean/std, b = (upper - mean)/std:
    E = mean (Phi(b) - Phi(a)) + std (phi(a) - phi(b)) + upper (1 - Phi(b))     (DFQ eq. 19 / appendix)
    E[x^2] = mean^2 dP + 2 mean std (phi(a) - phi(b)) + std^2 (dP + a phi(a) - b phi(b)) + upper^2 (1 - Phi(b)).
    """
    mean, std = mean.double(), std.double().clamp(min=1e-12)
    a = -mean / std
    if math.isinf(upper):
        b_Phi, b_phi, b_term, tail = torch.ones_like(a), torch.zeros_like(a), torch.zeros_like(a), torch.zeros_like(a)
        upper_v = torch.zeros_like(a)
    else:
        b = (upper - mean) / std
        b_Phi, b_phi = _Phi(b), _phi(b)
        b_term = b * b_phi
        tail = 1.0 - b_Phi
        upper_v = torch.full_like(a, upper)
    dP = b_Phi - _Phi(a)
    dphi = _phi(a) - b_phi
    e1 = mean * dP + std * dphi + upper_v * tail
    e2 = mean * mean * dP + 2 * mean * std * dphi + std * std * (dP + a * _phi(a) - b_term) + upper_v ** 2 * tail
    return e1.float(), (e2 - e1 * e1).clamp(min=0).float()


def _relu_upper(gm, node) -> float:
    m = module_of(gm, node)
    if isinstance(m, nn.ReLU6) or (node.op == "call_function" and node.target is F.relu6):
        return 6.0
    return math.inf


def propagate(gm: fx.GraphModule, bn_stats: Dict, input_moments: Moments = None) -> Dict[fx.Node, Moments]:
    """``{node: (mean, var) or None}`` for every node. ``input_moments``: the network input's
    (e.g. (tensor([0.]), tensor([1.])) for normalised images); None = unknown."""
    out: Dict[fx.Node, Moments] = {}
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        args = [a for a in node.args if isinstance(a, fx.Node)]
        first = out.get(args[0]) if args else None
        res: Moments = None
        if node.op == "placeholder":
            res = input_moments
        elif node.op == "call_module" and node.target in bn_stats:
            s = bn_stats[node.target]
            res = (s.out_mean.clone(), s.out_std.pow(2))
        elif isinstance(m, BN_LAYERS):
            res = (m.bias.detach().float().clone(), m.weight.detach().float().pow(2))
        elif is_relu(gm, node) and first is not None:
            res = clipped_gaussian_moments(first[0], first[1].sqrt(), _relu_upper(gm, node))
        elif is_add(node):
            parts = [out.get(a) for a in args[:2]]
            if all(p is not None for p in parts) and parts[0][0].numel() in (1, parts[1][0].numel()) or \
                    (all(p is not None for p in parts) and parts[1][0].numel() == 1):
                res = (parts[0][0] + parts[1][0], parts[0][1] + parts[1][1])
        elif node.op == "call_function" and node.target is F.pad and first is not None:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            if len(pad) == 6 and first[0].numel() > 1:  # (W, W, H, H, C, C): zero channels added
                lo, hi = int(pad[4]), int(pad[5])
                res = (F.pad(first[0], (lo, hi)), F.pad(first[1], (lo, hi)))
            elif len(pad) <= 4:
                res = first
        elif isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) or (
                node.op == "call_function" and node.target in (F.max_pool2d, F.adaptive_max_pool2d)):
            res = None  # the max of several samples: its moments are not the input's
        elif isinstance(m, FakeQuantizer) or is_transparent(gm, node) or \
                isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            res = first  # pooling keeps the mean; its variance is kept as an upper bound
        out[node] = res
    return out


def expected_layer_inputs(gm: fx.GraphModule, bn_stats: Dict, input_moments: Moments = None) -> Dict[str, Tensor]:
    """``{weight layer name: E[x] per input channel}`` for the layers whose input moments are known."""
    from pyquant.quant.graph import weight_layer_nodes

    moments = propagate(gm, bn_stats, input_moments)
    result = {}
    for node in weight_layer_nodes(gm):
        mo = moments.get(node.args[0])
        if mo is None:
            continue
        layer = gm.get_submodule(node.target)
        cin = layer.weight.shape[1] * getattr(layer, "groups", 1)
        mean = mo[0].reshape(-1)
        if mean.numel() == 1:
            mean = mean.expand(cin)
        elif cin % mean.numel() == 0:  # flattened [C, H, W] features: channel-major
            mean = mean.repeat_interleave(cin // mean.numel())
        if mean.numel() == cin:
            result[node.target] = mean.clone()
    return result


def weight_times_input(weight: Tensor, groups: int, x: Tensor) -> Tensor:
    """``sum_{in, spatial} W[o, in, ...] * x[in]`` per output channel (grouped convolutions included):
    the response of a layer to a spatially constant per-channel input ``x`` (padding ignored)."""
    cout = weight.shape[0]
    w = weight.reshape(cout, weight.shape[1], -1).sum(-1)  # [Cout, Cin/g]
    w = w.reshape(groups, cout // groups, -1)              # [g, Cout/g, Cin/g]
    return torch.bmm(w, x.reshape(groups, -1, 1).to(w.dtype)).reshape(cout)


@torch.no_grad()
def bn_activation_ranges(gm: fx.GraphModule, bn_stats: Dict, n_std: float = 6.0,
                         input_moments: Moments = None) -> list:
    """DFQ's data-free activation ranges: every activation quantizer of a prepared model whose input
    moments are known gets the clip ``mean +- n_std * std`` (max/min over channels; ReLU outputs
    [0, max(mean + n_std std)] of the pre-activation Gaussian). Returns the names left uncalibrated."""
    from pyquant.calib.base import qparams_from_range

    moments = propagate(gm, bn_stats, input_moments)
    missing = []
    for node in gm.graph.nodes:
        q = module_of(gm, node)
        if not isinstance(q, FakeQuantizer) or getattr(q, "tied_to", None):
            continue
        src = node.args[0]
        pre = src.args[0] if is_relu(gm, src) and isinstance(src.args[0], fx.Node) else None
        mo = moments.get(pre) if pre is not None else moments.get(src)
        if mo is None:
            missing.append(node.target)
            continue
        mean, std = mo[0].float(), mo[1].float().sqrt()
        hi = (mean + n_std * std).max()
        lo = torch.zeros_like(hi) if pre is not None else (mean - n_std * std).min()
        if pre is not None:
            hi = torch.minimum(hi, torch.tensor(_relu_upper(gm, src))) if _relu_upper(gm, src) < math.inf else hi
        scale, zp = qparams_from_range(lo, hi, q.qmin, q.qmax, symmetric=q.spec.symmetric and q.qmin < 0)
        q.set_qparams(scale, zp)
    return missing  # the caller calibrates these, then pyquant.quant.graph.resolve_ties

"""Cross-layer equalization and high-bias absorption (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019, sections 4.1 and 4.2).

CLE: for consecutive layers W1 -> ReLU -> W2 (or W1 -> W2), ReLU(s x) = s ReLU(x) for s > 0, so
channel i of W1's output can be divided by s_i and W2's input channel i multiplied by it without
changing the function. With r1_i = max |W1[i]|, r2_i = max |W2[:, i]|, ``s_i = sqrt(r1_i / r2_i)``
(eq. 9-11) gives both channels the range sqrt(r1_i r2_i). Pairs are swept until no scale moves by
more than ``tol`` (log-ratio). Depthwise/grouped convolutions are handled channel by channel.

High-bias absorption (section 4.2.1, eq. 13-14): with W1's output ~ N(beta, gamma^2) before a ReLU,
``c = max(0, beta - 3 gamma)``: b1 <- b1 - c and b2 <- b2 + W2 c. Exact wherever the pre-activation is
>= c (about 99.9% of a Gaussian) and away from W2's zero-padded border.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from pyquant.dfq.moments import weight_times_input
from pyquant.quant.graph import WEIGHT_LAYERS, is_relu, module_of, trace


def _is_plain_relu(gm, node) -> bool:
    m = module_of(gm, node)
    if isinstance(m, nn.ReLU6) or (node.op == "call_function" and node.target is F.relu6):
        return False
    return is_relu(gm, node)


def equalization_pairs(gm: fx.GraphModule, through_relu_only: bool = False) -> List[Tuple[str, str, bool]]:
    """``[(layer1, layer2, has_relu)]``: W1's output feeds only a ReLU (or directly W2) that feeds only W2.
    ReLU6 breaks a pair (not positively homogeneous): replace it by ReLU first (``relu6_to_relu``)."""
    pairs = []
    for node in gm.graph.nodes:
        if not isinstance(module_of(gm, node), WEIGHT_LAYERS):
            continue
        users = list(node.users)
        if len(users) != 1:
            continue
        nxt, has_relu = users[0], False
        if _is_plain_relu(gm, nxt):
            relu_users = list(nxt.users)
            if len(relu_users) != 1:
                continue
            nxt, has_relu = relu_users[0], True
        elif through_relu_only:
            continue
        m2 = module_of(gm, nxt)
        m1 = module_of(gm, node)
        if isinstance(m2, WEIGHT_LAYERS) and nxt.args[0] is (node if not has_relu else users[0]):
            cin2 = m2.weight.shape[1] * getattr(m2, "groups", 1)
            if cin2 == m1.weight.shape[0]:
                pairs.append((node.target, nxt.target, has_relu))
    return pairs


def _input_channel_view(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """W2 as [Cin, everything touching that input channel]."""
    cout, cin_g = weight.shape[0], weight.shape[1]
    w = weight.reshape(groups, cout // groups, cin_g, -1).permute(0, 2, 1, 3)
    return w.reshape(groups * cin_g, -1)


def _scale_input_channels(weight: torch.Tensor, groups: int, s: torch.Tensor) -> torch.Tensor:
    cout, cin_g = weight.shape[0], weight.shape[1]
    w = weight.reshape(groups, cout // groups, cin_g, -1) * s.reshape(groups, 1, cin_g, 1)
    return w.reshape(weight.shape)


@torch.no_grad()
def equalize_pair(m1: nn.Module, m2: nn.Module, bn=None, s_range=(1e-8, 1e8)) -> torch.Tensor:
    """One CLE step on a pair (in place); returns the scales s (1 where a range is 0 or not finite)."""
    w1 = m1.weight.detach()
    r1 = w1.reshape(w1.shape[0], -1).abs().amax(1).double()
    groups2 = getattr(m2, "groups", 1)
    r2 = _input_channel_view(m2.weight.detach(), groups2).abs().amax(1).double()
    s = torch.sqrt(r1 / r2)
    ok = (r1 > 0) & (r2 > 0) & torch.isfinite(s)
    s = torch.where(ok, s, torch.ones_like(s)).clamp(*s_range)
    shape = (-1,) + (1,) * (w1.dim() - 1)
    m1.weight.copy_((w1.double() / s.reshape(shape)).to(w1.dtype))
    if m1.bias is not None:
        m1.bias.copy_((m1.bias.double() / s).to(m1.bias.dtype))
    m2.weight.copy_(_scale_input_channels(m2.weight.double(), groups2, s).to(m2.weight.dtype))
    if bn is not None:
        bn.out_mean = (bn.out_mean.double() / s).float()
        bn.out_std = (bn.out_std.double() / s).float()
    return s


def cross_layer_equalization(model: nn.Module, bn_stats: Dict = None, *, tol: float = 1e-6,
                             max_iterations: int = 100) -> Tuple[List[Tuple[str, str, bool]], int]:
    """Equalizes every pair of a BN-folded model in place (sweeps until the largest |log s| < tol).
    Returns (pairs, sweeps). ``bn_stats`` (from fold_bn) are rescaled along."""
    gm = trace(model)
    bn_stats = bn_stats or {}
    pairs = equalization_pairs(gm)
    sweeps = 0
    for sweeps in range(1, max_iterations + 1):
        worst = 0.0
        for a, b, _ in pairs:
            s = equalize_pair(gm.get_submodule(a), gm.get_submodule(b), bn_stats.get(a))
            worst = max(worst, float(s.log().abs().max()) if s.numel() else 0.0)
        if worst < tol:
            break
    return pairs, sweeps


@torch.no_grad()
def absorb_high_bias(model: nn.Module, bn_stats: Dict, n_std: float = 3.0) -> Dict[str, float]:
    """High-bias absorption in place for every W1 -> ReLU -> W2 pair with BN statistics on W1;
    returns {layer1: sum of absorbed c}."""
    gm = trace(model)
    done = {}
    for a, b, has_relu in equalization_pairs(gm, through_relu_only=True):
        if a not in bn_stats:
            continue
        st = bn_stats[a]
        c = (st.out_mean - n_std * st.out_std).clamp(min=0)
        if not bool((c > 0).any()):
            continue
        m1, m2 = gm.get_submodule(a), gm.get_submodule(b)
        m1.bias.sub_(c)
        shift = weight_times_input(m2.weight.detach(), getattr(m2, "groups", 1), c)
        if m2.bias is None:
            m2.bias = nn.Parameter(torch.zeros_like(shift), requires_grad=False)
        m2.bias.add_(shift.to(m2.bias.dtype))
        st.out_mean = st.out_mean - c
        done[a] = float(c.sum())
    return done

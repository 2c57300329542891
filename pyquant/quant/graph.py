"""torch.fx model surgery: tracing with errors that name the module, the supported-layer check,
conv -> BN -> activation detection, and the activation-quantizer placement policy.

Placement policy (explicit; everything the int8 engine runs as int8, no float islands):

1. the network input (a signed, affine grid);
2. the output of every ReLU / ReLU6 (``nn.ReLU``, ``nn.ReLU6``, ``F.relu``, ``F.relu6``, ``Tensor.relu``;
   an unsigned grid ``[0, 2^b - 1]``);
3. the output of every residual add that is not consumed only by a ReLU (then the ReLU's output is
   quantized instead; signed affine grid);
4. the input of any Conv2d / Linear that is not yet quantized after walking back through operations
   that keep values on the grid (max-pool, flatten/view/reshape, slicing, zero padding, dropout,
   identity): e.g. the pooled features before the classifier, or a linear bottleneck's output.
   When such a tensor is an average pool of a quantized tensor, its quantizer is *tied* to that
   tensor's quantizer (``tied_to``: same clip range, as int8 engines requantize average pooling onto
   its input's grid); it is not calibrated on its own, because synthetic data under-drive the
   classifier's features (ZeroQ data give pooled features a third of the real range).

Optionally the first and the last weight layer (and the activation quantizers feeding them) use
``first_last_bits`` instead (the convention of most papers), and the network input uses ``input_bits``
(images arrive as 8-bit pixels, and the data-free papers on CIFAR leave the input unquantized while
quantizing every weight layer); every reported number says which.
Each activation quantizer is a :class:`FakeQuantizer` submodule named ``aq_<node>`` inserted as its
own node right after the tensor it quantizes; ``model.act_quantizer_sites`` maps each of them to
the node it quantizes, and each QuantConv2d/QuantLinear has ``input_quantizer_name``.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from pyquant.quant.modules import QUANT_LAYERS, QuantConv2d, QuantLinear
from pyquant.quant.quantizer import FakeQuantizer
from pyquant.quant.spec import QuantSpec

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)
BN_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d)
RELU_MODULES = (nn.ReLU, nn.ReLU6)
RELU_FUNCTIONS = (F.relu, torch.relu, F.relu6)
TRANSPARENT_MODULES = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
TRANSPARENT_FUNCTIONS = (torch.flatten, operator.getitem, F.max_pool2d, F.adaptive_max_pool2d, F.dropout)
TRANSPARENT_METHODS = ("view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze")
ADD_FUNCTIONS = (operator.add, torch.add, operator.iadd)
# Leaf modules without weights that may stay in float between quantized tensors.
PARAMETER_FREE_OK = "any nn.Module without parameters"


class _NamingTracer(fx.Tracer):
    """fx.Tracer that remembers the innermost module being traced when tracing fails."""

    def __init__(self):
        super().__init__()
        self.failed_in: Optional[Tuple[str, str]] = None

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = (self.path_of_module(m) or "<root>", type(m).__name__)
            raise


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` GraphModule of ``model`` (shares its submodules); a ValueError naming the module
    that could not be traced otherwise."""
    _require_module("model", model)
    if isinstance(model, fx.GraphModule):
        return model
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError...
        where = tracer.failed_in or ("<root>", type(model).__name__)
        raise ValueError(
            f"model is not traceable by torch.fx: module '{where[0]}' ({where[1]}) failed with "
            f"{type(err).__name__}: {err}. Make its forward free of data-dependent control flow, or quantize "
            f"its traceable parts separately."
        ) from err
    return fx.GraphModule(model, graph, type(model).__name__)


def check_supported(gm: fx.GraphModule) -> None:
    """Raises ValueError naming every leaf module with parameters that is not Conv2d / Linear /
    BatchNorm (e.g. Conv1d, ConvTranspose2d, LayerNorm, LSTM, Embedding)."""
    bad = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = gm.get_submodule(node.target)
        if isinstance(m, WEIGHT_LAYERS + BN_LAYERS + QUANT_LAYERS + (FakeQuantizer,)):
            if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
                bad.append(f"'{node.target}' (Conv2d with padding_mode={m.padding_mode!r})")
            continue
        if any(True for _ in m.parameters()):
            bad.append(f"'{node.target}' ({type(m).__name__})")
    if bad:
        raise ValueError(f"unsupported layer(s): {', '.join(bad)}; pyquant quantizes Conv2d and Linear "
                         f"(BatchNorm is folded or kept as an affine step)")


def module_of(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def is_relu(gm, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), RELU_MODULES)
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in ADD_FUNCTIONS:
        return all(isinstance(a, fx.Node) for a in node.args[:2])
    return node.op == "call_method" and node.target in ("add", "add_") and \
        all(isinstance(a, fx.Node) for a in node.args[:2])


def is_transparent(gm, node: fx.Node) -> bool:
    """Operations whose output stays on their input's quantization grid."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), TRANSPARENT_MODULES)
    if node.op == "call_function":
        if node.target is F.pad:
            value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
            return value in (0, 0.0, None)
        return node.target in TRANSPARENT_FUNCTIONS
    return node.op == "call_method" and node.target in TRANSPARENT_METHODS


def weight_layer_nodes(gm: fx.GraphModule) -> List[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module"
            and isinstance(gm.get_submodule(n.target), WEIGHT_LAYERS + QUANT_LAYERS)]


def walk_back(gm, node: fx.Node) -> fx.Node:
    """The first node at or above ``node`` that is not a grid-preserving operation."""
    while is_transparent(gm, node) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _set_module(gm: nn.Module, target: str, new: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, new)


# --------------------------------------------------------------------------------------------------
# BN folding

@dataclass
class FoldedBN:
    """The statistics of a BatchNorm folded into the layer ``layer`` (kept for CLE, high-bias
    absorption, analytic bias correction, DFQ activation ranges and ABN).

    ``out_mean`` / ``out_std``: the per-channel mean and standard deviation the folded layer's output
    is expected to have (BN's beta and |gamma| * sqrt(var / (var + eps))), updated by the transforms
    that rescale or shift that output (CLE, absorption)."""

    layer: str
    bn: str
    running_mean: torch.Tensor
    running_var: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float
    out_mean: torch.Tensor
    out_std: torch.Tensor


def _single_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def fold_bn(model: nn.Module) -> Tuple[fx.GraphModule, Dict[str, FoldedBN]]:
    """Folds every BatchNorm whose input is a Conv2d / Linear output used by nothing else into that
    layer (``W' = W * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``).
    Returns the folded GraphModule (a copy; ``model`` is not modified) and ``{layer name: FoldedBN}``.
    BatchNorms that cannot be folded (after a ReLU, after a shared tensor) stay in the graph as a
    per-channel affine step."""
    gm = copy.deepcopy(trace(copy.deepcopy(model) if not isinstance(model, fx.GraphModule) else model))
    gm.eval()
    check_supported(gm)
    stats: Dict[str, FoldedBN] = {}
    for node in list(gm.graph.nodes):
        layer = module_of(gm, node)
        if not isinstance(layer, WEIGHT_LAYERS):
            continue
        user = _single_user(node)
        bn = module_of(gm, user) if user is not None else None
        if not isinstance(bn, BN_LAYERS) or bn.running_mean is None:
            continue
        with torch.no_grad():
            mean, var = bn.running_mean.float(), bn.running_var.float()
            gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(mean)
            beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(mean)
            inv_std = torch.rsqrt(var + bn.eps)
            factor = gamma * inv_std
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            new_w = layer.weight.detach() * factor.reshape(shape)
            old_b = layer.bias.detach() if layer.bias is not None else torch.zeros_like(mean)
            new_b = (old_b - mean) * factor + beta
            layer.weight = nn.Parameter(new_w, requires_grad=False)
            layer.bias = nn.Parameter(new_b, requires_grad=False)
        stats[node.target] = FoldedBN(
            layer=node.target, bn=user.target, running_mean=mean.clone(), running_var=var.clone(),
            weight=gamma.clone(), bias=beta.clone(), eps=float(bn.eps), out_mean=beta.clone(),
            out_std=gamma.abs() * torch.sqrt(var / (var + bn.eps)))
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        _set_module(gm, user.target, nn.Identity())
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, stats


def replace_relu6(model: nn.Module) -> int:
    """In-place: every nn.ReLU6 becomes nn.ReLU (DFQ's step before CLE); returns how many."""
    count = 0
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.ReLU6):
            _set_module(model, name, nn.ReLU(inplace=m.inplace))
            count += 1
    return count


# --------------------------------------------------------------------------------------------------
# Quantizer placement

def activation_sites(gm: fx.GraphModule) -> List[Tuple[fx.Node, bool]]:
    """``[(node, unsigned)]``: the tensors that get an activation quantizer (policy in the module doc)."""
    sites: Dict[fx.Node, bool] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            sites[node] = False
        elif is_relu(gm, node):
            sites[node] = True
        elif is_add(node):
            users = list(node.users)
            if not users or not all(is_relu(gm, u) for u in users):
                sites[node] = False
    for node in weight_layer_nodes(gm):
        arg = node.args[0]
        if walk_back(gm, arg) not in sites:
            sites[arg] = False
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(sites.items(), key=lambda kv: order[kv[0]])


AVG_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)


def _pooled_source(gm, node: fx.Node, sites) -> Optional[fx.Node]:
    """The quantized tensor that ``node`` is an average pool of (through grid-preserving ops), or None."""
    node = walk_back(gm, node)
    if not isinstance(module_of(gm, node), AVG_POOL_MODULES) and not (
            node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.avg_pool2d)):
        return None
    src = walk_back(gm, node.args[0])
    return src if src in sites else None


def _input_quantizer_of(gm, node: fx.Node) -> Optional[str]:
    arg = walk_back(gm, node.args[0])
    if arg.op == "call_module" and isinstance(gm.get_submodule(arg.target), FakeQuantizer):
        return arg.target
    return None


def prepare(model: nn.Module, weight_spec: QuantSpec, act_spec: Optional[QuantSpec],
            first_last_bits: Optional[int] = None, layer_bits: Optional[Dict[str, int]] = None,
            input_bits: Optional[int] = None) -> fx.GraphModule:
    """A copy of ``model`` (best already BN-folded) with QuantConv2d / QuantLinear in place of
    Conv2d / Linear and activation quantizers inserted by the placement policy. Quantizers start
    disabled (no qparams yet): call :func:`quantize_weights` and :func:`calibrate_activations`.
    ``layer_bits`` overrides the weight bits per layer name (mixed precision); ``input_bits`` the bits of the
    network-input quantizers (over ``first_last_bits``)."""
    gm = copy.deepcopy(trace(copy.deepcopy(model) if not isinstance(model, fx.GraphModule) else model))
    check_supported(gm)
    layers = weight_layer_nodes(gm)
    if not layers:
        raise ValueError("model has no Conv2d or Linear layer to quantize")
    edge = {layers[0].target, layers[-1].target} if first_last_bits is not None else set()
    for node in layers:
        m = gm.get_submodule(node.target)
        if isinstance(m, QUANT_LAYERS):
            continue
        bits = weight_spec.bits
        if layer_bits and node.target in layer_bits:
            bits = layer_bits[node.target]
        if node.target in edge:
            bits = first_last_bits
        spec = weight_spec.replace(bits=bits, signed=True)
        _set_module(gm, node.target, QuantConv2d(m, spec) if isinstance(m, nn.Conv2d) else QuantLinear(m, spec))
    gm.act_quantizer_sites = {}
    if act_spec is not None:
        edge_inputs = {walk_back(gm, n.args[0]) for n in layers if n.target in edge} | \
            {n.args[0] for n in layers if n.target in edge}
        sites = activation_sites(gm)
        site_nodes = {n for n, _ in sites}
        pooled_sources = {n: _pooled_source(gm, n, site_nodes) for n in site_nodes}  # before the graph changes
        for node, unsigned in sites:
            bits = first_last_bits if node in edge_inputs else act_spec.bits
            if input_bits is not None and node.op == "placeholder":
                bits = input_bits
            pooled = pooled_sources[node]
            unsigned = unsigned or (pooled is not None and dict(sites)[pooled])
            spec = act_spec.replace(bits=bits, signed=not unsigned, symmetric=act_spec.symmetric and unsigned,
                                    axis=None)
            name = "aq_" + node.name
            quantizer = FakeQuantizer(spec)
            quantizer.tied_to = None if pooled is None else "aq_" + pooled.name
            gm.add_submodule(name, quantizer)
            with gm.graph.inserting_after(node):
                q = gm.graph.call_module(name, (node,))
            node.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q)
            gm.act_quantizer_sites[name] = node.name
        gm.graph.lint()
        gm.recompile()
        for node in weight_layer_nodes(gm):
            gm.get_submodule(node.target).input_quantizer_name = _input_quantizer_of(gm, node)
    return gm


def _require_module(name: str, value) -> None:
    # the recipe steps (pyquant.dfq) start here: a clear error instead of one from deep inside fx or named_modules
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")


def quant_layers(gm: nn.Module) -> Dict[str, nn.Module]:
    _require_module("model", gm)
    return {n: m for n, m in gm.named_modules() if isinstance(m, QUANT_LAYERS)}


def act_quantizers(gm: nn.Module) -> Dict[str, FakeQuantizer]:
    return {n: m for n, m in gm.named_modules() if isinstance(m, FakeQuantizer) and n.startswith("aq_")}


def input_quantizers(gm: nn.Module) -> Dict[str, FakeQuantizer]:
    """The activation quantizers on the network's inputs (placeholders)."""
    placeholders = {n.name for n in gm.graph.nodes if n.op == "placeholder"} if isinstance(gm, fx.GraphModule) else set()
    sites = getattr(gm, "act_quantizer_sites", {})
    return {n: q for n, q in act_quantizers(gm).items() if sites.get(n) in placeholders}


def quantize_weights(gm: nn.Module) -> None:
    """Computes every weight quantizer's per-channel qparams from its (current) weight."""
    for m in quant_layers(gm).values():
        m.calibrate_weight()


def set_activation_quant(gm: nn.Module, enabled: bool) -> None:
    for q in act_quantizers(gm).values():
        q.enabled = enabled and q.calibrated


def resolve_ties(gm: nn.Module) -> None:
    """Gives every tied activation quantizer the clip range of the quantizer it is tied to."""
    from pyquant.calib.base import qparams_from_range

    qs = act_quantizers(gm)
    for q in qs.values():
        src = qs.get(getattr(q, "tied_to", None) or "")
        if src is None or not src.calibrated:
            continue
        lo, hi = src.clip_range()
        q.set_qparams(*qparams_from_range(lo, hi, q.qmin, q.qmax, symmetric=q.qmin < 0 and q.spec.symmetric))


@torch.no_grad()
def calibrate_activations(gm: nn.Module, data: torch.Tensor, batch_size: int = 128) -> None:
    """Observes ``data`` at every activation quantizer (all in float, weights as they are) and
    computes the qparams with each quantizer's estimator; tied quantizers copy their source's range."""
    qs = {n: q for n, q in act_quantizers(gm).items() if getattr(q, "tied_to", None) is None}
    for q in qs.values():
        q._estimator = None
        q.observing = True
    try:
        for i in range(0, data.shape[0], batch_size):
            gm(data[i:i + batch_size])
    finally:
        for q in qs.values():
            q.observing = False
    for q in qs.values():
        q.compute_qparams()
    resolve_ties(gm)

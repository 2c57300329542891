"""``convert``: a fake-quant network from :func:`pyquant.quantize` -> the same network on the int8 kernels.

The fx graph is walked once in order. Every value is either float32 or uint8 codes on a :class:`Grid`:

* an activation quantizer (``aq_*``) on a float32 value becomes :class:`Quantize`;
* a QuantConv2d / QuantLinear needs uint8 codes in (its ``input_quantizer``), becomes :class:`Conv2d` /
  :class:`Linear` with the prepacked weight, and absorbs what follows it when the graph allows: a ReLU/ReLU6
  and the next activation quantizer (fused requantization, uint8 out); otherwise its output is float32;
* a residual add and an average pool with a quantized input become :class:`Add` / :class:`AvgPool2d`,
  absorbing a following ReLU + quantizer the same way (requantizing; tied quantizers share the grid);
* grid-preserving operations (max-pool, slicing, flatten/view, zero padding -> padding with the zero-point's
  code, dropout, identity) run on the codes directly;
* anything else that sees codes gets them dequantized first (exactly what the fake-quant network computes);
  the network's outputs are dequantized to float32.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from pyquant._guards import any_grad_mode
from pyquant.int8.modules import Add, AvgPool2d, Conv2d, Dequantize, Grid, Linear, Quantize
from pyquant.quant import graph as qgraph
from pyquant.quant.modules import QuantConv2d, QuantLinear
from pyquant.quant.quantizer import FakeQuantizer


@dataclass
class _Value:
    node: fx.Node
    grid: Optional[Grid]  # None: float32


def activation_grid(q: FakeQuantizer, where: str) -> Grid:
    """The uint8 grid of an activation FakeQuantizer (signed grids shifted by 128); ValueError naming ``where``."""
    if q.axis is not None or q.scale.numel() != 1:
        raise ValueError(f"convert: activation quantizer {where} is per-channel; the int8 path needs per-tensor grids")
    offset = 128 if q.qmin < 0 else 0
    if q.qmin + offset < 0 or q.qmax + offset > 255:
        raise ValueError(f"convert: activation quantizer {where} has a {q.bits}-bit grid [{q.qmin}, {q.qmax}], "
                         f"wider than 8 bit; the int8 kernels take uint8 activations")
    zp = int(q.zero_point.reshape(-1)[0]) + offset
    return Grid(float(q.scale.reshape(-1)[0]), zp, q.qmin + offset, q.qmax + offset)


def weight_codes(layer: nn.Module, where: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(w_q int8, w_scale float32 [N])`` of a QuantConv2d / QuantLinear; ValueError naming ``where`` for
    weights the symmetric s8 kernels cannot run."""
    wq = layer.weight_quantizer
    if not wq.enabled:
        raise ValueError(f"convert: layer {where} has no weight qparams (weight quantizer disabled)")
    if wq.qmin < -128 or wq.qmax > 127:
        raise ValueError(f"convert: layer {where} has {wq.bits}-bit weights [{wq.qmin}, {wq.qmax}], which do not "
                         f"fit int8")
    if bool((wq.zero_point != 0).any()):
        raise ValueError(f"convert: layer {where} has asymmetric weights (non-zero weight zero-points); the int8 "
                         f"kernels take symmetric weights")
    n = layer.weight.shape[0]
    scale = wq.scale.to(torch.float32).reshape(-1)
    if scale.numel() == 1:
        scale = scale.expand(n)
    if wq.axis not in (0, None) or scale.numel() != n:
        raise ValueError(f"convert: layer {where} weight scales are not per output channel")
    with torch.no_grad():
        w_dq = layer.quantized_weight().float()
        shape = (-1,) + (1,) * (w_dq.dim() - 1)
        codes = torch.round(w_dq / scale.reshape(shape)).clamp_(wq.qmin, wq.qmax)
    return codes.to(torch.int8), scale.contiguous().clone()


def _is_avg_pool(gm, node: fx.Node) -> bool:
    m = qgraph.module_of(gm, node)
    if m is not None:
        return isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d))
    return node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.avg_pool2d)


def _is_relu6(gm, node: fx.Node) -> bool:
    m = qgraph.module_of(gm, node)
    return isinstance(m, nn.ReLU6) or (node.op == "call_function" and node.target is F.relu6)


class _Converter:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: Dict[fx.Node, _Value] = {}
        self.consumed: Dict[fx.Node, fx.Node] = {}  # absorbed node -> the node whose value it takes
        self.quantizer_nodes: Dict[str, str] = {}  # aq name -> node name in the converted graph
        self.float_nodes: Dict[str, str] = {}  # source node name -> what runs in float32 there
        self.names: set = set()

    # -- helpers -------------------------------------------------------------------------------------
    def add_module(self, base: str, module: nn.Module) -> str:
        name = base.replace(".", "_")
        i = 1
        while name in self.names:
            name, i = f"{base.replace('.', '_')}_{i}", i + 1
        self.names.add(name)
        self.root.add_module(name, module)
        return name

    def call(self, base: str, module: nn.Module, args) -> fx.Node:
        return self.graph.call_module(self.add_module(base, module), tuple(args))

    def aq(self, node: fx.Node) -> Optional[FakeQuantizer]:
        m = qgraph.module_of(self.gm, node)
        return m if isinstance(m, FakeQuantizer) and m.enabled else None

    def absorb(self, node: fx.Node):
        """What follows ``node`` that its int8 module can fuse: ``(out_grid, relu, relu6, absorbed nodes)``."""
        users = list(node.users)
        if len(users) != 1:
            return None, False, False, []
        nxt = users[0]
        relu = relu6 = False
        absorbed = []
        if qgraph.is_relu(self.gm, nxt):
            relu6 = _is_relu6(self.gm, nxt)
            relu = not relu6
            users = list(nxt.users)
            if len(users) != 1 or self.aq(users[0]) is None:
                return None, False, False, []
            absorbed, nxt = [nxt], users[0]
        q = self.aq(nxt)
        if q is None and not absorbed:
            # quantize -> (flatten, slicing, max-pool, zero pad) == those ops on codes: emit codes on the grid of a
            # quantizer after a chain of grid-preserving ops; it then passes them through unchanged
            while qgraph.is_transparent(self.gm, nxt) and len(nxt.users) == 1:
                nxt = next(iter(nxt.users))
            q = self.aq(nxt)
            return (None, False, False, []) if q is None else (activation_grid(q, f"'{nxt.target}'"), False, False, [])
        if q is None:
            return None, False, False, []
        return activation_grid(q, f"'{nxt.target}'"), relu, relu6, absorbed + [nxt]

    def finish(self, node: fx.Node, new: fx.Node, grid: Optional[Grid], absorbed: List[fx.Node]) -> None:
        self.env[node] = _Value(new, grid)
        for a in absorbed:
            self.env[a] = _Value(new, grid)
            if self.aq(a) is not None:
                self.quantizer_nodes[a.target] = new.name

    def as_float(self, arg):
        """Maps an fx argument structure, dequantizing quantized values."""
        def one(n: fx.Node):
            v = self.env[n]
            if v.grid is None:
                return v.node
            return self.call(f"dequant_{n.name}", Dequantize(v.grid), [v.node])
        return fx.node.map_arg(arg, one)

    def as_is(self, arg):
        return fx.node.map_arg(arg, lambda n: self.env[n].node)

    # -- node kinds ----------------------------------------------------------------------------------
    def run(self) -> fx.GraphModule:
        for node in self.gm.graph.nodes:
            if node in self.env:
                continue
            self.convert_node(node)
        out = fx.GraphModule(self.root, self.graph, "Int8Model")
        out.quantizer_nodes = dict(self.quantizer_nodes)
        out.float_nodes = dict(self.float_nodes)
        return out

    def convert_node(self, node: fx.Node) -> None:
        gm = self.gm
        if node.op == "placeholder":
            new = self.graph.placeholder(node.target)
            self.env[node] = _Value(new, None)
            return
        if node.op == "output":
            self.graph.output(self.as_float(node.args[0]))
            return
        if node.op == "get_attr":
            raise ValueError(f"convert: node '{node.name}' reads the attribute '{node.target}'; only module calls "
                             f"and parameter-free functions can be converted")
        m = qgraph.module_of(gm, node)
        if isinstance(m, FakeQuantizer):
            return self.convert_quantizer(node, m)
        if isinstance(m, (QuantConv2d, QuantLinear)):
            return self.convert_weight_layer(node, m)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"convert: node '{node.name}' ({node.target}, {type(m).__name__}) is not quantized; "
                             f"convert takes the fake-quant model from pyquant.quantize")
        args = [a for a in node.args if isinstance(a, fx.Node)]
        quantized = any(self.env[a].grid is not None for a in args)
        if qgraph.is_add(node) and quantized:
            return self.convert_add(node)
        if _is_avg_pool(gm, node) and quantized:
            return self.convert_avg_pool(node, m)
        if quantized and qgraph.is_transparent(gm, node) and len(args) == 1 and node.args[0] is args[0]:
            return self.convert_on_codes(node, m)
        self.copy_float(node, m)

    def convert_quantizer(self, node: fx.Node, q: FakeQuantizer) -> None:
        v = self.env[node.args[0]]
        if not q.enabled:  # an identity in the fake-quant network too
            self.env[node] = v
            return
        grid = activation_grid(q, f"'{node.target}'")
        if v.grid == grid:  # codes already on this grid (a fused requantization before grid-preserving ops)
            new = v.node
        else:
            src = v.node if v.grid is None else self.call(f"dequant_{node.name}", Dequantize(v.grid), [v.node])
            new = self.call(f"quant_{node.name}", Quantize(grid), [src])
        self.finish(node, new, grid, [node])

    def convert_weight_layer(self, node: fx.Node, m: nn.Module) -> None:
        where = f"'{node.target}' (node '{node.name}')"
        v = self.env[node.args[0]]
        if v.grid is None:
            raise ValueError(f"convert: layer {where} has no input activation quantizer (its input is float); "
                             f"quantize the model with activation quantization (a_bits) enabled")
        w_q, w_scale = weight_codes(m, where)
        out_grid, relu, relu6, absorbed = self.absorb(node)
        if isinstance(m, QuantConv2d):
            mod = Conv2d(w_q, w_scale, m.bias, v.grid, m.stride, m.padding, m.dilation, m.groups,
                         out_grid, relu, relu6)
        else:
            mod = Linear(w_q, w_scale, m.bias, v.grid, out_grid, relu, relu6)
        self.finish(node, self.call(node.target, mod, [v.node]), out_grid, absorbed)

    def convert_add(self, node: fx.Node) -> None:
        a, b = node.args[:2]
        if len(node.args) > 2 or node.kwargs:
            raise ValueError(f"convert: add node '{node.name}' has extra arguments (alpha=...); not supported")
        out_grid, relu, relu6, absorbed = self.absorb(node)
        mod = Add((self.env[a].grid, self.env[b].grid), out_grid, relu, relu6)
        self.finish(node, self.call(node.name, mod, [self.env[a].node, self.env[b].node]), out_grid, absorbed)

    def convert_avg_pool(self, node: fx.Node, m: Optional[nn.Module]) -> None:
        v = self.env[node.args[0]]
        if m is None:  # functional form
            sig = dict(zip(["input", "output_size"] if node.target is F.adaptive_avg_pool2d else
                           ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"],
                           node.args))
            sig.update(node.kwargs)
            sig.pop("input")
            if node.target is not F.adaptive_avg_pool2d and sig.get("divisor_override") is not None:
                raise ValueError(f"convert: avg-pool node '{node.name}' uses divisor_override; not supported")
            kw = sig
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            kw = {"output_size": m.output_size}
        else:
            if m.divisor_override is not None:
                raise ValueError(f"convert: avg-pool node '{node.name}' uses divisor_override; not supported")
            kw = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, ceil_mode=m.ceil_mode,
                      count_include_pad=m.count_include_pad)
        if kw.get("output_size") is not None and any(s is None for s in _pair_any(kw["output_size"])):
            raise ValueError(f"convert: avg-pool node '{node.name}' has output_size with None; not supported")
        out_grid, relu, _, absorbed = self.absorb(node)
        if relu or len(absorbed) > 1:  # a ReLU after an average pool of codes: keep it in float
            out_grid, absorbed = None, []
        mod = AvgPool2d(v.grid, out_grid, **kw)
        self.finish(node, self.call(node.name, mod, [v.node]), out_grid, absorbed)

    def convert_on_codes(self, node: fx.Node, m: Optional[nn.Module]) -> None:
        """A grid-preserving op applied to the uint8 codes (zero padding pads with the zero-point's code)."""
        v = self.env[node.args[0]]
        m_or_fn = m if m is not None else node.target
        if isinstance(m_or_fn, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) or m_or_fn in (F.max_pool2d,
                                                                                      F.adaptive_max_pool2d):
            # torch 2.13's uint8 max-pool fails on channels_last inputs (the int8 convs' output layout)
            v = _Value(self.graph.call_method("contiguous", (v.node,)), v.grid)
            self.env[node.args[0]] = v
        if node.op == "call_function" and node.target is F.pad:
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            if mode != "constant":
                raise ValueError(f"convert: pad node '{node.name}' uses mode={mode!r}; only zero padding runs on codes")
            args = (v.node, node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
            new = self.graph.call_function(F.pad, args, {"mode": "constant", "value": float(v.grid.zero_point)})
        elif node.op == "call_module":
            new = self.graph.call_module(self.add_module(node.target, _copy_parameter_free(m, node)),
                                         self.as_is(node.args), self.as_is(node.kwargs))
        else:
            new = self.graph.create_node(node.op, node.target, self.as_is(node.args), self.as_is(node.kwargs))
        self.env[node] = _Value(new, v.grid)

    def copy_float(self, node: fx.Node, m: Optional[nn.Module]) -> None:
        """A node with no int8 kernel: it runs in float32 on dequantized inputs (listed in ``float_nodes``)."""
        args, kwargs = self.as_float(node.args), self.as_float(node.kwargs)
        what = type(m).__name__ if m is not None else getattr(node.target, "__name__", str(node.target))
        self.float_nodes[node.name] = f"{node.op} {what}"
        if node.op == "call_module":
            new = self.graph.call_module(self.add_module(node.target, _copy_parameter_free(m, node)), args, kwargs)
        else:
            new = self.graph.create_node(node.op, node.target, args, kwargs)
        self.env[node] = _Value(new, None)


def _copy_parameter_free(m: nn.Module, node: fx.Node) -> nn.Module:
    import copy

    if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
        raise ValueError(f"convert: node '{node.name}' ({node.target}, {type(m).__name__}) has parameters or buffers "
                         f"that are neither a quantized Conv2d/Linear nor folded; cannot convert it")
    return copy.deepcopy(m)


def _pair_any(v):
    return (v, v) if not isinstance(v, (tuple, list)) else tuple(v)



@any_grad_mode
def convert(fake_quant_model: nn.Module) -> fx.GraphModule:
    """The fake-quant network from :func:`pyquant.quantize` running on the int8 ops (``ops.int8_conv2d`` /
    ``ops.int8_linear``): uint8 activations between layers, prepacked int8 weights, fused bias / ReLU /
    requantization. Returns a ``torch.fx.GraphModule`` (float32 in, float32 out) in eval mode with
    ``quantizer_nodes`` (activation quantizer name -> the node producing its codes) and ``float_nodes`` (node
    name -> op, for every node without an int8 kernel that runs in float32 between a dequantize and the next
    quantize: Hardswish, SiLU, a squeeze-excitation product, ...; empty for a network that runs wholly on
    codes). ValueError naming the
    node for anything that cannot run on the int8 kernels (weights wider than 8 bit or asymmetric, activation
    grids wider than 8 bit, per-channel activation grids, a conv/linear without an input quantizer)."""
    if not isinstance(fake_quant_model, nn.Module):
        raise TypeError(f"convert: fake_quant_model must be an nn.Module, got {type(fake_quant_model).__name__}")
    gm = fake_quant_model if isinstance(fake_quant_model, fx.GraphModule) else qgraph.trace(fake_quant_model)
    if not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in gm.modules()):
        raise ValueError("convert: the model has no QuantConv2d/QuantLinear; pass the result of pyquant.quantize")
    out = _Converter(gm).run()
    _fuse_conv_add(out)
    return out.eval()


def _fuse_conv_add(gm: fx.GraphModule) -> None:
    """conv -> add (-> ReLU) -> quantizer, where the conv's float32 output feeds only the add and the other
    input is codes of the same shape: the add moves into the conv's epilogue (``Conv2d.residual_grid``), the
    same float32 operations in the same order, so no float tensor is written between the quantizers."""
    for node in list(gm.graph.nodes):
        add = gm.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(add, Add) or add.out_grid is None or len(node.args) != 2:
            continue
        for i in (0, 1):
            conv_node, other = node.args[i], node.args[1 - i]
            conv = gm.get_submodule(conv_node.target) if getattr(conv_node, "op", None) == "call_module" else None
            if (isinstance(conv, Conv2d) and conv.out_grid is None and not conv.relu and not conv.relu6
                    and conv.residual_grid is None and add.in_grids[i] is None and add.in_grids[1 - i] is not None
                    and len(conv_node.users) == 1 and len(conv_node.args) == 1):
                break
        else:
            continue
        fused = Conv2d(conv.w_q, conv.w_scale, conv.bias, conv.in_grid, conv.stride, conv.padding, conv.dilation,
                       conv.groups, add.out_grid, add.relu, add.relu6, residual_grid=add.in_grids[1 - i])
        gm.add_submodule(conv_node.target, fused)
        node.prepend(conv_node)  # the residual may be computed after the conv: run the conv where the add ran
        conv_node.args = (conv_node.args[0], other)
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
        for name, produced_by in list(gm.quantizer_nodes.items()):
            if produced_by == node.name:
                gm.quantizer_nodes[name] = conv_node.name
    gm.graph.lint()
    gm.recompile()

"""``export_onnx``: a converted int8 network as QDQ ONNX (QuantizeLinear / DequantizeLinear around float ops),
built with the ``onnx`` helper API (opset 17). Activation tensors are uint8 with the same grids as pyquant's
int8 path; weights are int8 initializers with per-output-channel scales (DequantizeLinear ``axis=0``); biases are
int32 on the scale ``x_scale * w_scale`` (the form ONNX Runtime fuses into QLinearConv / QLinearMatMul).
Every fx node's final output tensor carries the node's name, so the codes of each activation quantizer can be
read back (``pyquant.int8`` model's ``quantizer_nodes`` give the names). Needs the ``onnx`` extra."""

from __future__ import annotations

import operator
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from pyquant._guards import check_input_fits, check_output_path, check_sample_shape
from pyquant.quant.quantizer import FakeQuantizer
from pyquant.int8.modules import Add, AvgPool2d, Conv2d, Dequantize, Grid, Linear, Quantize, relu6_code

OPSET = 17


class _Builder:
    def __init__(self, model: fx.GraphModule):
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper, self.TP = helper, numpy_helper, TensorProto
        self.model = model
        self.nodes: List = []
        self.inits: List = []
        self.counter = 0
        self.grid: Dict[str, Optional[Grid]] = {}  # fx node name -> grid of its tensor (None: float)

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: List[str], out: Optional[str] = None, **attrs) -> str:
        out = out or self.fresh(op_type)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    # grids -----------------------------------------------------------------------------------------
    def qparams(self, base: str, g: Grid):
        return (self.const(base + "_scale", np.array(g.scale, dtype=np.float32)),
                self.const(base + "_zp", np.array(g.zero_point, dtype=np.uint8)))

    def dq(self, x: str, g: Optional[Grid]) -> str:
        return x if g is None else self.op("DequantizeLinear", [x, *self.qparams(x, g)])

    def q(self, x: str, g: Grid, out: str, upper: Optional[int] = None) -> str:
        hi = g.qmax if upper is None else min(g.qmax, upper)
        if (g.qmin, hi) == (0, 255):
            return self.op("QuantizeLinear", [x, *self.qparams(out, g)], out)
        y = self.op("QuantizeLinear", [x, *self.qparams(out, g)])
        return self.op("Clip", [y, self.const(out + "_lo", np.array(g.qmin, dtype=np.uint8)),
                                self.const(out + "_hi", np.array(hi, dtype=np.uint8))], out)

    def epilogue(self, y: str, out_grid: Optional[Grid], relu: bool, relu6: bool, out: str) -> str:
        if out_grid is None:
            if relu6:
                y = self.op("Clip", [y, self.const(out + "_0", np.array(0, np.float32)),
                                     self.const(out + "_6", np.array(6, np.float32))])
            elif relu:
                y = self.op("Relu", [y])
            return self.op("Identity", [y], out)
        if relu or relu6:
            y = self.op("Relu", [y])  # ReLU6's upper bound is a clamp of the codes at the code of 6
        return self.q(y, out_grid, out, relu6_code(out_grid) if relu6 else None)

    # modules ---------------------------------------------------------------------------------------
    def weight_layer(self, m, x: str, out: str, conv: bool, residual: Optional[str] = None) -> str:
        xf = self.dq(x, m.in_grid)
        w_q = m.w_q.numpy()
        n = w_q.shape[0]
        w = self.op("DequantizeLinear", [self.const(out + "_w", w_q), self.const(out + "_w_scale", m.w_scale.numpy()),
                                         self.const(out + "_w_zp", np.zeros(n, np.int8))], axis=0)
        b_scale = (np.float32(m.in_grid.scale) * m.w_scale.numpy()).astype(np.float32)
        b_q = np.round(m.bias.numpy().astype(np.float64) / b_scale.astype(np.float64))
        b_q = np.clip(b_q, -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        b = self.op("DequantizeLinear", [self.const(out + "_b", b_q), self.const(out + "_b_scale", b_scale),
                                         self.const(out + "_b_zp", np.zeros(n, np.int32))], axis=0)
        if conv:
            kh, kw = w_q.shape[2:]
            ph, pw = m.padding
            y = self.op("Conv", [xf, w, b], kernel_shape=[kh, kw], strides=list(m.stride), pads=[ph, pw, ph, pw],
                        dilations=list(m.dilation), group=m.groups)
        else:
            y = self.op("Gemm", [xf, w, b], transB=1)
        if residual is not None:  # conv -> add fused in pyquant: the add, unfused, in ONNX
            y = self.op("Add", [y, self.dq(residual, m.residual_grid)])
        return self.epilogue(y, m.out_grid, m.relu, m.relu6, out)

    def module(self, node: fx.Node, m: nn.Module, ins: List[str]) -> Optional[Grid]:
        out = node.name
        if isinstance(m, Quantize):
            self.q(ins[0], m.grid, out)
            return m.grid
        if isinstance(m, Dequantize):
            self.op("DequantizeLinear", [ins[0], *self.qparams(out, m.grid)], out)
            return None
        if isinstance(m, (Conv2d, Linear)):
            # a fused residual may be the conv's own input (all_input_nodes lists it once): read it from the args
            residual = node.args[1].name if getattr(m, "residual_grid", None) is not None else None
            self.weight_layer(m, node.args[0].name, out, isinstance(m, Conv2d), residual)
            return m.out_grid
        if isinstance(m, Add):
            y = self.op("Add", [self.dq(ins[0], m.in_grids[0]), self.dq(ins[1], m.in_grids[1])])
            self.epilogue(y, m.out_grid, m.relu, m.relu6, out)
            return m.out_grid
        if isinstance(m, AvgPool2d):
            x = self.dq(ins[0], m.in_grid)
            if m.output_size is not None:
                if tuple(m.output_size) != (1, 1):
                    raise ValueError(f"export_onnx: node '{out}': adaptive average pooling to {m.output_size} "
                                     f"has no ONNX operator; only output_size 1 (GlobalAveragePool)")
                y = self.op("GlobalAveragePool", [x])
            else:
                ph, pw = m.padding
                y = self.op("AveragePool", [x], kernel_shape=list(m.kernel_size),
                            strides=list(m.stride or m.kernel_size), pads=[ph, pw, ph, pw],
                            ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad))
            self.epilogue(y, m.out_grid, False, False, out)
            return m.out_grid
        grid = self.grid.get(node.args[0].name) if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(m, (nn.Identity, nn.Dropout)):
            self.op("Identity", [ins[0]], out)
        elif isinstance(m, nn.Flatten):
            self._flatten(ins[0], m.start_dim, m.end_dim, out, node)
        elif isinstance(m, nn.MaxPool2d):
            self._max_pool(ins[0], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, out, node)
        elif isinstance(m, nn.ReLU) and grid is None:
            self.op("Relu", [ins[0]], out)
        else:
            raise ValueError(f"export_onnx: node '{out}' ({type(m).__name__}) has no ONNX mapping")
        return grid

    def _flatten(self, x, start, end, out, node):
        if end != -1:
            raise ValueError(f"export_onnx: node '{node.name}': flatten with end_dim={end} is not supported")
        self.op("Flatten", [x], out, axis=start)

    def _max_pool(self, x, k, s, p, d, ceil, out, node):
        pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
        k, p, d = pair(k), pair(p), pair(d)
        s = k if s is None or s == [] else pair(s)
        self.op("MaxPool", [x], out, kernel_shape=k, strides=s, pads=[p[0], p[1], p[0], p[1]], dilations=d,
                ceil_mode=int(ceil))

    def function(self, node: fx.Node, ins: List[str]) -> None:
        out, t = node.name, node.target
        args = list(node.args)
        if node.op == "call_method":
            if t == "contiguous":
                self.op("Identity", [ins[0]], out)
            elif t in ("flatten",):
                self._flatten(ins[0], args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0), -1, out, node)
            else:
                raise ValueError(f"export_onnx: node '{out}' (method {t}) has no ONNX mapping")
            return
        if t is torch.flatten:
            self._flatten(ins[0], args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0),
                          args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1), out, node)
        elif t is F.max_pool2d:
            kw = dict(zip(["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"], args))
            kw.update(node.kwargs)
            self._max_pool(ins[0], kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), kw.get("dilation", 1),
                           kw.get("ceil_mode", False), out, node)
        elif t is F.pad:
            pad = list(args[1] if len(args) > 1 else node.kwargs["pad"])
            value = node.kwargs.get("value", args[3] if len(args) > 3 else 0.0) or 0.0
            rank = 4
            begins, ends = [0] * rank, [0] * rank
            for i in range(len(pad) // 2):  # torch: last dimension first
                begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
            g = self.grid.get(args[0].name)
            cval = np.array(value, dtype=np.uint8 if g is not None else np.float32)
            self.op("Pad", [ins[0], self.const(out + "_pads", np.array(begins + ends, np.int64)),
                            self.const(out + "_value", cval)], out, mode="constant")
        elif t is operator.getitem:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            starts, ends, axes, steps = [], [], [], []
            for axis, sl in enumerate(index):
                if not isinstance(sl, slice):
                    raise ValueError(f"export_onnx: node '{out}': indexing with {sl!r} is not supported")
                if sl == slice(None):
                    continue
                step = sl.step or 1
                starts.append(sl.start or 0)
                ends.append(sl.stop if sl.stop is not None else 2 ** 62)
                axes.append(axis)
                steps.append(step)
            arrs = [np.array(v, np.int64) for v in (starts, ends, axes, steps)]
            self.op("Slice", [ins[0], *(self.const(out + f"_s{i}", a) for i, a in enumerate(arrs))], out)
        elif t in (F.relu, torch.relu) and self.grid.get(args[0].name) is None:
            self.op("Relu", [ins[0]], out)
        else:
            raise ValueError(f"export_onnx: node '{out}' ({getattr(t, '__name__', t)}) has no ONNX mapping")

    def build(self, input_shape, output_ranks):
        h, TP = self.helper, self.TP
        inputs, outputs = [], []
        for node in self.model.graph.nodes:
            ins = [a.name for a in node.all_input_nodes]
            if node.op == "placeholder":
                inputs.append(h.make_tensor_value_info(node.name, TP.FLOAT, ["N", *input_shape]))
                self.grid[node.name] = None
            elif node.op == "output":
                res = node.args[0]
                res = res if isinstance(res, (tuple, list)) else [res]
                for i, r in enumerate(res):
                    if self.grid.get(r.name) is not None:
                        raise ValueError(f"export_onnx: output '{r.name}' is uint8 codes; convert dequantizes outputs")
                    dims = ["N"] + [f"d{i}_{j}" for j in range(1, output_ranks[i])]
                    outputs.append(h.make_tensor_value_info(self.op("Identity", [r.name], f"output_{i}"),
                                                            TP.FLOAT, dims))
            elif node.op == "call_module":
                self.grid[node.name] = self.module(node, self.model.get_submodule(node.target), ins)
            elif node.op in ("call_function", "call_method"):
                self.function(node, ins)
                first = node.all_input_nodes[0].name if node.all_input_nodes else None
                self.grid[node.name] = self.grid.get(first)
            else:
                raise ValueError(f"export_onnx: node '{node.name}' ({node.op}) has no ONNX mapping")
        graph = h.make_graph(self.nodes, "pyquant_int8", inputs, outputs, self.inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="pyquant")
        model.ir_version = 8
        return model


def export_onnx(model: fx.GraphModule, path: str, input_shape=(3, 32, 32)) -> None:
    """Writes the converted int8 ``model`` (from :func:`pyquant.int8.convert`) to ``path`` as QDQ ONNX (opset 17)
    with a float32 input ``[N, *input_shape]`` and float32 outputs ``output_0``, ... .

    ONNX Runtime fuses the QDQ pattern into its integer kernels (QLinearConv / QGemm, uint8 x int8). On x86 CPUs
    without VNNI those sum pairs of products in int16 with saturation, so its results there can drift from
    pyquant's (first conv's codes 94 % equal on an AVX2-only EPYC, 99.97 % with ORT's graph optimizations off;
    docs/int8.md); with VNNI or AMX they are exact."""
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("export_onnx needs the onnx package: pip install 'pyquant[onnx]'") from err
    if not isinstance(model, fx.GraphModule):
        raise TypeError(f"export_onnx: model must be the GraphModule from pyquant.int8.convert, "
                        f"got {type(model).__name__}")
    if any(isinstance(m, FakeQuantizer) for m in model.modules()):
        raise TypeError("export_onnx: model is a fake-quant network; pass the result of pyquant.int8.convert(model)")
    path = check_output_path("export_onnx", path)
    shape = check_sample_shape(input_shape)
    check_input_fits(model, shape)
    with torch.no_grad():
        ys = model(torch.zeros((1, *shape)))
    ranks = [y.dim() for y in (ys if isinstance(ys, (tuple, list)) else [ys])]
    proto = _Builder(model).build(shape, ranks)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)

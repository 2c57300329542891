"""``save`` / ``load`` of fake-quant networks (the GraphModule :func:`pyquant.quantize` returns): one safetensors
file holding every tensor under its state-dict name (float weights, SQuant's ``weight_fp``, quantizer scales and
zero-points) with a JSON manifest in its metadata: the torch.fx graph node by node (encoded as for
:mod:`pyquant.int8.serialize`) and each module's plain attributes. No pickle: modules are rebuilt only as
pyquant.quant modules (QuantConv2d, QuantLinear, FakeQuantizer) or ``torch.nn`` classes, functions are resolved only
inside ``torch``, ``torch.nn.functional`` and ``operator``. A loaded model computes bit-identical outputs, so
``pyquant eval`` reproduces the accuracy ``pyquant quantize`` measured."""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, Optional

import torch
from torch import fx, nn

from pyquant._guards import check_output_path
from pyquant.int8.serialize import _PLAIN, _decode, _encode, decode_graph, encode_graph
from pyquant.quant.modules import QuantConv2d, QuantLinear
from pyquant.quant.quantizer import FakeQuantizer
from pyquant.quant.spec import QuantSpec

FORMAT = "pyquant.fake_quant"
VERSION = 1
METADATA_KEY = "pyquant.fake_quant"
QUANT_MODULES = {c.__name__: c for c in (QuantConv2d, QuantLinear, FakeQuantizer)}
# GraphModule attributes pyquant.quantize sets that later steps read (the report and int8 conversion)
GRAPH_ATTRIBUTES = ("act_quantizer_sites", "relu6_replaced")
_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # nn.Module's own bookkeeping, rebuilt by nn.Module.__init__


def _attr_value(owner: str, key: str, value):
    if isinstance(value, QuantSpec):
        return {"quantspec": _encode({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})}
    if isinstance(value, _PLAIN + (tuple, list, dict)):
        return _encode(value)
    raise ValueError(f"save: module '{owner}' attribute {key!r} ({type(value).__name__}) cannot be stored")


def _module_entry(name: str, m: nn.Module, tensors: Dict[str, torch.Tensor]) -> dict:
    kind = type(m).__name__
    if QUANT_MODULES.get(kind) is not type(m) and not (type(m) is nn.Module or getattr(nn, kind, None) is type(m)):
        raise ValueError(f"save: module '{name}' ({type(m).__module__}.{kind}) is neither a pyquant.quant module nor "
                         f"a torch.nn module")
    prefix = f"{name}." if name else ""
    params, buffers = {}, {}
    for k, p in m._parameters.items():
        params[k] = None if p is None else {"requires_grad": p.requires_grad}
        if p is not None:
            tensors[prefix + k] = p.detach().cpu().contiguous().clone()
    for k, b in m._buffers.items():
        buffers[k] = None if b is None else {"persistent": k not in m._non_persistent_buffers_set}
        if b is not None:
            tensors[prefix + k] = b.detach().cpu().contiguous().clone()
    attrs = {k: _attr_value(name, k, v) for k, v in vars(m).items() if k not in _MODULE_INTERNALS}
    return {"type": kind, "attrs": attrs, "parameters": params, "buffers": buffers}


def save(model: fx.GraphModule, path: str, metadata: Optional[dict] = None) -> None:
    """Writes the fake-quant ``model`` (from :func:`pyquant.quantize`) to ``path``; ``metadata`` (JSON-able, e.g.
    the recipe and bit-widths) is stored beside the graph. Raises ValueError for a module or attribute that
    cannot be stored without pickle (nothing is written then)."""
    from safetensors.torch import save_file

    if not isinstance(model, fx.GraphModule):
        raise TypeError(f"save: model must be the GraphModule from pyquant.quantize, got {type(model).__name__}")
    path = check_output_path("save", path)
    tensors: Dict[str, torch.Tensor] = {}
    # every module, parents before children (named_modules' order), so load can attach each to its parent
    modules = {name: _module_entry(name, m, tensors) for name, m in model.named_modules() if name}
    nodes = encode_graph(model, lambda target: None)
    for n in model.graph.nodes:
        if n.op == "get_attr" and n.target not in tensors:
            value = model
            for part in n.target.split("."):
                value = getattr(value, part)
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"save: get_attr node '{n.name}' reads a {type(value).__name__}, not a tensor")
            tensors[n.target] = value.detach().cpu().contiguous().clone()
    manifest = {"format": FORMAT, "version": VERSION, "modules": modules, "nodes": nodes,
                "attributes": {k: _encode(getattr(model, k)) for k in GRAPH_ATTRIBUTES if hasattr(model, k)},
                "metadata": metadata or {}}
    save_file(tensors, path, metadata={METADATA_KEY: json.dumps(manifest, default=float)})


def _attr_decode(value):
    if isinstance(value, dict) and "quantspec" in value:
        return QuantSpec(**_decode(value["quantspec"], {}))
    return _decode(value, {})


def _build_module(name: str, e: dict, tensors: Dict[str, torch.Tensor]) -> nn.Module:
    cls = QUANT_MODULES.get(e["type"]) or (nn.Module if e["type"] == "Module" else getattr(nn, e["type"], None))
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"load: unknown module type {e['type']!r} for '{name}'")
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for k, v in e["attrs"].items():
        object.__setattr__(m, k, _attr_decode(v))
    prefix = f"{name}." if name else ""
    for k, spec in e["parameters"].items():
        m.register_parameter(k, None if spec is None else
                             nn.Parameter(tensors[prefix + k], requires_grad=spec["requires_grad"]))
    for k, spec in e["buffers"].items():
        m.register_buffer(k, None if spec is None else tensors[prefix + k],
                          persistent=True if spec is None else spec["persistent"])
    return m


def read_metadata(path: str) -> dict:
    """The manifest stored in ``path`` by :func:`save` (ValueError when there is none)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if METADATA_KEY not in meta or "nodes" not in json.loads(meta[METADATA_KEY]):
        raise ValueError(f"load: {path} holds no fake-quant graph (written by pyquant.quant.serialize.save)")
    manifest = json.loads(meta[METADATA_KEY])
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"load: {path} is format {manifest.get('format')} v{manifest.get('version')}, expected "
                         f"{FORMAT} v{VERSION}")
    return manifest


def load(path: str) -> fx.GraphModule:
    """The fake-quant model written to ``path`` by :func:`save`, in eval mode (nothing is unpickled)."""
    from safetensors import safe_open

    manifest = read_metadata(path)
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    root = nn.Module()
    for name, e in manifest["modules"].items():
        parent, _, leaf = name.rpartition(".")
        root.get_submodule(parent).add_module(leaf, _build_module(name, e, tensors))
    for n in manifest["nodes"]:
        if n["op"] == "get_attr" and n["target"] in tensors:
            owner_name, _, leaf = n["target"].rpartition(".")
            try:
                owner = root.get_submodule(owner_name)
            except AttributeError:
                raise ValueError(f"load: get_attr target {n['target']!r} has no owner module") from None
            if not hasattr(owner, leaf):
                owner.register_buffer(leaf, tensors[n["target"]])
    graph = decode_graph(manifest["nodes"], ops=("placeholder", "call_module", "call_method", "call_function",
                                                 "get_attr"))
    out = fx.GraphModule(root, graph, "FakeQuantModel")
    for k, v in manifest.get("attributes", {}).items():
        setattr(out, k, _decode(v, {}))
    return out.eval()

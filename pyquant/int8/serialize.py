"""``save`` / ``load`` of converted int8 networks: one safetensors file holding every tensor (int8 weights, scales,
biases) with a JSON manifest in its metadata (the graph, node by node, and each module's config). No pickle:
functions are stored by qualified name and resolved only inside ``torch``, ``torch.nn.functional`` and
``operator``; modules are pyquant.int8 modules or parameter-free ``torch.nn`` modules rebuilt from plain attributes.
Weights are repacked on load (packing is deterministic), so a loaded model's outputs are bit-identical."""

from __future__ import annotations

import importlib
import json
import operator
import os
from typing import Any, Dict

import torch
from torch import fx, nn

from pyquant._guards import check_output_path
from pyquant.int8.modules import INT8_MODULES

FORMAT = "pyquant.int8"
VERSION = 1
_FUNCTION_MODULES = {"torch": torch, "torch.nn.functional": torch.nn.functional, "operator": operator,
                     "_operator": operator}
_PLAIN = (int, float, bool, str, type(None))


def _function_name(fn) -> str:
    for key, m in _FUNCTION_MODULES.items():
        name = getattr(fn, "__name__", None)
        if name and getattr(m, name, None) is fn:
            return f"{'operator' if key == '_operator' else key}:{name}"
        for name, value in vars(m).items():  # wrappers such as F.max_pool2d carry another __name__
            if value is fn and not name.startswith("_"):
                return f"{'operator' if key == '_operator' else key}:{name}"
    raise ValueError(f"save: function {fn!r} is not in torch, torch.nn.functional or operator; cannot store it")


def _resolve_function(spec: str):
    mod, _, name = spec.partition(":")
    if mod not in _FUNCTION_MODULES or not name.isidentifier():
        raise ValueError(f"load: refusing to resolve function {spec!r}")
    fn = getattr(_FUNCTION_MODULES[mod], name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"load: no function {spec!r}")
    return fn


def _encode(a) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, slice):
        return {"slice": [_encode(a.start), _encode(a.stop), _encode(a.step)]}
    if a is Ellipsis:
        return {"ellipsis": True}
    if isinstance(a, tuple):
        return {"tuple": [_encode(x) for x in a]}
    if isinstance(a, list):
        return [_encode(x) for x in a]
    if isinstance(a, dict):
        return {"dict": {k: _encode(v) for k, v in a.items()}}
    if isinstance(a, torch.dtype):
        return {"dtype": str(a).replace("torch.", "")}
    if isinstance(a, _PLAIN):
        return a
    raise ValueError(f"save: cannot store argument {a!r} ({type(a).__name__})")


def _decode(a, nodes: Dict[str, fx.Node]):
    if isinstance(a, list):
        return [_decode(x, nodes) for x in a]
    if isinstance(a, dict):
        if "node" in a:
            if a["node"] not in nodes:
                raise ValueError(f"load: the manifest refers to node {a['node']!r} before (or without) defining it")
            return nodes[a["node"]]
        if "slice" in a:
            return slice(*(_decode(x, nodes) for x in a["slice"]))
        if "ellipsis" in a:
            return Ellipsis
        if "tuple" in a:
            return tuple(_decode(x, nodes) for x in a["tuple"])
        if "dict" in a:
            return {k: _decode(v, nodes) for k, v in a["dict"].items()}
        if "dtype" in a:
            dt = getattr(torch, a["dtype"], None)
            if not isinstance(dt, torch.dtype):
                raise ValueError(f"load: unknown dtype {a['dtype']!r}")
            return dt
        raise ValueError(f"load: malformed argument {a!r}")
    return a


def _module_entry(name: str, m: nn.Module, tensors: Dict[str, torch.Tensor]) -> dict:
    kind = type(m).__name__
    if INT8_MODULES.get(kind) is type(m):
        for k, t in m.tensors().items():
            tensors[f"{name}.{k}"] = t.contiguous()
        return {"kind": "int8", "type": kind, "config": m.config()}
    if type(m).__module__.startswith("torch.nn.modules") and getattr(nn, kind, None) is type(m) and \
            not any(True for _ in m.parameters()) and not any(True for _ in m.buffers()):
        attrs = {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}
        bad = [k for k, v in attrs.items() if not isinstance(v, _PLAIN + (tuple, list))]
        if bad:
            raise ValueError(f"save: module '{name}' ({kind}) has attributes {bad} that cannot be stored")
        return {"kind": "torch.nn", "type": kind, "attrs": {k: _encode(v) for k, v in attrs.items()}}
    raise ValueError(f"save: module '{name}' ({kind}) is neither a pyquant.int8 module nor a parameter-free "
                     f"torch.nn module")


def encode_graph(model: fx.GraphModule, module_entry) -> list:
    """The nodes of ``model.graph`` as JSON-able entries; ``module_entry(target)`` is called once per
    ``call_module`` target (pyquant.quant.serialize stores fake-quant graphs the same way)."""
    seen, nodes = set(), []
    for node in model.graph.nodes:
        entry = {"name": node.name, "op": node.op, "args": _encode(node.args), "kwargs": _encode(dict(node.kwargs))}
        if node.op == "call_function":
            entry["target"] = _function_name(node.target)
        elif node.op in ("call_module", "call_method", "placeholder", "get_attr"):
            entry["target"] = node.target
            if node.op == "call_module" and node.target not in seen:
                seen.add(node.target)
                module_entry(node.target)
        elif node.op == "output":
            entry["target"] = "output"
        else:
            raise ValueError(f"save: node '{node.name}' ({node.op}) cannot be stored")
        nodes.append(entry)
    return nodes


def decode_graph(entries: list, ops=("placeholder", "call_module", "call_method", "call_function")) -> fx.Graph:
    """The fx.Graph of :func:`encode_graph`'s ``entries``; node kinds outside ``ops`` are refused."""
    graph = fx.Graph()
    nodes: Dict[str, fx.Node] = {}
    for e in entries:
        args, kwargs = _decode(e["args"], nodes), _decode(e["kwargs"], nodes)
        if e["op"] == "output":
            graph.output(args[0])
            continue
        if e["op"] not in ops:
            raise ValueError(f"load: bad node kind {e['op']!r}")
        target = _resolve_function(e["target"]) if e["op"] == "call_function" else e["target"]
        nodes[e["name"]] = graph.create_node(e["op"], target, tuple(args), kwargs, name=e["name"])
    return graph


def save(model: fx.GraphModule, path: str) -> None:
    """Writes ``model`` (from :func:`pyquant.int8.convert`) to ``path`` (safetensors with a JSON manifest)."""
    from safetensors.torch import save_file

    if not isinstance(model, fx.GraphModule):
        raise TypeError(f"save: model must be the GraphModule from pyquant.int8.convert, got {type(model).__name__}")
    if any(n.op == "get_attr" for n in model.graph.nodes):
        raise ValueError("save: the int8 graph has get_attr nodes, which cannot be stored")
    path = check_output_path("save", path)
    tensors: Dict[str, torch.Tensor] = {}
    modules = {}

    def module_entry(target):
        modules[target] = _module_entry(target, model.get_submodule(target), tensors)

    nodes = encode_graph(model, module_entry)
    manifest = {"format": FORMAT, "version": VERSION, "modules": modules, "nodes": nodes,
                "quantizer_nodes": dict(getattr(model, "quantizer_nodes", {}))}
    save_file(tensors, path, metadata={"pyquant.int8": json.dumps(manifest)})


def load(path: str) -> fx.GraphModule:
    """A converted int8 model from a file written by :func:`save` (nothing is unpickled)."""
    from safetensors import safe_open

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load: path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no such file: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a corrupt header or payload
        raise ValueError(f"load: {path} is not a readable safetensors file ({type(err).__name__}: {err})") from err
    if "pyquant.int8" not in meta:
        raise ValueError(f"load: {path} has no pyquant.int8 manifest")
    try:
        manifest = json.loads(meta["pyquant.int8"])
    except json.JSONDecodeError as err:
        raise ValueError(f"load: {path} has a corrupt pyquant.int8 manifest ({err})") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"load: {path} has a corrupt pyquant.int8 manifest (not a JSON object)")
    try:
        return _build(manifest, tensors, path)
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"load: {path} has an incomplete or corrupt manifest ({type(err).__name__}: {err})") from err


def _build(manifest: dict, tensors: Dict[str, torch.Tensor], path: str) -> fx.GraphModule:
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"load: {path} is format {manifest.get('format')} v{manifest.get('version')}, expected "
                         f"{FORMAT} v{VERSION}")
    root = nn.Module()
    for name, e in manifest["modules"].items():
        if e["kind"] == "int8":
            cls = INT8_MODULES.get(e["type"])
            if cls is None:
                raise ValueError(f"load: unknown int8 module type {e['type']!r}")
            own = {k[len(name) + 1:]: t for k, t in tensors.items() if k.startswith(name + ".")}
            try:
                m = cls.from_config(e["config"], own)
            except KeyError as err:
                raise ValueError(f"load: module {name!r} ({e['type']}) in {path} misses {err.args[0]!r} "
                                 f"(a tensor or a config entry)") from err
        else:
            cls = getattr(nn, e["type"], None)
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise ValueError(f"load: unknown torch.nn module {e['type']!r}")
            m = cls.__new__(cls)
            nn.Module.__init__(m)
            for k, v in e["attrs"].items():
                setattr(m, k, _decode(v, {}))
        root.add_module(name, m)
    out = fx.GraphModule(root, decode_graph(manifest["nodes"]), "Int8Model")
    out.quantizer_nodes = dict(manifest.get("quantizer_nodes", {}))
    return out.eval()

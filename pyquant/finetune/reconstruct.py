"""Block reconstruction of a fake-quant network: BRECQ (Li et al., ICLR 2021) with Genie-M's learned
weight step (Jeon et al., CVPR 2023) and QDrop (Wei et al., ICLR 2022).

The network (a :func:`pyquant.quant.prepare`-d torch.fx GraphModule, weights and activations already
calibrated) is cut into blocks where exactly one tensor is live in its graph: a residual block is one
block (its shortcut keeps two tensors live inside it), a plain stack is cut after every layer. Blocks
are reconstructed in order. For block k, its input in the quantized network (blocks < k already
reconstructed) and the FP32 network's output of block k are cached once for all samples; then

    min ||block_q(x_q) - block_fp(x_fp)||^2 (sum over features, mean over the batch)
        + lambda * sum_i (1 - |2 h(V_i) - 1|^beta)                        (AdaRound, Nagel et al. 2020, eq. 24)

over the weights' rounding logits V, each layer's per-channel weight step (Genie-M) and each activation
quantizer's step (LSQ, on ``ops.fake_quant_lsq``). Weights are ``s * clip(floor(w / s0) + h(V), qmin, qmax)``
with the rectified sigmoid ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, zeta = 1.1,
gamma = -0.1 (AdaRound eq. 23), V initialised so that h(V) = w/s0 - floor(w/s0). beta anneals linearly
20 -> 2 after a warm-up (20 % of the iterations) without the regularizer. QDrop: during reconstruction
every activation quantizer of the block passes each element in FP32 with probability ``qdrop_p`` (inside the LSQ
kernel: ``ops.fake_quant_lsq_qdrop``).
At the end of a block the rounding is made hard (V >= 0), the weight replaced by its on-grid values
(``set_rounded_weight``) and the learned steps written into the ordinary FakeQuantizers, so the result is
an ordinary fake-quant network (``pyquant.int8.convert`` runs it).

Steps are learned as ``s = s0 * m`` (m initialised to 1): one learning rate fits every layer's scale.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor, fx, nn

from pyquant import ops
from pyquant._guards import any_grad_mode
from pyquant.finetune.augment import with_views
from pyquant.quant import graph as qgraph
from pyquant.quant.modules import QUANT_LAYERS
from pyquant.quant.quantizer import FakeQuantizer

ZETA, GAMMA = 1.1, -0.1
CHECKPOINT = "reconstruct.pt"


class ReconstructionError(FloatingPointError):
    """A block's loss became NaN/Inf; the model keeps the last good state (blocks before it done)."""


@dataclass
class Block:
    """A segment of the graph between two points where one tensor is live."""

    index: int
    name: str
    nodes: List[fx.Node]
    input: fx.Node
    output: fx.Node
    layers: List[str] = field(default_factory=list)
    act_quantizers: List[str] = field(default_factory=list)


def blocks(qm: fx.GraphModule) -> List[Block]:
    """The reconstruction units of ``qm``: residual blocks, single layers of plain stacks; every unit
    holds at least one QuantConv2d/QuantLinear (weight-free segments join the next unit)."""
    nodes = [n for n in qm.graph.nodes if n.op != "output"]
    pos = {n: i for i, n in enumerate(nodes)}
    out_node = next(n for n in qm.graph.nodes if n.op == "output")
    last_use = {n: max([pos.get(u, len(nodes)) for u in n.users] or [pos[n]]) for n in nodes}
    if len([n for n in nodes if n.op == "placeholder"]) != 1 or not isinstance(out_node.args[0], fx.Node):
        raise ValueError("reconstruct: the model must have one input tensor and one output tensor")
    cuts = []
    for i, n in enumerate(nodes):
        live = [m for m in nodes[: i + 1] if last_use[m] > i]
        if len(live) == 1 and live[0] is n:
            cuts.append(i)
    if cuts[-1] != len(nodes) - 1:
        raise ValueError("reconstruct: the output node is not a cut point")
    segments = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        segments.append((nodes[a], nodes[a + 1:b + 1]))
    units, pending = [], None
    for inp, seg in segments:
        if pending is not None:
            inp, seg = pending[0], pending[1] + seg
        layers = [n.target for n in seg if n.op == "call_module" and isinstance(qm.get_submodule(n.target), QUANT_LAYERS)]
        if not layers:
            pending = (inp, seg)
            continue
        pending = None
        units.append((inp, seg, layers))
    if pending is not None and units:  # weight-free tail (e.g. a final softmax): joins the last unit
        inp, seg, layers = units.pop()
        units.append((inp, seg + pending[1], layers))
    result = []
    for k, (inp, seg, layers) in enumerate(units):
        aqs = [n.target for n in seg if n.op == "call_module" and isinstance(qm.get_submodule(n.target), FakeQuantizer)]
        prefix = os.path.commonprefix([l.split(".") for l in layers])
        name = ".".join(prefix) if prefix else layers[0]
        result.append(Block(k, name, seg, inp, seg[-1], layers, aqs))
    return result


def _block_module(qm: fx.GraphModule, block: Block) -> fx.GraphModule:
    g = fx.Graph()
    env = {block.input: g.placeholder("x")}
    for n in block.nodes:
        missing = [a for a in n.all_input_nodes if a not in env]
        if missing:
            raise ValueError(f"reconstruct: block {block.name} reads {missing[0].name} from outside its input")
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(env[block.output])
    return fx.GraphModule(qm, g)


class AdaRoundWeight(nn.Module):
    """AdaRound soft rounding with a learned per-channel step (Genie-M), in place of a layer's
    weight quantizer during reconstruction. ``fp`` = pass the float weight through (FP32 targets)."""

    def __init__(self, quantizer: FakeQuantizer, weight: Tensor, rounded: Optional[Tensor] = None):
        super().__init__()
        self.qmin, self.qmax = quantizer.qmin, quantizer.qmax
        shape = [-1] + [1] * (weight.dim() - 1)
        s0 = quantizer.scale.detach().reshape(shape).clone()
        self.register_buffer("s0", s0)
        self.register_buffer("weight_float", weight.detach().clone())
        self.register_buffer("floor", torch.floor(weight.detach() / s0))
        rest = (weight.detach() / s0 - self.floor).clamp(1e-4, 1 - 1e-4)
        if rounded is not None:
            # start from the layer's own rounding (e.g. SQuant's): where it rounded the other way than the
            # nearest level, h(V) starts mirrored about 1/2, so the hard rounding at iteration 0 is that one
            up = torch.round(rounded.detach() / s0) - self.floor
            flipped = ((up == 1) & (rest < 0.5)) | ((up == 0) & (rest > 0.5))
            rest = torch.where(flipped, 1 - rest, rest)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))  # h(V) = rest
        self.step_mult = nn.Parameter(torch.ones_like(s0))
        self.fp = False
        self.hard = False

    def h(self) -> Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def regularizer(self, beta: float) -> Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def step(self) -> Tensor:
        return self.s0 * self.step_mult

    def forward(self, w: Tensor) -> Tensor:
        if self.fp:
            return self.weight_float
        frac = (self.v >= 0).to(w.dtype) if self.hard else self.h()
        return self.step() * torch.clamp(self.floor + frac, self.qmin, self.qmax)


def _quantize_activation(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, grad_factor: float,
                         drop_p: float, generator: Optional[torch.Generator]) -> Tensor:
    """LSQ fake quantization of an activation; with ``drop_p > 0`` QDrop passes each element in FP32 with
    probability ``drop_p``, both in one kernel (``ops.fake_quant_lsq_qdrop``). The mask's seed is drawn
    from ``generator`` on every call, so masks are fresh per iteration and reproducible under
    reconstruct's seed (resuming from a checkpoint replays them). bench/bench_reconstruct.py swaps this
    function for the eager and ATen variants."""
    if drop_p > 0:
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator, device=generator.device))
        return ops.fake_quant_lsq_qdrop(x, scale, zero_point, qmin, qmax, None, grad_factor, drop_p=drop_p,
                                        seed=seed)
    return ops.fake_quant_lsq(x, scale, zero_point, qmin, qmax, None, grad_factor)


class _LearnedActivation(nn.Module):
    """An activation FakeQuantizer's grid with an LSQ-learned step and QDrop (:func:`_quantize_activation`)."""

    def __init__(self, quantizer: FakeQuantizer, qdrop_p: float, generator: torch.Generator):
        super().__init__()
        self.quantizer = quantizer
        self.register_buffer("s0", quantizer.scale.detach().clone())
        self.step_mult = nn.Parameter(torch.ones_like(self.s0))
        self.qdrop_p, self.generator = qdrop_p, generator
        self.fp = False
        self.drop = False
        self.tied = False  # a tied quantizer's stand-in: its step is its source's (not a parameter of its own)

    def forward(self, x: Tensor) -> Tensor:
        if self.fp:
            return x
        q = self.quantizer
        return _quantize_activation(x, self.s0 * self.step_mult, q.zero_point, q.qmin, q.qmax,
                                    ops.lsq_grad_factor(x[0].numel(), q.qmax), self.qdrop_p if self.drop else 0.0,
                                    self.generator)


def _run(module: nn.Module, x: Tensor, batch_size: int, overrides: Optional[Dict[str, Tensor]] = None) -> Tensor:
    """``module`` on ``x`` in batches, without grad; ``overrides``: parameters replaced for the call."""
    def call(xb):
        return module(xb) if overrides is None else torch.func.functional_call(module, overrides, (xb,))

    with torch.no_grad():
        return torch.cat([call(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _state(qm: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in qm.state_dict().items()}


def _load_state(qm: nn.Module, state: Dict[str, Tensor]) -> None:
    layers = qgraph.quant_layers(qm)
    for name, m in layers.items():
        if name + ".weight_fp" in state and getattr(m, "weight_fp", None) is None:
            m.set_rounded_weight(state[name + ".weight"])
    qm.load_state_dict(state)
    for q in qgraph.act_quantizers(qm).values():
        q.set_qparams(q.scale, q.zero_point)  # marks calibrated / enabled
    for m in layers.values():
        m.weight_quantizer.set_qparams(m.weight_quantizer.scale, m.weight_quantizer.zero_point)


@any_grad_mode
def reconstruct(qm: fx.GraphModule, data: Tensor, *, iterations: int = 500, batch_size: int = 32,
                lr_rounding: float = 1e-3, lr_weight_step: float = 1e-3, lr_act_step: float = 1e-3,
                reg_weight: float = 1.0, beta=(20.0, 2.0), warmup: float = 0.2, qdrop_p: float = 0.5,
                learn_weight_step: bool = True, learn_act_step: bool = True, seed: int = 0,
                checkpoint_dir: Optional[str] = None, progress: bool = True, inplace: bool = False,
                fp_model: Optional[nn.Module] = None, views: int = 0,
                start_rounding: str = "nearest") -> fx.GraphModule:
    """Block reconstruction of the calibrated fake-quant network ``qm`` on ``data`` (module docstring).

    Returns the reconstructed network (a copy unless ``inplace``) with ``reconstruct_log`` (one dict per
    block: name, layers, first and final loss). ``checkpoint_dir``: after every block the network's
    state is saved there (``reconstruct.pt``, loaded with ``weights_only=True``); a rerun with the same
    arguments resumes after the last finished block and gives the same result as an uninterrupted run.
    Deterministic under ``seed``; runs in any grad mode. A NaN/Inf loss raises
    :class:`ReconstructionError` naming the block; the network keeps the blocks finished before it.
    ``fp_model``: the FP32 network the targets come from (the BN-folded float network ``qm`` was prepared from,
    same layer names); None: ``qm`` itself with its quantizers bypassed, which is that network only while no
    step (ABN, bias correction) has changed ``qm``'s float weights or biases.
    ``views``: reconstruct on ``data`` plus this many flipped and shifted copies of it
    (:func:`pyquant.finetune.augment.with_views`, image data only), drawn under ``seed``.
    ``start_rounding``: where AdaRound's soft rounding starts, ``"nearest"`` (AdaRound: h(V) = the fractional
    part) or ``"current"`` (the layer's stored rounding, e.g. SQuant's: h(V) mirrored about 1/2 where it
    differs from the nearest level; identical to ``"nearest"`` for a layer without one)."""
    # Gradients are needed whatever the caller's mode (any_grad_mode; inference-mode data are cloned)
    return _reconstruct(qm, data,
                        iterations=iterations, batch_size=batch_size, lr_rounding=lr_rounding,
                        lr_weight_step=lr_weight_step, lr_act_step=lr_act_step, reg_weight=reg_weight, beta=beta,
                        warmup=warmup, qdrop_p=qdrop_p, learn_weight_step=learn_weight_step,
                        learn_act_step=learn_act_step, seed=seed, checkpoint_dir=checkpoint_dir,
                        progress=progress, inplace=inplace, fp_model=fp_model, views=views,
                        start_rounding=start_rounding)


def _reconstruct(qm, data, *, iterations, batch_size, lr_rounding, lr_weight_step, lr_act_step, reg_weight, beta,
                 warmup, qdrop_p, learn_weight_step, learn_act_step, seed, checkpoint_dir, progress, inplace, fp_model,
                 views, start_rounding):
    if not isinstance(qm, fx.GraphModule):
        raise TypeError(f"reconstruct: qm must be a torch.fx.GraphModule from pyquant.quantize/prepare, got "
                        f"{type(qm).__name__}")
    if not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] < 1:
        raise ValueError("reconstruct: data must be a tensor of samples (N, ...) with N >= 1")
    for name, value in (("iterations", iterations), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"reconstruct: {name} must be a positive int, got {value!r}")
    if not 0.0 <= qdrop_p <= 1.0:
        raise ValueError(f"reconstruct: qdrop_p must be in [0, 1], got {qdrop_p}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"reconstruct: warmup must be in [0, 1), got {warmup}")
    if start_rounding not in ("nearest", "current"):
        raise ValueError(f"reconstruct: start_rounding must be 'nearest' or 'current', got {start_rounding!r}")
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise ValueError(f"reconstruct: views must be a non-negative int, got {views!r}")
    if views and data.dim() != 4:
        raise ValueError(f"reconstruct: views need image data (N, C, H, W), got shape {tuple(data.shape)}")
    qm = qm if inplace else copy.deepcopy(qm)
    units = blocks(qm)
    fp_layers = None
    if fp_model is not None:
        if not isinstance(fp_model, nn.Module):
            raise TypeError(f"reconstruct: fp_model must be a torch.nn.Module, got {type(fp_model).__name__}")
        fp_layers = dict(fp_model.named_modules())
        missing = [n for b in units for n in b.layers if not hasattr(fp_layers.get(n), "weight")]
        if missing:
            raise ValueError(f"reconstruct: fp_model has no layer {missing[0]!r} (it must be the float network qm "
                             f"was prepared from)")
    was_training = qm.training
    qm.eval()
    done, log = 0, []
    ckpt = os.path.join(checkpoint_dir, CHECKPOINT) if checkpoint_dir else None
    settings = dict(iterations=iterations, batch_size=batch_size, lr_rounding=lr_rounding, lr_weight_step=lr_weight_step,
                    lr_act_step=lr_act_step, reg_weight=reg_weight, beta=list(beta), warmup=warmup, qdrop_p=qdrop_p,
                    learn_weight_step=learn_weight_step, learn_act_step=learn_act_step, seed=seed, n=int(data.shape[0]),
                    views=views, start_rounding=start_rounding, blocks=[b.name for b in units])
    if ckpt and os.path.isfile(ckpt):
        saved = torch.load(ckpt, weights_only=True)
        if saved["settings"] != settings:
            raise ValueError(f"reconstruct: {ckpt} was written with other settings; use another checkpoint_dir")
        _load_state(qm, saved["state"])
        done, log = int(saved["done"]), list(saved["log"])
    data = with_views(data.detach(), views, seed)
    x_q, x_fp = data, data
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), initial=done, desc="reconstruct", unit="block")
    try:
        for block in units:
            sub = _block_module(qm, block)
            if block.index < done:  # finished earlier: only propagate the caches
                x_fp = _run_float(qm, sub, block, x_fp, batch_size, fp_layers)
                x_q = _run(sub, x_q, batch_size)
                continue
            good = _state(qm)
            try:
                entry, y_fp = _reconstruct_block(qm, sub, block, x_q, x_fp, iterations, batch_size, lr_rounding,
                                                 lr_weight_step, lr_act_step, reg_weight, beta, warmup, qdrop_p,
                                                 learn_weight_step, learn_act_step, seed, fp_layers,
                                                 start_rounding)
            except ReconstructionError:
                _load_state(qm, good)
                raise
            x_fp = y_fp
            x_q = _run(_block_module(qm, block), x_q, batch_size)
            log.append(entry)
            if ckpt:
                os.makedirs(checkpoint_dir, exist_ok=True)
                tmp = ckpt + ".tmp"
                torch.save({"done": block.index + 1, "state": _state(qm), "log": log, "settings": settings}, tmp)
                os.replace(tmp, ckpt)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(block=block.name, loss=f"{entry['final_loss']:.3g}")
    finally:
        if bar is not None:
            bar.close()
    qgraph.resolve_ties(qm)
    qm.train(was_training)
    qm.reconstruct_log = log
    return qm


def _swap(qm, block, qdrop_p, generator, start_rounding="nearest"):
    """Installs the learnable stand-ins; returns (weights, acts) dicts name -> stand-in."""
    weights, acts = {}, {}
    for name in block.layers:
        m = qm.get_submodule(name)
        weights[name] = AdaRoundWeight(m.weight_quantizer, m.float_weight(),
                                       m.weight if start_rounding == "current" else None)
        weights[name].original = m.weight_quantizer
        m.weight_quantizer = weights[name]
    for name in block.act_quantizers:
        q = qm.get_submodule(name)
        if getattr(q, "tied_to", None) is None and q.enabled:
            acts[name] = _LearnedActivation(q, qdrop_p, generator)
    for name in block.act_quantizers:
        q = qm.get_submodule(name)
        src = getattr(q, "tied_to", None)
        if src is not None and q.enabled:
            # A tied quantizer keeps its source's grid (int8 engines requantize pooling onto it). It needs a
            # stand-in too: it must pass FP32 through when the FP32 targets are computed, and, its source in
            # this block, share the source's learned step, so that the network trained is the one written back
            # (resolve_ties). A source in an earlier block is final: its step stays (step_mult is not learned).
            acts[name] = _LearnedActivation(q, qdrop_p, generator)
            acts[name].tied = True
            if src in acts and not acts[src].tied and (q.qmin, q.qmax) == (acts[src].quantizer.qmin,
                                                                          acts[src].quantizer.qmax):
                acts[name].step_mult = acts[src].step_mult
    for name, a in acts.items():
        setattr(qm, name, a)
    return weights, acts


def _restore(qm, weights, acts, finalize: bool):
    for name, w in weights.items():
        m = qm.get_submodule(name)
        fq = w.original
        m.weight_quantizer = fq
        if finalize:
            with torch.no_grad():
                w.hard = True
                step = w.step().reshape(-1)
                fq.set_qparams(step, torch.zeros_like(fq.zero_point))
                m.set_rounded_weight(w(m.weight))
    for name, a in acts.items():
        setattr(qm, name, a.quantizer)
        if finalize and not a.tied:
            a.quantizer.set_qparams((a.s0 * a.step_mult).detach(), a.quantizer.zero_point)
    if finalize:
        qgraph.resolve_ties(qm)  # tied quantizers (this block's or a later one's) follow the learned steps


def _run_float(qm, sub, block, x, batch_size, fp_layers=None):
    """The block in FP32: every quantizer bypassed; with ``fp_layers`` (name -> layer of the FP32 network), on
    that network's weights and biases (steps such as ABN change the quantized network's float ones)."""
    weights, acts = _swap(qm, block, 0.0, None)
    try:
        for s in list(weights.values()) + list(acts.values()):
            s.fp = True
        module = _block_module(qm, block)
        if fp_layers is None:
            return _run(module, x, batch_size)
        overrides = {}
        for name, w in weights.items():
            src, m = fp_layers[name], qm.get_submodule(name)
            w.weight_float = src.weight.detach()
            if m.bias is not None:
                overrides[name + ".bias"] = src.bias.detach() if src.bias is not None else torch.zeros_like(m.bias)
            elif src.bias is not None:
                raise ValueError(f"reconstruct: fp_model's {name} has a bias, the quantized layer has none")
        return _run(module, x, batch_size, overrides)
    finally:
        _restore(qm, weights, acts, finalize=False)


def _reconstruct_block(qm, sub, block, x_q, x_fp, iterations, batch_size, lr_rounding, lr_weight_step, lr_act_step,
                       reg_weight, beta, warmup, qdrop_p, learn_weight_step, learn_act_step, seed, fp_layers=None,
                       start_rounding="nearest"):
    y_fp = _run_float(qm, sub, block, x_fp, batch_size, fp_layers)
    generator = torch.Generator(device=x_q.device).manual_seed(seed * 100003 + block.index)
    weights, acts = _swap(qm, block, qdrop_p, generator, start_rounding)
    sub = _block_module(qm, block)
    groups = [{"params": [w.v for w in weights.values()], "lr": lr_rounding}]
    if learn_weight_step:
        groups.append({"params": [w.step_mult for w in weights.values()], "lr": lr_weight_step})
    learned_acts = [a for a in acts.values() if not a.tied]
    if learn_act_step and learned_acts:
        groups.append({"params": [a.step_mult for a in learned_acts], "lr": lr_act_step})
    opt = torch.optim.Adam(groups)
    for a in acts.values():
        a.drop = True
    warm = int(warmup * iterations)
    first = final = None
    ok = False
    try:
        with torch.enable_grad():
            for it in range(iterations):
                idx = torch.randint(0, x_q.shape[0], (min(batch_size, x_q.shape[0]),), generator=generator)
                out = sub(x_q[idx])
                rec = (out - y_fp[idx]).pow(2).flatten(1).sum(1).mean()
                loss = rec
                if it >= warm:
                    t = (it - warm) / max(1, iterations - warm)
                    b = beta[0] + (beta[1] - beta[0]) * t
                    loss = rec + reg_weight * sum(w.regularizer(b) for w in weights.values())
                if not bool(torch.isfinite(loss)):
                    raise ReconstructionError(f"reconstruct: block {block.name!r} (layers {block.layers}): loss is "
                                              f"{float(loss.detach())} at iteration {it}; the network keeps the "
                                              f"{block.index} block(s) finished before it")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p in [w.step_mult for w in weights.values()] + [a.step_mult for a in learned_acts]:
                        p.clamp_(min=1e-3)
                first = float(rec.detach()) if first is None else first
                final = float(rec.detach())
        ok = True
    finally:
        for a in acts.values():
            a.drop = False
        _restore(qm, weights, acts, finalize=ok)
    return {"block": block.name, "layers": block.layers, "first_loss": first, "final_loss": final}, y_fp

"""Knowledge-distillation fine-tuning of a fake-quant network on synthetic data, in the style of the
data-free quantization-aware-training lineage:

- GDFQ: Xu et al., "Generative Low-bitwidth Data Free Quantization", ECCV 2020 (eq. 8: the quantized
  network learns the full-precision one's softened outputs, KL, plus cross-entropy on the labels the data
  were made for; BN-statistic matching, eq. 5, on the synthetic data);
- IntraQ: Zhong et al., "IntraQ: Learning Synthetic Images with Intra-Class Heterogeneity for Zero-Shot
  Network Quantization", CVPR 2022 (fine-tuning: KL on logits + CE on the teacher's labels, fixed set);
- HAST: Li et al., "Hard Sample Matters a Lot in Zero-Shot Quantization", CVPR 2023 (KD fine-tuning with
  feature alignment on hard synthetic samples);
- SynQ: Kim et al., "SynQ: Accurate Zero-shot Quantization by Synthesis-aware Fine-tuning", ICLR 2025
  (KD with soft labels, section 4; 5k images, fixed set).

The FP32 network (the teacher; copied, never modified) teaches the quantized one (the student, a
:func:`pyquant.quant.prepare` / :func:`pyquant.quantize` GraphModule with calibrated quantizers) on the
synthetic inputs ``x``::

    L = kl_weight * T^2 * KL(softmax(t(x)/T) || softmax(s(x)/T))            (Hinton et al. 2015; GDFQ eq. 8)
      + ce_weight * CE(s(x), argmax t(x))                                  (IntraQ / HAST's hard labels)
      + bn_weight * sum_l ||mu_l(x) - beta_l||^2 + ||sigma_l(x) - |gamma_l|||^2   (BN statistics, GDFQ eq. 5)

where the last term is batch-mode BN-statistic alignment of the student's folded-BN layer outputs
against the trained BN statistics (``qm.bn_stats``), computed by the fused ``pyquant.ops.bn_stat_loss``.
Trained: the latent FP32 weights and biases, and learned quantizers from :mod:`pyquant.quant.learned`
in place of the calibrated ones: LSQ (Esser et al., ICLR 2020) per output channel on the weights and per
tensor on the activations, each initialised from the calibrated step and zero-point (not LSQ's
``2 mean|v| / sqrt(Q_P)``: the calibrated clip is the better start, as in the PTQ-then-QAT practice of
the lineage). At the end the learned steps are written into the ordinary FakeQuantizers, so the result
is an ordinary fake-quant network (``pyquant.int8.convert`` runs it).

The synthetic set is either fixed (a tensor) or refreshed each epoch (a callable ``epoch -> tensor``,
e.g. a generator run under a per-epoch seed).
"""

from __future__ import annotations

import copy
import math
import os
import time
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from pyquant import ops
from pyquant.finetune.augment import flip_and_shift
from pyquant.quant import graph as qgraph
from pyquant.quant.hooks import forward_hooks
from pyquant.quant.learned import LSQQuantizer

CHECKPOINT = "kd.pt"
OPTIMIZERS = ("adam", "sgd")


class KDError(FloatingPointError):
    """The KD loss became NaN/Inf. ``model``: the network in its last good state (the epochs finished
    before the failure, their learned steps written back)."""

    model: Optional[nn.Module] = None


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"kd_finetune: {name} must be a positive int, got {value!r}")
    return value


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"kd_finetune: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _lsq_like(fq, axis, numel_per_scale: int) -> LSQQuantizer:
    """An LSQ quantizer on exactly the calibrated grid of FakeQuantizer ``fq`` (same qmin/qmax, step and
    integer zero-point), so that training starts from the calibrated network's outputs."""
    lsq = LSQQuantizer(fq.bits, fq.qmin < 0, fq.scale.detach(), fq.zero_point.detach(), axis=axis,
                       numel_per_scale=numel_per_scale)
    lsq.qmin, lsq.qmax = fq.qmin, fq.qmax  # a symmetric calibrated grid may drop the lowest level
    return lsq


class _Learned:
    """The learned stand-ins installed in a student while it trains, and their removal."""

    def __init__(self, qm: fx.GraphModule, learn_weight_step: bool, learn_act_step: bool):
        self.qm = qm
        self.weights: Dict[str, LSQQuantizer] = {}
        self.acts: Dict[str, LSQQuantizer] = {}
        self.originals: Dict[str, nn.Module] = {}
        layers = qgraph.quant_layers(qm)
        for name, m in layers.items():
            fq = m.weight_quantizer
            if not fq.enabled:
                continue
            lsq = _lsq_like(fq, 0, m.weight[0].numel())
            lsq.scale.requires_grad_(learn_weight_step)
            self.originals[name] = fq
            m.weight_quantizer = lsq
            self.weights[name] = lsq
        aqs = qgraph.act_quantizers(qm)
        for name, fq in aqs.items():
            if fq.enabled and getattr(fq, "tied_to", None) is None:
                lsq = _lsq_like(fq, None, None)
                lsq.scale.requires_grad_(learn_act_step)
                self.acts[name] = lsq
        for name, fq in aqs.items():
            src = getattr(fq, "tied_to", None)
            if fq.enabled and src in self.acts:
                # A tied quantizer shares its source's grid (int8 engines requantize pooling onto it): it
                # shares the learned step too, so the trained network is the one that is written back.
                if (fq.qmin, fq.qmax) != (aqs[src].qmin, aqs[src].qmax):
                    continue
                self.acts[name] = self.acts[src]
        for name, lsq in self.acts.items():
            self.originals[name] = aqs[name]
            setattr(qm, name, lsq)

    def step_parameters(self) -> List[Tensor]:
        seen, params = set(), []
        for q in list(self.weights.values()) + list(self.acts.values()):
            if q.scale.requires_grad and id(q.scale) not in seen:
                seen.add(id(q.scale))
                params.append(q.scale)
        return params

    @torch.no_grad()
    def remove(self) -> None:
        """Puts the FakeQuantizers back with the learned steps; re-ties the tied ones."""
        for name, lsq in self.weights.items():
            m = self.qm.get_submodule(name)
            fq = self.originals[name]
            fq.set_qparams(lsq.scale.detach().clamp(min=1e-12), fq.zero_point)
            m.weight_quantizer = fq
        for name, lsq in self.acts.items():
            fq = self.originals[name]
            if getattr(fq, "tied_to", None) is None:
                fq.set_qparams(lsq.scale.detach().clamp(min=1e-12), fq.zero_point)
            setattr(self.qm, name, fq)
        qgraph.resolve_ties(self.qm)


def _trained_tensors(qm: nn.Module, learned: _Learned, learn_weights: bool) -> List[Tensor]:
    params = []
    if learn_weights:
        for m in qgraph.quant_layers(qm).values():
            params += [p for p in (m.weight, m.bias) if p is not None]
    return params


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))``, mean over samples (Hinton et al. 2015; the ``T^2``
    keeps the gradient's size independent of T)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1), log_target=True,
                    reduction="batchmean") * (t * t)


def _bn_alignment(outputs: Dict[str, Tensor], bn_stats) -> Tensor:
    """Batch-mode BN-statistic loss (``ops.bn_stat_loss``) of each folded layer's output against the BN
    statistics it was trained to have: mean ``out_mean`` (beta) and std ``out_std`` (|gamma|)."""
    terms = []
    for name, out in outputs.items():
        st = bn_stats[name]
        var = st.out_std.to(out.device).pow(2)
        terms.append(ops.bn_stat_loss(out, st.out_mean.to(out.device), var, 1e-5, False, False))
    return torch.stack(terms).sum()


def _write_checkpoint(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 4242) % (2**63 - 1)


def kd_finetune(qm: fx.GraphModule, teacher: nn.Module, data: Union[Tensor, Callable[[int], Tensor]], *,
                epochs: int = 10, batch_size: int = 64, lr: float = 1e-4, lr_step: float = 1e-4,
                optimizer: str = "adam", weight_decay: float = 0.0, temperature: float = 1.0,
                kl_weight: float = 1.0, ce_weight: float = 0.0, bn_weight: float = 0.0, augment: bool = False,
                learn_weights: bool = True, learn_weight_step: bool = True, learn_act_step: bool = True,
                seed: int = 0, checkpoint_dir: Optional[str] = None, progress: bool = True,
                inplace: bool = False) -> fx.GraphModule:
    """Fine-tunes the calibrated fake-quant network ``qm`` to match ``teacher`` (its FP32 network, not
    modified) on synthetic inputs (module docstring).

    ``data``: the synthetic set, a tensor (N, ...) used every epoch, or a callable ``data(epoch)``
    returning the set of that epoch (refreshed; it must be deterministic for a resume to be exact).
    Per epoch the set is shuffled and cut into batches of ``batch_size``; Adam (or SGD with momentum 0.9)
    with a cosine learning-rate decay over all steps: ``lr`` for the weights and biases, ``lr_step`` for
    the LSQ steps. ``augment``: random flips and shifts by an eighth of the side
    (:func:`pyquant.finetune.augment.flip_and_shift`; image inputs). ``bn_weight > 0`` needs ``qm.bn_stats``
    (a :func:`pyquant.quantize` result).

    Returns the fine-tuned network (a copy unless ``inplace``), an ordinary fake-quant network whose
    FakeQuantizers hold the learned steps, with ``kd_log`` (one dict per epoch: mean loss and its terms, wall
    and CPU seconds).
    ``checkpoint_dir``: after every epoch the training state is saved there (``kd.pt``, loadable with
    ``weights_only=True``); a rerun with the same arguments resumes after the last finished epoch and
    gives the same result as an uninterrupted run. Deterministic under ``seed``; runs in any grad mode.
    A NaN/Inf loss raises :class:`KDError` naming the epoch and step; the network (``err.model``, and
    ``qm`` itself when ``inplace``) keeps the state after the last finished epoch."""
    if not isinstance(qm, fx.GraphModule) or not qgraph.quant_layers(qm):
        raise TypeError(f"kd_finetune: qm must be a fake-quant torch.fx.GraphModule from pyquant.quantize/prepare, "
                        f"got {type(qm).__name__}")
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"kd_finetune: teacher must be a torch.nn.Module (the FP32 network), got "
                        f"{type(teacher).__name__}")
    if not callable(data) and (not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] < 1):
        raise ValueError("kd_finetune: data must be a tensor of samples (N, ...) with N >= 1, or a callable "
                         "epoch -> tensor")
    _positive_int("epochs", epochs)
    _positive_int("batch_size", batch_size)
    for name, value in (("lr", lr), ("lr_step", lr_step), ("weight_decay", weight_decay),
                        ("kl_weight", kl_weight), ("ce_weight", ce_weight), ("bn_weight", bn_weight)):
        _non_negative(name, value)
    if _non_negative("temperature", temperature) == 0:
        raise ValueError("kd_finetune: temperature must be > 0")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"kd_finetune: optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    bn_stats = getattr(qm, "bn_stats", None) or {}
    if bn_weight > 0 and not bn_stats:
        raise ValueError("kd_finetune: bn_weight > 0 needs qm.bn_stats (the folded BN statistics that "
                         "pyquant.quantize attaches)")
    # inference_mode(False) + enable_grad: the caller's grad mode must not decide whether we can train
    with torch.inference_mode(False), torch.enable_grad():
        return _finetune(qm if inplace else copy.deepcopy(qm), teacher, data, bn_stats, dict(
            epochs=epochs, batch_size=batch_size, lr=lr, lr_step=lr_step, optimizer=optimizer,
            weight_decay=weight_decay, temperature=temperature, kl_weight=kl_weight, ce_weight=ce_weight,
            bn_weight=bn_weight, augment=augment, learn_weights=learn_weights, learn_weight_step=learn_weight_step,
            learn_act_step=learn_act_step, seed=seed), checkpoint_dir, progress)


def _epoch_data(data, epoch: int) -> Tensor:
    x = data(epoch) if callable(data) else data
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"kd_finetune: data({epoch}) must return a tensor of samples (N, ...) with N >= 1")
    return x.detach().clone()  # a normal tensor also when made under inference_mode


def _finetune(qm, teacher, data, bn_stats, settings: dict, checkpoint_dir, progress):
    s = settings
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    was_training = qm.training
    qm.eval()  # the student has no BN left to train; eval keeps dropout-free determinism
    learned = _Learned(qm, s["learn_weight_step"], s["learn_act_step"])
    weights = _trained_tensors(qm, learned, s["learn_weights"])
    for p in weights:
        p.requires_grad_(True)
    steps = learned.step_parameters()
    groups = [g for g in ({"params": weights, "lr": s["lr"]}, {"params": steps, "lr": s["lr_step"]}) if g["params"]]
    if not groups:
        raise ValueError("kd_finetune: nothing to train (learn_weights, learn_weight_step and learn_act_step all off)")
    for g in groups:
        g["base_lr"] = g["lr"]
    if s["optimizer"] == "adam":
        opt = torch.optim.Adam(groups, weight_decay=s["weight_decay"])
    else:
        opt = torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=s["weight_decay"])
    fixed = None if callable(data) else _epoch_data(data, 0)
    n = fixed.shape[0] if fixed is not None else None
    ckpt = os.path.join(checkpoint_dir, CHECKPOINT) if checkpoint_dir else None
    settings_key = dict(s, n=n, fixed=fixed is not None, layers=sorted(learned.weights), acts=sorted(learned.acts))
    start, log = 0, []
    if ckpt and os.path.isfile(ckpt):
        saved = torch.load(ckpt, weights_only=True)
        if saved["settings"] != settings_key:
            raise ValueError(f"kd_finetune: {ckpt} was written with other settings; use another checkpoint_dir")
        qm.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start, log = int(saved["epoch"]), list(saved["log"])
    device = next(iter(qgraph.quant_layers(qm).values())).weight.device
    hooked = {name: m for name, m in qgraph.quant_layers(qm).items() if name in bn_stats} if s["bn_weight"] > 0 else {}
    outputs: Dict[str, Tensor] = {}

    def record(name):
        def hook(module, args, out):
            outputs[name] = out
        return hook

    teacher_cache = None
    if fixed is not None and not s["augment"]:
        with torch.no_grad():
            teacher_cache = torch.cat([teacher(fixed[i:i + 256]) for i in range(0, n, 256)])
    total_steps = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s["epochs"], initial=start, desc="kd", unit="epoch")
    good = {k: v.detach().clone() for k, v in qm.state_dict().items()}
    try:
        with forward_hooks([(m, record(name)) for name, m in hooked.items()]):
            for epoch in range(start, s["epochs"]):
                x_all = fixed if fixed is not None else _epoch_data(data, epoch).to(device)
                n_epoch = x_all.shape[0]
                per_epoch = (n_epoch + s["batch_size"] - 1) // s["batch_size"]
                total_steps = per_epoch * s["epochs"]
                generator = torch.Generator().manual_seed(_epoch_seed(s["seed"], epoch))
                order = torch.randperm(n_epoch, generator=generator)
                sums = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "bn": 0.0}
                t_epoch, cpu_epoch = time.perf_counter(), time.process_time()
                for b in range(per_epoch):
                    idx = order[b * s["batch_size"]:(b + 1) * s["batch_size"]]
                    x = x_all[idx.to(x_all.device)]
                    if s["augment"]:
                        x = flip_and_shift(x, generator)
                    if teacher_cache is not None:
                        t_logits = teacher_cache[idx.to(teacher_cache.device)]
                    else:
                        with torch.no_grad():
                            t_logits = teacher(x)
                    t = epoch * per_epoch + b
                    for g in opt.param_groups:  # cosine decay over all steps
                        g["lr"] = g["base_lr"] * 0.5 * (1 + math.cos(math.pi * t / total_steps))
                    outputs.clear()
                    s_logits = qm(x)
                    kl = kd_loss(s_logits, t_logits, s["temperature"])
                    loss = s["kl_weight"] * kl
                    ce = bn = None
                    if s["ce_weight"] > 0:
                        ce = F.cross_entropy(s_logits, t_logits.argmax(1))
                        loss = loss + s["ce_weight"] * ce
                    if not bool(torch.isfinite(loss)):
                        kept = f"the state after epoch {epoch - 1}" if epoch else "its calibrated state"
                        raise KDError(f"kd_finetune: loss is {float(loss.detach())} at epoch {epoch}, step {b} "
                                      f"(KL {float(kl.detach())}); the network keeps {kept}")
                    if hooked:
                        bn = _bn_alignment(outputs, bn_stats)
                        loss = loss + s["bn_weight"] * bn
                        if not bool(torch.isfinite(loss)):
                            raise KDError(f"kd_finetune: BN-alignment loss is {float(bn.detach())} at epoch {epoch}, "
                                          f"step {b}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        for p in steps:
                            p.clamp_(min=1e-8)
                    sums["loss"] += float(loss.detach())
                    sums["kl"] += float(kl.detach())
                    sums["ce"] += float(ce.detach()) if ce is not None else 0.0
                    sums["bn"] += float(bn.detach()) if bn is not None else 0.0
                entry = {"epoch": epoch, "samples": int(n_epoch), **{k: v / per_epoch for k, v in sums.items()},
                         "seconds": time.perf_counter() - t_epoch, "cpu_seconds": time.process_time() - cpu_epoch}
                log.append(entry)
                good = {k: v.detach().clone() for k, v in qm.state_dict().items()}
                if ckpt:
                    _write_checkpoint(ckpt, {"epoch": epoch + 1, "model": good, "optimizer": opt.state_dict(),
                                             "log": log, "settings": settings_key})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(kl=f"{entry['kl']:.4g}", loss=f"{entry['loss']:.4g}")
    except KDError as err:
        qm.load_state_dict(good)
        _finish(qm, learned, weights, was_training, log)
        err.model = qm
        raise
    finally:
        if bar is not None:
            bar.close()
    _finish(qm, learned, weights, was_training, log)
    return qm


def _finish(qm, learned: _Learned, weights, was_training: bool, log) -> None:
    for p in weights:
        p.requires_grad_(False)
    learned.remove()
    qm.train(was_training)
    qm.kd_log = log

"""Recipes: plain dataclasses listing the steps of a data-free quantization pipeline and their
settings, and :func:`quantize` (DESIGN.md sections 2 and 6) that runs one.

Named recipes (``RECIPES``): ``zeroq`` (Cai et al. 2020: ZeroQ data, min-max ranges), ``dsg``
(Zhang et al. 2021: DSG data, min-max), ``dfq`` (Nagel et al. 2019: no data; ReLU6->ReLU, CLE,
high-bias absorption, BN-based activation ranges, analytic bias correction), ``aac_abn`` (He et al.
2022: AAC data, min-max clipping on it, ABN), ``squant`` (Guo et al. 2022: SQuant rounding, no data;
BN-based activation ranges) and ``best`` (the combination that measured best on ResNet-20 and -56, see
docs/pipeline.md). Every step is also a public function (pyquant.quant, pyquant.dfq).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from pyquant import _guards, dfq
from pyquant.quant import graph as qgraph
from pyquant.quant.report import build_report
from pyquant.quant.spec import QuantSpec

GENERATORS = ("zeroq", "dsg", "aac")
WEIGHT_ESTIMATORS = ("minmax", "mse")
ACT_ESTIMATORS = ("minmax", "percentile", "mse", "entropy", "bn")
SELECT_SIGNALS = ("kl", "bn_mismatch", "noise_kl")  # pyquant.selection.SIGNALS


@dataclass
class Recipe:
    """A pipeline: which steps run (in the fixed order of :attr:`steps`) and their settings.

    data: synthetic-data generator (``zeroq``, ``dsg``, ``aac`` from pyquant.distill) or None (data-free
    steps only); num_samples / data_iterations / data_batch_size / data_kwargs: its settings.
    relu6_to_relu, cle, absorb_high_bias: DFQ's structural steps (on the BN-folded model).
    weight_estimator: ``minmax`` or ``mse`` (per-channel Lp clip, ops.range_search; weight_p = p).
    weight_rounding: ``nearest`` or ``squant`` (pyquant.dfq.squant).
    abn: re-estimate BN statistics of the weight-quantized network on the data (needs data);
    abn_after_activations: run it on the fully quantized network instead (activations calibrated
    first, then ABN with activation quantizers on, then the activation ranges re-calibrated).
    abn_below_bits: run ABN only when w_bits or a_bits is below this (None = always). At 8 bit the
    quantization shift ABN corrects is smaller than the error of re-estimating every BN layer on a few
    synthetic samples (ResNet-56 W8A8: 80.85 % with ABN, 82.25 % without, FP32 82.35 %; docs/pipeline.md).
    reconstruct / reconstruct_below_bits: block reconstruction (pyquant.finetune.reconstruct, its keyword
    arguments) after calibration, only when w_bits or a_bits is below reconstruct_below_bits (None = always).
    reconstruct_keep_ratio: keep the reconstruction only when it brings the network's outputs on Gaussian-noise
    inputs this much closer to FP32's than the calibration did (KL ratio below it; pyquant.selection.
    check_reconstruction, reported in ``quant_report.reconstruction``); otherwise the calibrated network is
    returned. None = always keep.
    abn_bn_weight: ABN's target statistics, from the FP32 network's on the data (0) to the trained BN
    statistics (1, the paper); see pyquant.dfq.abn. abn_max_pull: bound on each channel's move from the FP32
    network's statistics towards the trained ones (log std ratio, mean shift in stds; None = unbounded).
    abn_max_data_misfit: run ABN only when the synthetic data reproduce the trained BN statistics: the FP32
    network's median over BN layers of the mean |log(std on the data / trained std)| at most this
    (pyquant.dfq.abn.data_misfit; None = always). A selecting recipe whose ABN is skipped so judges its candidates
    by ``misfit_select_signal`` instead of ``select_signal`` (None = no change): the data that failed that test
    are not a basis for judging either.
    input_calibration: how the network-input quantizer gets its range: ``data`` (observed like every
    other activation) or ``standardized`` (on the data standardized per sample and channel to mean 0,
    std 1, the input statistics ZeroQ's input term targets and DFQ assumes; synthetic images are wider
    than real ones: ResNet-56's ZeroQ data have std 1.5 and an MSE clip of 6.0 where real images give
    2.6, which cost 1 pt at W6A6).
    bias_correction: None, ``analytic`` (from BN statistics) or ``empirical`` (on the data).
    act_estimator: ``minmax``, ``percentile``, ``mse``, ``entropy`` (on the data, pyquant.calib) or
    ``bn`` (mean +- act_n_std std from the BN statistics, DFQ; tensors without BN moments fall back
    to min-max on Gaussian noise). first_last_bits: bits of the first/last layer (None = as the rest).
    input_bits: bits of the network-input quantizer (None = as the other activations; 8 = the 8-bit pixels a
    deployed model receives, the closest int8 equivalent of the papers' unquantized input).
    mixed_precision_bits: average weight bits for ZeroQ's Pareto allocation (None = uniform).
    select_among: names of other recipes to build on the same data beside this one; the candidate whose
    outputs stay closest to the FP32 network's on held-out synthetic samples is returned
    (pyquant.selection; () = no selection). select_holdout: how many held-out samples are generated
    for that (taken from the end of ``data=`` when the caller gives data but no ``holdout=``).
    select_signal: what "closest" means (pyquant.selection.SIGNALS): ``kl`` (the outputs' KL divergence
    from FP32's) or ``bn_mismatch`` (the quantized network's statistics against the trained BN ones).
    """

    name: str = "custom"
    data: Optional[str] = "zeroq"
    num_samples: int = 256
    data_iterations: int = 200
    data_batch_size: int = 64
    data_kwargs: dict = field(default_factory=dict)
    relu6_to_relu: bool = False
    cle: bool = False
    absorb_high_bias: bool = False
    weight_estimator: str = "minmax"
    weight_p: float = 2.0
    weight_rounding: str = "nearest"
    abn: bool = False
    abn_after_activations: bool = False
    abn_below_bits: Optional[int] = None
    abn_bn_weight: float = 1.0
    abn_max_pull: Optional[float] = None
    abn_max_data_misfit: Optional[float] = None
    input_calibration: str = "data"
    bias_correction: Optional[str] = None
    act_estimator: str = "minmax"
    act_estimator_kwargs: dict = field(default_factory=dict)
    act_n_std: float = 6.0
    first_last_bits: Optional[int] = None
    input_bits: Optional[int] = None
    mixed_precision_bits: Optional[float] = None
    select_among: Tuple[str, ...] = ()
    select_holdout: int = 32
    select_signal: str = "kl"
    misfit_select_signal: Optional[str] = None
    reconstruct: Optional[dict] = None  # keyword arguments of pyquant.finetune.reconstruct (needs data)
    reconstruct_below_bits: Optional[int] = None  # reconstruct only when w_bits or a_bits is below this
    reconstruct_keep_ratio: Optional[float] = None  # keep it only when noise KL falls below this fraction
    finetune: Optional[dict] = None  # keyword arguments of pyquant.finetune.kd_finetune (needs data)

    def __post_init__(self):
        checks = [("data", self.data, GENERATORS + (None,)), ("weight_estimator", self.weight_estimator, WEIGHT_ESTIMATORS),
                  ("weight_rounding", self.weight_rounding, ("nearest", "squant")),
                  ("bias_correction", self.bias_correction, (None, "analytic", "empirical")),
                  ("act_estimator", self.act_estimator, ACT_ESTIMATORS),
                  ("input_calibration", self.input_calibration, ("data", "standardized")),
                  ("select_signal", self.select_signal, SELECT_SIGNALS),
                  ("misfit_select_signal", self.misfit_select_signal, SELECT_SIGNALS + (None,))]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"Recipe.{name} must be one of {allowed}, got {value!r}")
        if self.data is None and (self.abn or self.bias_correction == "empirical" or self.act_estimator not in ("bn",)):
            raise ValueError(f"recipe {self.name!r}: abn, empirical bias correction and data-based activation "
                             f"estimators need data (set data= 'zeroq', 'dsg' or 'aac', or act_estimator='bn')")
        if self.first_last_bits is not None:
            _check_bits("first_last_bits", self.first_last_bits)
        if self.input_bits is not None:
            _check_bits("input_bits", self.input_bits)
        if self.input_calibration != "data" and self.act_estimator == "bn":
            raise ValueError(f"Recipe.input_calibration={self.input_calibration!r} needs a data-based act_estimator; "
                             f"with act_estimator='bn' every range, the input's too, comes from the BN statistics")
        dfq.abn.check_bn_weight(self.abn_bn_weight, "Recipe.abn_bn_weight")
        dfq.abn.check_max_pull(self.abn_max_pull, "Recipe.abn_max_pull")
        dfq.abn.check_max_pull(self.abn_max_data_misfit, "Recipe.abn_max_data_misfit")
        if isinstance(self.select_among, str) or not all(isinstance(n, str) for n in self.select_among):
            raise TypeError(f"Recipe.select_among must be a tuple of recipe names, got {self.select_among!r}")
        self.select_among = tuple(self.select_among)
        if isinstance(self.select_holdout, bool) or not isinstance(self.select_holdout, int) or self.select_holdout < 1:
            raise ValueError(f"Recipe.select_holdout must be a positive int, got {self.select_holdout!r}")
        for name in ("abn_below_bits", "reconstruct_below_bits"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Recipe.{name} must be an int or None, got {type(value).__name__}")
            if not 3 <= value <= 9:
                raise ValueError(f"Recipe.{name} must be in 3..9 or None, got {value}")
        ratio = self.reconstruct_keep_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                                  or not 0 < ratio <= 1):
            raise ValueError(f"Recipe.reconstruct_keep_ratio must be a number in (0, 1] or None, got {ratio!r}")
        if self.reconstruct is not None and self.data is None:
            raise ValueError(f"recipe {self.name!r}: reconstruct needs data (set data= 'zeroq', 'dsg' or 'aac')")

    @property
    def steps(self) -> list:
        """The steps this recipe runs, in order."""
        s = ["prepare"]
        if self.data:
            s.append(f"distill:{self.data}")
        s.append("fold_bn")
        if self.cle:
            s.append("cle")
        if self.absorb_high_bias:
            s.append("absorb_high_bias")
        if self.mixed_precision_bits is not None:
            s.append("mixed_precision")
        s.append(f"quantize_weights:{self.weight_estimator}" + (":squant" if self.weight_rounding == "squant" else ""))
        if self.abn and not self.abn_after_activations:
            s.append("abn")
        if self.bias_correction:
            s.append(f"bias_correction:{self.bias_correction}")
        s.append(f"calibrate_activations:{self.act_estimator}")
        if self.abn and self.abn_after_activations:
            s += ["abn", f"calibrate_activations:{self.act_estimator}"]
        if self.reconstruct is not None:
            s.append("reconstruct")
        if self.finetune is not None:
            s.append("finetune:kd")
        s.append("report")
        if self.select_among:
            s.append("select:" + ",".join((self.name,) + tuple(self.select_among)))
        return s

    def replace(self, **changes) -> "Recipe":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown recipe setting(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


# best's block reconstruction (below 4 bit): targets from the FP32 network, AdaRound starting from SQuant's
# rounding, activation steps kept as calibrated (learning them on synthetic data overfits: docs/pipeline.md)
BEST_RECONSTRUCTION = {"iterations": 500, "batch_size": 32, "learn_act_step": False, "start_rounding": "current"}

RECIPES: Dict[str, Recipe] = {
    "zeroq": Recipe(name="zeroq", data="zeroq"),
    "dsg": Recipe(name="dsg", data="dsg"),
    "dfq": Recipe(name="dfq", data=None, relu6_to_relu=True, cle=True, absorb_high_bias=True,
                  bias_correction="analytic", act_estimator="bn"),
    "aac_abn": Recipe(name="aac_abn", data="aac", abn=True),
    "squant": Recipe(name="squant", data=None, weight_rounding="squant", act_estimator="bn"),
    # Lp weight clips (p = 2.4, Genie's choice) with SQuant rounding on that grid, MSE activation clips with
    # the input quantizer calibrated on standardized data (docs/pipeline.md); no ABN.
    "lp_squant": Recipe(name="lp_squant", data="zeroq", weight_estimator="mse", weight_p=2.4,
                        weight_rounding="squant", act_estimator="mse", input_calibration="standardized"),
    # lp_squant plus ABN on the fully quantized network below 8 bit (at W8A8 it cost 1.4 pt on ResNet-56), its
    # target halfway between the FP32 network's statistics on the data and the trained BN statistics (either
    # end loses 2-3 pt on one of the two ResNets); then the candidate among itself, lp_squant, zeroq, dfq and
    # squant whose statistics on held-out synthetic samples sit closest to the trained BN statistics. ABN is
    # worth up to 13 pt on the CIFAR ResNets and costs 2-5 pt on a MobileNetV2 (docs/transfer.md); the
    # selection drops it where it does not reduce the mismatch (MobileNetV2 proxy W4A4: +5.4 pt).
    # Below 4 bit, block reconstruction follows, on the chosen calibration (BEST_RECONSTRUCTION; docs/pipeline.md:
    # ResNet-32/44 W3A3 +7.4 / +8.9 pt). At W4A4 / W4A8 it is +1.7 / +1.6 pt on ResNet-32 but +0.2 / -0.2 on
    # ResNet-44, and -1.6 / -1.0 pt on the digits CNN (outside the CIFAR ResNets): not on by default there
    # (reconstruct_below_bits=5 opts in). The reconstruction is kept only when it brings the outputs on Gaussian
    # noise below 0.8 of the calibration's KL (reconstruct_keep_ratio; bench/reconstruct_decision.py on the
    # development networks: ResNet-32/44 and the MobileNetV2 proxy 0.13-0.73, all gaining; the digits CNN
    # 0.87-1.11, all losing, W3A3 by 8 pt).
    # ABN and the BN-statistic signal both trust the synthetic data to be a sample of what the trained BN
    # statistics describe. Where the FP32 network on the data sits far from them (median layer |log std ratio|
    # above 0.1: 0.055-0.073 on the CIFAR ResNets, 0.145 on the MobileNetV2 proxy), ABN is skipped and the
    # candidates are judged on Gaussian noise instead (proxy W6A6 / W4A8 / W4A4: 48.0 / 47.0 / 36.6 % -> 53.7 /
    # 52.7 / 49.3 % on seed 0, the best candidate in each cell of seeds 0-2; docs/transfer.md). On the ResNets
    # nothing changes.
    "best": Recipe(name="best", data="zeroq", weight_estimator="mse", weight_p=2.4, weight_rounding="squant",
                   act_estimator="mse", abn=True, abn_after_activations=True, abn_below_bits=8, abn_bn_weight=0.5,
                   input_calibration="standardized", select_among=("lp_squant", "zeroq", "dfq", "squant"),
                   select_signal="bn_mismatch", reconstruct=BEST_RECONSTRUCTION, reconstruct_below_bits=4,
                   reconstruct_keep_ratio=0.8, abn_max_data_misfit=0.1, misfit_select_signal="noise_kl"),
    # BRECQ / Genie-M block reconstruction (pyquant.finetune) on ZeroQ data, from Lp (p = 2.4) weight and MSE
    # activation clips. Settings not yet tuned on ResNet-32/44 (issue 11).
    "brecq": Recipe(name="brecq", data="zeroq", num_samples=512, weight_estimator="mse", weight_p=2.4,
                    act_estimator="mse", input_calibration="standardized",
                    reconstruct={"iterations": 500, "batch_size": 32}),
    # best's own calibration (no selection), then KD fine-tuning from the FP32 network with LSQ steps on the same
    # ZeroQ data (pyquant.finetune.kd_finetune). Measured on ResNet-32 W4A4 (bench/kd_study.py, docs/pipeline.md):
    # below the calibration it starts from (71.45 vs 77.6, seed 0): the student overfits 256 synthetic samples.
    # Kept as the method family's recipe; `best` does not use it.
    "kd": Recipe(name="kd", data="zeroq", num_samples=256, data_iterations=80, weight_estimator="mse", weight_p=2.4,
                 weight_rounding="squant", act_estimator="mse", abn=True, abn_after_activations=True,
                 abn_below_bits=8, abn_bn_weight=0.5, input_calibration="standardized",
                 finetune={"epochs": 40, "batch_size": 32, "lr": 1e-4, "lr_step": 1e-4, "augment": True}),
}


def get_recipe(recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)} or pass a pyquant.Recipe")
        return copy.deepcopy(RECIPES[recipe])
    raise TypeError(f"recipe must be a name or a pyquant.Recipe, got {type(recipe).__name__}")


def _check_bits(name: str, bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name} must be an int, got {type(bits).__name__}")
    if not 2 <= bits <= 8:
        raise ValueError(f"{name} must be in 2..8, got {bits}")


def _check_device(model: nn.Module) -> torch.device:
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    if any(t.device != device for t in tensors):
        raise ValueError("model: all parameters and buffers must be on one device")
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        from pyquant import build_info

        if build_info().get("cuda"):
            return device
        raise ValueError(f"model is on {device}, but this pyquant build has no CUDA kernels; move it to the CPU "
                         f"(model.cpu()) or rebuild with CUDA")
    raise ValueError(f"model is on device {device}, which pyquant does not support (cpu, or cuda when built)")


class _Progress:
    def __init__(self, steps, enabled: bool):
        self.steps, self.enabled, self.k = steps, enabled, 0
        self.log = []

    def __call__(self, step: str, detail: str = ""):
        return _StepTimer(self, step, detail)


class _StepTimer:
    def __init__(self, progress, step, detail):
        self.p, self.step, self.detail = progress, step, detail

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            return False
        self.p.k += 1
        dt = time.perf_counter() - self.t0
        self.p.log.append({"step": self.step, "seconds": dt, "detail": self.detail})
        if self.p.enabled:
            print(f"[pyquant.quantize] {self.p.k}/{len(self.p.steps)} {self.step:<32} {dt:7.2f} s  {self.detail}",
                  file=sys.stderr, flush=True)
        return False


def _distill(recipe: Recipe, model: nn.Module, input_shape, seed: int, progress: bool):
    from pyquant import distill

    generator = {"zeroq": distill.zeroq, "dsg": distill.dsg, "aac": distill.aac}[recipe.data]
    return generator(model, recipe.num_samples, input_shape, batch_size=min(recipe.data_batch_size, recipe.num_samples),
                     iterations=recipe.data_iterations, seed=seed, progress=progress, **recipe.data_kwargs)


@_guards.any_grad_mode
def quantize(model: nn.Module, recipe="zeroq", *, w_bits: int = 8, a_bits: int = 8, input_shape: Sequence[int],
             seed: int = 0, progress: bool = True, data: Optional[torch.Tensor] = None,
             holdout: Optional[torch.Tensor] = None, **overrides) -> nn.Module:
    """A fake-quantized copy of ``model`` (which is not modified), built by ``recipe`` (a name from
    ``RECIPES`` or a :class:`Recipe`; ``overrides`` replace its settings, e.g. ``first_last_bits=8``).
    Prints one line per step. The result is a torch.fx GraphModule with QuantConv2d / QuantLinear and
    activation FakeQuantizers (``aq_*``), carrying ``quant_report`` (:class:`QuantReport`),
    ``recipe`` and ``bn_stats``. ``data``: use these calibration inputs instead of generating them;
    ``holdout``: the held-out samples a selecting recipe (``select_among``) judges its candidates on."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_bits("w_bits", w_bits)
    _check_bits("a_bits", a_bits)
    shape = _guards.check_sample_shape(input_shape)
    data = _guards.check_batch("data", data, shape)
    holdout = _guards.check_batch("holdout", holdout, shape)
    recipe = get_recipe(recipe)
    if overrides:
        recipe = recipe.replace(**overrides)
    if _abn_below_bits_off(recipe, w_bits, a_bits):
        recipe = recipe.replace(abn=False)  # the returned model's .recipe says what ran
    if (recipe.reconstruct is not None and recipe.reconstruct_below_bits is not None
            and min(w_bits, a_bits) >= recipe.reconstruct_below_bits):
        recipe = recipe.replace(reconstruct=None)
    device = _check_device(model)
    if recipe.select_among:
        return _quantize_selecting(model, recipe, w_bits=w_bits, a_bits=a_bits, shape=shape, seed=seed,
                                   progress=progress, data=data, holdout=holdout)
    steps = recipe.steps
    step = _Progress(steps, progress)
    torch.manual_seed(seed)

    with step("prepare"):
        fp = copy.deepcopy(model).eval()
        n_relu6 = qgraph.replace_relu6(fp) if recipe.relu6_to_relu else 0
        gm = qgraph.trace(fp)
        qgraph.check_supported(gm)
        _guards.check_input_fits(gm, shape, device)
        has_bn = any(isinstance(m, qgraph.BN_LAYERS) for m in gm.modules())
    if data is None and recipe.data is not None:
        if not has_bn:
            raise ValueError(f"recipe {recipe.name!r} distills data from BatchNorm statistics, but the model has no "
                             f"BatchNorm layer; use a data-free recipe such as 'dfq' (or pass data=)")
        with step(f"distill:{recipe.data}", f"{recipe.num_samples} samples, {recipe.data_iterations} iterations"):
            data = _distill(recipe, gm, shape, seed, progress)
    elif data is not None:
        step.log.append({"step": "data", "seconds": 0.0, "detail": f"{data.shape[0]} given samples"})
    gate = None
    if recipe.abn and recipe.abn_max_data_misfit is not None:
        gate = _abn_gate(recipe, gm, data)
        step.log.append({"step": "abn_gate", "seconds": 0.0, "detail": str(gate)})
        if not gate.ran:
            recipe = recipe.replace(abn=False)  # the returned model's .recipe says what ran
    with step("fold_bn"):
        folded, bn_stats = qgraph.fold_bn(gm)
    if recipe.cle:
        with step("cle") as s:
            pairs, sweeps = dfq.cross_layer_equalization(folded, bn_stats)
            s.detail = f"{len(pairs)} pairs, {sweeps} sweeps"
    if recipe.absorb_high_bias:
        with step("absorb_high_bias") as s:
            s.detail = f"{len(dfq.absorb_high_bias(folded, bn_stats))} layers"
    fp_ref = copy.deepcopy(folded)
    layer_bits = mixed = None
    if recipe.mixed_precision_bits is not None:
        with step("mixed_precision") as s:
            layer_bits, mixed = _mixed_precision(folded, data, recipe.mixed_precision_bits, progress)
            s.detail = str(layer_bits)
    wspec = QuantSpec(bits=w_bits, signed=True, symmetric=True, axis=0, estimator=recipe.weight_estimator,
                      estimator_kwargs={"p": recipe.weight_p} if recipe.weight_estimator == "mse" else {})
    aspec = QuantSpec(bits=a_bits, signed=False, symmetric=recipe.act_estimator != "minmax", axis=None,
                      estimator=recipe.act_estimator if recipe.act_estimator != "bn" else "minmax",
                      estimator_kwargs=dict(recipe.act_estimator_kwargs))
    qm = qgraph.prepare(folded, wspec, aspec, first_last_bits=recipe.first_last_bits, layer_bits=layer_bits,
                        input_bits=recipe.input_bits)
    with step(steps[[i for i, n in enumerate(steps) if n.startswith("quantize_weights")][0]]):
        qgraph.quantize_weights(qm)
        if recipe.weight_rounding == "squant":
            _squant_weights(qm)
    def abn():
        return len(dfq.adaptive_bn(qm, bn_stats, data, bn_weight=recipe.abn_bn_weight, fp_model=fp_ref,
                                   max_pull=recipe.abn_max_pull))

    def calibrate_activations():
        qgraph.calibrate_activations(qm, data)
        if recipe.input_calibration == "standardized":
            standardized = _standardize(data)
            for q in qgraph.input_quantizers(qm).values():
                q.calibrate(standardized)
            qgraph.resolve_ties(qm)

    if recipe.abn and not recipe.abn_after_activations:
        with step("abn") as s:
            s.detail = f"{abn()} layers"
    if recipe.bias_correction == "analytic":
        with step("bias_correction:analytic") as s:
            s.detail = f"{len(dfq.analytic_bias_correction(qm, bn_stats, _input_moments(qm)))} layers"
    elif recipe.bias_correction == "empirical":
        with step("bias_correction:empirical") as s:
            s.detail = f"{len(dfq.empirical_bias_correction(qm, fp_ref, data))} layers"
    probe = data
    with step(f"calibrate_activations:{recipe.act_estimator}") as s:
        if recipe.act_estimator == "bn":
            missing = dfq.bn_activation_ranges(qm, bn_stats, recipe.act_n_std, _input_moments(qm))
            if missing:
                gen = torch.Generator().manual_seed(seed)
                probe = torch.randn((64,) + shape, generator=gen).to(device)
                _calibrate_subset(qm, probe, missing)
            qgraph.resolve_ties(qm)
            s.detail = f"{len(missing)} of {len(qgraph.act_quantizers(qm))} from noise" if missing else ""
        else:
            calibrate_activations()
    if recipe.abn and recipe.abn_after_activations:
        with step("abn") as s:
            s.detail = f"{abn()} layers, activations quantized"
        with step(f"calibrate_activations:{recipe.act_estimator}"):
            calibrate_activations()
    check = None
    if recipe.reconstruct is not None:
        from pyquant import selection
        from pyquant.finetune import reconstruct

        with step("reconstruct", f"{len(data)} samples") as s:
            calibrated = copy.deepcopy(qm) if recipe.reconstruct_keep_ratio is not None else None
            reconstruct(qm, data, seed=seed, progress=progress, inplace=True, fp_model=fp_ref, **recipe.reconstruct)
            if calibrated is not None:
                check = selection.check_reconstruction(gm, calibrated, qm, shape, seed, recipe.reconstruct_keep_ratio)
                s.detail += f"; {check}"
                if not check.kept:
                    qm = calibrated
    if recipe.finetune is not None:
        from pyquant.finetune import kd_finetune

        qm.bn_stats = bn_stats  # the BN-alignment term reads them
        with step("finetune:kd", f"{len(data)} samples"):  # the teacher: the FP32 network as traced
            kd_finetune(qm, gm, data, seed=seed, progress=progress, inplace=True, **recipe.finetune)
    with step("report"):
        if probe is None:
            probe = torch.randn((64,) + shape, generator=torch.Generator().manual_seed(seed)).to(device)
        convention = convention_of(recipe)
        report = build_report(qm, fp_ref, probe[:256], recipe=recipe.name, w_bits=w_bits, a_bits=a_bits,
                              convention=convention)
        report.steps = step.log
        report.mixed_precision = mixed  # what the allocation measured: the report plots its Pareto frontier
        report.reconstruction = check
        report.abn_gate = gate
    qm.quant_report = report
    qm.recipe = recipe
    qm.bn_stats = bn_stats
    qm.relu6_replaced = n_relu6
    return qm.eval()


# Settings that describe the quantization convention rather than a pipeline: a selecting recipe passes
# them on to its alternatives, so every candidate is judged at the same bit-widths.
CONVENTION_SETTINGS = ("first_last_bits", "input_bits", "mixed_precision_bits")


def convention_of(recipe: Recipe) -> str:
    """The quantization convention in words, as reports print it."""
    words = [f"first/last layer at {recipe.first_last_bits} bit" if recipe.first_last_bits is not None
             else "all layers quantized"]
    if recipe.input_bits is not None:
        words.append(f"network input at {recipe.input_bits} bit")
    return ", ".join(words)


def _quantize_selecting(model, recipe: Recipe, *, w_bits, a_bits, shape, seed, progress, data, holdout):
    """Builds ``recipe`` itself and each of ``recipe.select_among`` on the same synthetic data and returns
    the one closest to FP32 on held-out synthetic samples (pyquant.selection).

    The candidates are calibrations: ``recipe``'s reconstruction, if any, runs once, on the chosen one (its
    pipeline built again with the reconstruction appended). Judging a reconstructed candidate against
    calibrated ones would compare a repair step, not the calibrations: reconstruction pulls the network towards
    the FP32 outputs on the synthetic data and away from the trained BN statistics the signal measures (ResNet-20
    W4A8: the selection then preferred lp_squant, 79.4 % against 81.6 % for the calibration it rejected)."""
    from pyquant import selection

    unknown = [n for n in recipe.select_among if n not in RECIPES]
    if unknown:
        raise ValueError(f"Recipe.select_among: unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")
    own = recipe.replace(select_among=(), reconstruct=None)
    shared = {k: getattr(recipe, k) for k in CONVENTION_SETTINGS}
    fp = copy.deepcopy(model).eval()
    if data is None:
        if own.data is None:
            raise ValueError(f"recipe {recipe.name!r} selects on held-out synthetic samples: it needs a generator "
                             f"(Recipe.data) or data=")
        if not any(isinstance(m, qgraph.BN_LAYERS) for m in fp.modules()):
            raise ValueError(f"recipe {recipe.name!r} distills data from BatchNorm statistics, but the model has no "
                             f"BatchNorm layer; use a data-free recipe such as 'dfq' (or pass data=)")
        t0 = time.perf_counter()
        n = own.num_samples
        generated = _distill(own.replace(num_samples=n + recipe.select_holdout), fp, shape, seed, progress)
        data, holdout = (generated[:n], generated[n:]) if holdout is None else (generated[:n], holdout)
        if progress:
            print(f"[pyquant.quantize] distill:{own.data} {n} + {recipe.select_holdout} held-out samples "
                  f"{time.perf_counter() - t0:7.2f} s", file=sys.stderr, flush=True)
    elif holdout is None:
        h = min(recipe.select_holdout, data.shape[0] // 4)
        data, holdout = (data, data) if h < 1 else (data[:-h], data[-h:])

    def build(candidate: Recipe):
        return lambda: quantize(model, candidate, w_bits=w_bits, a_bits=a_bits, input_shape=shape, seed=seed,
                                progress=False, data=data)

    gate, signal = None, recipe.select_signal
    if own.abn and own.abn_max_data_misfit is not None:  # decided once here, so each candidate is built, judged
        gate = _abn_gate(own, fp, data)                     # and reported as what ran
        own = own.replace(abn=gate.ran, abn_max_data_misfit=None)
        if not gate.ran:
            signal = recipe.misfit_select_signal or signal
    candidates = {own.name: own}
    for name in recipe.select_among:
        candidate = get_recipe(name).replace(**shared)
        if _pipeline(candidate) != _pipeline(own):  # e.g. lp_squant is best itself at W8A8 (no ABN there)
            candidates[name] = candidate
    qm, chosen = selection.select(fp, [(name, build(c)) for name, c in candidates.items()], holdout, progress,
                                  signal=signal)
    if recipe.reconstruct is not None:
        qm = quantize(model, _reconstructing(candidates[chosen.chosen], own.data).replace(
            reconstruct=recipe.reconstruct, reconstruct_below_bits=None,
            reconstruct_keep_ratio=recipe.reconstruct_keep_ratio),
            w_bits=w_bits, a_bits=a_bits, input_shape=shape, seed=seed, progress=progress, data=data)
    check = qm.quant_report.reconstruction
    reconstructed = recipe.reconstruct is not None and (check is None or check.kept)
    qm.quant_report.selection = chosen
    qm.quant_report.abn_gate = gate if gate is not None else qm.quant_report.abn_gate
    qm.quant_report.recipe = (f"{recipe.name} -> {chosen.chosen}" + (" + reconstruct" if reconstructed else "")
                              + (" (reconstruction discarded)" if check is not None and not check.kept else ""))
    qm.selection = chosen
    return qm


def _abn_below_bits_off(recipe: Recipe, w_bits: int, a_bits: int) -> bool:
    """ABN is on in ``recipe`` but off at these widths (Recipe.abn_below_bits)."""
    return recipe.abn and recipe.abn_below_bits is not None and min(w_bits, a_bits) >= recipe.abn_below_bits


def _abn_gate(recipe: Recipe, fp_model: nn.Module, data) -> "dfq.abn.AbnGate":
    """Whether ``recipe``'s ABN runs on ``data`` (Recipe.abn_max_data_misfit)."""
    misfit = dfq.abn.data_misfit(fp_model, data)
    return dfq.abn.AbnGate(misfit=misfit, threshold=recipe.abn_max_data_misfit,
                           ran=bool(misfit <= recipe.abn_max_data_misfit))


def _reconstructing(candidate: Recipe, generator: str) -> Recipe:
    """``candidate`` able to take a reconstruction step: a data-free one (dfq, squant) is named a generator, which
    never runs (the selection's synthetic data are passed in) but lets the recipe hold a data-based step."""
    return candidate if candidate.data is not None else candidate.replace(data=generator)


def _pipeline(recipe: Recipe) -> Recipe:
    """``recipe`` without the settings that do not change what it computes (its name, the selection, and
    ABN's or reconstruction's settings when that step is off), so two recipes that build the same model compare equal."""
    neutral = dict(name="", select_among=(), select_holdout=1, select_signal="kl", misfit_select_signal=None)
    if not recipe.abn:
        neutral.update(abn_after_activations=False, abn_below_bits=None, abn_bn_weight=1.0, abn_max_pull=None,
                       abn_max_data_misfit=None)
    if recipe.reconstruct is None:
        neutral.update(reconstruct_below_bits=None, reconstruct_keep_ratio=None)
    return dataclasses.replace(recipe, **neutral)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Each sample and channel shifted and scaled to mean 0, std 1 over its spatial positions."""
    # (N, features) inputs have no spatial positions: each feature over the batch instead
    dims = (0,) if x.dim() < 3 else tuple(range(2, x.dim()))
    return (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp(min=1e-12)


def _input_moments(qm):
    # Data-free steps assume a normalised input: mean 0, variance 1 per channel.
    return (torch.zeros(1), torch.ones(1))


@torch.no_grad()
def _calibrate_subset(qm, data, names):
    qs = qgraph.act_quantizers(qm)
    enabled = {n: q.enabled for n, q in qs.items()}
    for n in names:
        qs[n]._estimator = None
        qs[n].observing = True
    try:
        qm(data)
    finally:
        for n in names:
            qs[n].observing = False
    for n in names:
        qs[n].compute_qparams()
    for n, q in qs.items():
        if n not in names:
            q.enabled = enabled[n]


@torch.no_grad()
def _squant_weights(qm) -> None:
    try:
        from pyquant.dfq.squant import squant_weight
    except ImportError as err:
        raise RuntimeError("weight_rounding='squant' needs pyquant.dfq.squant (the SQuant kernel), which this "
                           "checkout does not have yet") from err
    for m in qgraph.quant_layers(qm).values():
        q = m.weight_quantizer
        m.set_rounded_weight(squant_weight(m.weight.detach(), q.scale, q.zero_point, q.qmin, q.qmax, axis=0))


def _mixed_precision(folded, data, avg_bits: float, progress: bool = False):
    """``({layer: bits}, measurement)``: ZeroQ's allocation under ``avg_bits`` and what it was chosen from
    (QuantReport.mixed_precision: per-layer sensitivity, weight counts, budget)."""
    try:
        from pyquant import mixed
    except ImportError as err:
        raise RuntimeError("mixed_precision_bits needs pyquant.mixed, which this checkout does not have yet") from err
    if data is None:
        raise ValueError("mixed precision needs data (ZeroQ sensitivity): set data=")
    layers = {n: m for n, m in folded.named_modules() if isinstance(m, qgraph.WEIGHT_LAYERS)}
    sensitivity = mixed.layer_sensitivity(folded, data, bits_options=(2, 4, 8), layers=list(layers), progress=progress)
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    budget = avg_bits * sum(sizes.values())
    measured = {"avg_bits": avg_bits, "budget_bits": budget, "sensitivity": sensitivity, "sizes": sizes}
    return mixed.allocate_bits(sensitivity, sizes, budget), measured

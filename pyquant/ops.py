"""pyquant's kernels as Python functions (DESIGN.md section 6).

Every function here is a thin wrapper over an op registered in C++ as ``torch.ops.pyquant.*`` (CPU
always, CUDA when built). This module adds the autograd formulas (``torch.library.register_autograd``)
and the shape-only fake kernels (``torch.library.register_fake``) that ``torch.compile`` and
``torch.library.opcheck`` need.

Numerics (identical to ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine``, bit for bit):
``q = clamp(round_half_even(x * (1/scale)) + zero_point, qmin, qmax)``, ``y = (q - zero_point) * scale``,
in float32 (float16/bfloat16 inputs are computed in float32 and rounded back). A floating-point
zero-point is added before rounding, as ATen does for float zero-points. NaN in ``x`` gives NaN in ``y``
(and zero gradient); +Inf/-Inf saturate to the top/bottom level (zero gradient).
"""

from __future__ import annotations

import math
import os
from numbers import Number
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from pyquant import _extension  # noqa: F401  (loads the kernels)

__all__ = [
    "bn_stat_loss",
    "checked_mode",
    "fake_quant",
    "fake_quant_lsq",
    "fake_quant_lsq_qdrop",
    "fake_quant_pact",
    "histogram",
    "histogram_range",
    "int8_conv2d",
    "int8_add",
    "int8_linear",
    "pack_int8_weight",
    "PackedInt8Weight",
    "lsq_grad_factor",
    "range_search",
    "squant_round",
    "unpack_mask",
]

TensorOrNumber = Union[Tensor, Number]


def _require_tensor(name: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _as_param(value: TensorOrNumber, x: Tensor, name: str, dtype: torch.dtype) -> Tensor:
    """Accepts a tensor or a Python number (per-tensor convenience)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, Number):
        raise TypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")
    return torch.tensor([value], dtype=dtype, device=x.device)


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def _check_axis(axis) -> None:
    if axis is not None:
        _check_int("axis", axis)


def _affine_args(x, scale, zero_point, qmin, qmax, axis, zero_point_dtype):
    """Type checks shared by the affine wrappers; numbers become 1-element tensors on x's device."""
    _require_tensor("x", x)
    _check_int("qmin", qmin)
    _check_int("qmax", qmax)
    _check_axis(axis)
    return _as_param(scale, x, "scale", torch.float32), _as_param(zero_point, x, "zero_point", zero_point_dtype)


def checked_mode() -> bool:
    """True when ``PYQUANT_CHECK=1``: the fake-quant wrappers validate scale / zero-point / alpha values
    with tensor ops on their device and raise ``ValueError`` (one device synchronisation per call).
    Without it, CPU calls are validated on the host anyway; CUDA kernels read no parameter on the host
    and poison a channel with a bad parameter to NaN (quant_math.h make_affine_params)."""
    return os.environ.get("PYQUANT_CHECK", "") not in ("", "0")


def _check_params_on_device(op: str, name: str, scale: Tensor, zero_point: Optional[Tensor], qmin: int, qmax: int,
                            steps: int) -> None:
    """Checked mode: the rules of quant_math.h scale_is_usable / host_params, evaluated where the
    tensors live. ``steps``: the number of scale steps the largest dequantized level spans
    (qmax - qmin; PACT's alpha spans 1)."""
    s = scale.detach().float()
    ok = torch.isfinite(s) & (s > 0) & torch.isfinite(1.0 / s) & torch.isfinite(s * float(steps))
    if not bool(ok.all()):
        bad = int((~ok).reshape(-1).nonzero()[0])
        raise ValueError(f"{op}: {name} must be finite and > 0 with a finite reciprocal and finite levels "
                         f"(PYQUANT_CHECK), got {float(s.reshape(-1)[bad])} at index {bad}")
    if zero_point is not None:
        z = zero_point.detach()
        z = torch.round(z.float()) if z.is_floating_point() else z
        zok = (z >= qmin) & (z <= qmax)
        if zero_point.is_floating_point():
            zok = zok & torch.isfinite(zero_point.detach())
        if not bool(zok.all()):
            raise ValueError(f"{op}: zero_point must lie in [quant_min, quant_max] = [{qmin}, {qmax}] (PYQUANT_CHECK)")


def _mask_nbytes(numel):
    return ((numel + 63) // 64) * 8


# --------------------------------------------------------------------------------------------------
# fake_quant


def fake_quant(
    x: Tensor,
    scale: TensorOrNumber,
    zero_point: TensorOrNumber,
    qmin: int,
    qmax: int,
    axis: Optional[int] = None,
    out: Optional[Tensor] = None,
) -> Tensor:
    """Affine fake quantization, per tensor (``axis=None``) or per channel along ``axis``.

    ``scale``: float tensor with 1 element, or ``x.shape[axis]`` elements; ``zero_point``: the same
    shape, int32 (or another integer type) or float. Gradient w.r.t. ``x``: straight-through inside
    ``[qmin, qmax]``, zero outside (the mask is kept bit-packed: 1/8 byte per element). ``out=`` writes
    into an existing buffer without autograd (``out`` may be ``x`` itself).
    """
    scale, zero_point = _affine_args(x, scale, zero_point, qmin, qmax, axis, zero_point_dtype=torch.int32)
    if checked_mode():
        _check_params_on_device("fake_quant", "scale", scale, zero_point, qmin, qmax, qmax - qmin)
    if out is not None:
        _require_tensor("out", out)
        if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
            raise ValueError("fake_quant: out= does not support autograd (x or out requires grad)")
        torch.ops.pyquant.fake_quant_out(x, scale, zero_point, qmin, qmax, axis, out)
        return out
    compute_mask = torch.is_grad_enabled() and x.requires_grad
    y, _ = torch.ops.pyquant.fake_quant(x, scale, zero_point, qmin, qmax, axis, compute_mask)
    return y


@torch.library.register_fake("pyquant::fake_quant")
def _fake_quant_fake(x, scale, zero_point, quant_min, quant_max, axis=None, compute_mask=False):
    y = torch.empty_like(x)
    mask = x.new_empty((_mask_nbytes(x.numel()) if compute_mask else 0,), dtype=torch.uint8)
    return y, mask


@torch.library.register_fake("pyquant::fake_quant_out")
def _fake_quant_out_fake(x, scale, zero_point, quant_min, quant_max, axis, out):
    return None


@torch.library.register_fake("pyquant::fake_quant_mask_backward")
def _fake_quant_mask_backward_fake(grad, mask):
    return torch.empty_like(grad)


def _fake_quant_setup(ctx, inputs, output):
    y, mask = output
    ctx.save_for_backward(mask)
    ctx.y_shape = y.shape
    ctx.y_stride = y.stride()
    ctx.numel = y.numel()


def _fake_quant_backward(ctx, grad_y, grad_mask):
    (mask,) = ctx.saved_tensors
    if mask.numel() != _mask_nbytes(ctx.numel):
        raise RuntimeError(
            "fake_quant: backward needs the straight-through mask, but the op ran with compute_mask=False; "
            "call pyquant.ops.fake_quant (which sets it when x requires grad)"
        )
    if grad_y.stride() != ctx.y_stride:
        grad_y = torch.empty_strided(ctx.y_shape, ctx.y_stride, dtype=grad_y.dtype, device=grad_y.device).copy_(grad_y)
    dx = torch.ops.pyquant.fake_quant_mask_backward(grad_y, mask)
    return dx, None, None, None, None, None, None


torch.library.register_autograd("pyquant::fake_quant", _fake_quant_backward, setup_context=_fake_quant_setup)


def unpack_mask(mask: Tensor, like: Tensor) -> Tensor:
    """The bit-packed straight-through mask of ``torch.ops.pyquant.fake_quant`` as a bool tensor shaped
    (and strided) like the output ``like``."""
    bits = torch.arange(8, device=mask.device, dtype=torch.uint8)
    flat = ((mask.unsqueeze(1) >> bits) & 1).reshape(-1)[: like.numel()].bool()
    # `like` (an output of the op) is dense, so empty_like keeps its strides, and a dense tensor's
    # storage is one block in memory order: the mask's bit order.
    out = torch.empty_like(like, dtype=torch.bool)
    out.as_strided((like.numel(),), (1,)).copy_(flat)
    return out


# --------------------------------------------------------------------------------------------------
# LSQ


def lsq_grad_factor(numel: int, qmax: int) -> float:
    """LSQ's gradient scale g = 1 / sqrt(N * Q_P) (Esser et al. 2020, section 2.2); N is the number of
    elements sharing one scale (weights per channel, or activation features)."""
    return 1.0 / math.sqrt(numel * qmax)


def fake_quant_lsq(
    x: Tensor,
    scale: TensorOrNumber,
    zero_point: TensorOrNumber,
    qmin: int,
    qmax: int,
    axis: Optional[int] = None,
    grad_factor: float = 1.0,
) -> Tensor:
    """Fake quantization with learnable ``scale`` and ``zero_point`` (LSQ, Esser et al. ICLR 2020, eq. 3;
    LSQ+ for the zero-point). Same forward as :func:`fake_quant` with ``zero_point`` rounded half-to-even
    and clamped to ``[qmin, qmax]``. Gradients, scaled by ``grad_factor``:
    ``d/dscale = round(x/s) - x/s`` inside the grid, ``qmin - z`` below, ``qmax - z`` above;
    ``d/dzero_point = -scale`` outside the grid, 0 inside; ``d/dx`` straight-through inside.
    Parameter gradients are reduced per channel inside the kernel.
    """
    scale, zero_point = _affine_args(x, scale, zero_point, qmin, qmax, axis, zero_point_dtype=torch.float32)
    if checked_mode():
        _check_params_on_device("fake_quant_lsq", "scale", scale, zero_point, qmin, qmax, qmax - qmin)
    return torch.ops.pyquant.fake_quant_lsq(x, scale, zero_point, qmin, qmax, axis, float(grad_factor))


@torch.library.register_fake("pyquant::fake_quant_lsq")
def _fake_quant_lsq_fake(x, scale, zero_point, quant_min, quant_max, axis=None, grad_factor=1.0):
    return torch.empty_like(x)


@torch.library.register_fake("pyquant::fake_quant_lsq_backward")
def _fake_quant_lsq_backward_fake(grad, x, scale, zero_point, quant_min, quant_max, axis, grad_factor):
    dzp = torch.empty_like(zero_point) if zero_point.is_floating_point() else zero_point.new_empty(
        zero_point.shape, dtype=torch.float32
    )
    return torch.empty_like(x), torch.empty_like(scale), dzp


def _lsq_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis, grad_factor = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (quant_min, quant_max, axis, grad_factor)


def _lsq_backward(ctx, grad_y):
    x, scale, zero_point = ctx.saved_tensors
    quant_min, quant_max, axis, grad_factor = ctx.args
    dx, dscale, dzp = torch.ops.pyquant.fake_quant_lsq_backward(
        grad_y, x, scale, zero_point, quant_min, quant_max, axis, grad_factor
    )
    if not zero_point.is_floating_point():
        dzp = None
    return dx, dscale, dzp, None, None, None, None


torch.library.register_autograd("pyquant::fake_quant_lsq", _lsq_backward, setup_context=_lsq_setup)


# --------------------------------------------------------------------------------------------------
# LSQ with QDrop

_SEED_LIMIT = 2**63


def _check_drop_p(drop_p) -> float:
    if isinstance(drop_p, bool) or not isinstance(drop_p, Number):
        raise TypeError(f"drop_p must be a number, got {type(drop_p).__name__}")
    drop_p = float(drop_p)
    if not 0.0 <= drop_p <= 1.0:  # NaN fails too
        raise ValueError(f"fake_quant_lsq_qdrop: drop_p must be a probability in [0, 1], got {drop_p}")
    return drop_p


def _check_seed(seed) -> int:
    _check_int("seed", seed)
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"fake_quant_lsq_qdrop: seed must be in [0, 2^63), got {seed}")
    return seed


def fake_quant_lsq_qdrop(
    x: Tensor,
    scale: TensorOrNumber,
    zero_point: TensorOrNumber,
    qmin: int,
    qmax: int,
    axis: Optional[int] = None,
    grad_factor: float = 1.0,
    *,
    drop_p: float,
    seed: int,
) -> Tensor:
    """:func:`fake_quant_lsq` with QDrop (Wei et al., ICLR 2022) in the same kernel: each element passes
    through in FP32 -- ``y = x``, ``dy/dx = 1``, no contribution to the ``scale`` / ``zero_point``
    gradients -- when ``u(seed, i) < drop_p``, and is LSQ fake-quantized otherwise.

    ``u`` is a counter-based uniform on [0, 1) (resolution 2^-24) hashed from ``seed`` and the element's
    row-major flat index ``i`` (csrc/include/pyquant/qdrop_math.h; :func:`pyquant.reference.qdrop_keep_fp`
    computes the same mask in plain PyTorch): the same ``(seed, shape)`` gives the same mask on every
    device, thread count and memory layout, and the backward recomputes it instead of storing it.
    Draw a fresh ``seed`` (an int in [0, 2^63)) per call for a fresh mask. ``drop_p = 0`` is
    :func:`fake_quant_lsq` exactly; ``drop_p = 1`` is the identity.
    """
    scale, zero_point = _affine_args(x, scale, zero_point, qmin, qmax, axis, zero_point_dtype=torch.float32)
    drop_p = _check_drop_p(drop_p)
    seed = _check_seed(seed)
    if checked_mode():
        _check_params_on_device("fake_quant_lsq_qdrop", "scale", scale, zero_point, qmin, qmax, qmax - qmin)
    return torch.ops.pyquant.fake_quant_lsq_qdrop(x, scale, zero_point, qmin, qmax, axis, float(grad_factor), drop_p,
                                                  seed)


@torch.library.register_fake("pyquant::fake_quant_lsq_qdrop")
def _fake_quant_lsq_qdrop_fake(x, scale, zero_point, quant_min, quant_max, axis, grad_factor, drop_p, seed):
    return torch.empty_like(x)


@torch.library.register_fake("pyquant::fake_quant_lsq_qdrop_backward")
def _fake_quant_lsq_qdrop_backward_fake(grad, x, scale, zero_point, quant_min, quant_max, axis, grad_factor, drop_p,
                                        seed):
    return _fake_quant_lsq_backward_fake(grad, x, scale, zero_point, quant_min, quant_max, axis, grad_factor)


def _lsq_qdrop_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis, grad_factor, drop_p, seed = inputs
    ctx.save_for_backward(x, scale, zero_point)  # no mask: the backward rehashes it from the seed
    ctx.args = (quant_min, quant_max, axis, grad_factor, drop_p, seed)


def _lsq_qdrop_backward(ctx, grad_y):
    x, scale, zero_point = ctx.saved_tensors
    dx, dscale, dzp = torch.ops.pyquant.fake_quant_lsq_qdrop_backward(grad_y, x, scale, zero_point, *ctx.args)
    if not zero_point.is_floating_point():
        dzp = None
    return dx, dscale, dzp, None, None, None, None, None, None


torch.library.register_autograd("pyquant::fake_quant_lsq_qdrop", _lsq_qdrop_backward, setup_context=_lsq_qdrop_setup)


# --------------------------------------------------------------------------------------------------
# PACT


def fake_quant_pact(x: Tensor, alpha: TensorOrNumber, bits: int, axis: Optional[int] = None) -> Tensor:
    """PACT (Choi et al. 2018, eq. 1-3): ``y = round(clamp(x, 0, alpha) * n / alpha) * alpha / n`` with
    ``n = 2^bits - 1`` unsigned levels; equal to :func:`fake_quant` with ``scale = alpha / n``,
    zero-point 0 and grid ``[0, n]``. Gradients: ``dy/dx = 1`` on ``[0, alpha)``, else 0;
    ``dy/dalpha = 1`` where ``x >= alpha``, else 0 (the paper's straight-through estimate). ``alpha``
    has one element, or ``x.shape[axis]`` elements for a per-channel clip.
    """
    _require_tensor("x", x)
    _check_int("bits", bits)
    _check_axis(axis)
    alpha = _as_param(alpha, x, "alpha", torch.float32)
    if checked_mode() and isinstance(bits, int) and 1 <= bits <= 16:
        _check_params_on_device("fake_quant_pact", "alpha", alpha / float(2**bits - 1), None, 0, 2**bits - 1, 2**bits - 1)
    return torch.ops.pyquant.fake_quant_pact(x, alpha, bits, axis)


@torch.library.register_fake("pyquant::fake_quant_pact")
def _fake_quant_pact_fake(x, alpha, bits, axis=None):
    return torch.empty_like(x)


@torch.library.register_fake("pyquant::fake_quant_pact_backward")
def _fake_quant_pact_backward_fake(grad, x, alpha, bits, axis):
    return torch.empty_like(x), torch.empty_like(alpha)


def _pact_setup(ctx, inputs, output):
    x, alpha, bits, axis = inputs
    ctx.save_for_backward(x, alpha)
    ctx.args = (bits, axis)


def _pact_backward(ctx, grad_y):
    x, alpha = ctx.saved_tensors
    bits, axis = ctx.args
    dx, dalpha = torch.ops.pyquant.fake_quant_pact_backward(grad_y, x, alpha, bits, axis)
    return dx, dalpha, None, None


torch.library.register_autograd("pyquant::fake_quant_pact", _pact_backward, setup_context=_pact_setup)


# --------------------------------------------------------------------------------------------------
# Calibration: range_search and histogram


def range_search(
    x: Tensor,
    qmin: int,
    qmax: int,
    axis: Optional[int] = None,
    symmetric: bool = True,
    num_candidates: int = 100,
    p: float = 2.0,
):
    """Per-channel (``axis``) or per-tensor search over ``num_candidates`` clips for the one that
    minimises the Lp quantization error, all candidates scored in one pass over ``x``.

    Candidate k = 1..K clips at r_k = k/K of the channel's range (float32, in this order):
    symmetric: ``scale_k = (r_k * max|x_c|) / qmax``, zero-point 0; asymmetric:
    ``lo = r_k * min(min x_c, 0)``, ``hi = r_k * max(max x_c, 0)``, ``scale_k = (hi - lo) / (qmax - qmin)``,
    ``zero_point_k = clamp(qmin - round_half_even(lo / scale_k), qmin, qmax)``.
    ``errors[c, k] = sum |x - fake_quant(x; scale_k, zero_point_k)|^p`` over channel c (``max`` for
    ``p = inf``), accumulated in float64. Returns ``(scale, zero_point, errors)``: float32 ``[C]``,
    int32 ``[C]`` and float64 ``[C, K]`` (``[1]``, ``[1]``, ``[K]`` per tensor); the argmin per channel,
    ties to the larger k. An all-zero channel gets scale 1, zero-point 0. Raises ``ValueError`` for
    empty input and for NaN/Inf in ``x``. No autograd (the result is piecewise constant in ``x``).
    """
    _require_tensor("x", x)
    _check_int("qmin", qmin)
    _check_int("qmax", qmax)
    _check_axis(axis)
    _check_int("num_candidates", num_candidates)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    if isinstance(p, bool) or not isinstance(p, Number):
        raise TypeError(f"p must be a number, got {type(p).__name__}")
    return torch.ops.pyquant.range_search(x.detach(), qmin, qmax, axis, symmetric, num_candidates, float(p))


@torch.library.register_fake("pyquant::range_search")
def _range_search_fake(x, quant_min, quant_max, axis=None, symmetric=True, num_candidates=100, p=2.0):
    channels = 1 if axis is None else x.shape[axis]
    err_shape = (num_candidates,) if axis is None else (channels, num_candidates)
    return (
        x.new_empty((channels,), dtype=torch.float32),
        x.new_empty((channels,), dtype=torch.int32),
        x.new_empty(err_shape, dtype=torch.float64),
    )


def _as_bound(value, x: Tensor, name: str) -> Optional[Tensor]:
    if value is None or isinstance(value, Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, Number):
        raise TypeError(f"{name} must be a number, a tensor or None, got {type(value).__name__}")
    return torch.tensor([float(value)], dtype=torch.float32, device=x.device)


def histogram_range(
    x: Tensor,
    bins: int,
    lo: Optional[TensorOrNumber] = None,
    hi: Optional[TensorOrNumber] = None,
    axis: Optional[int] = None,
    counts: Optional[Tensor] = None,
):
    """Like :func:`histogram`, returning ``(counts, lo, hi)`` with the range used (float32, one value
    per channel). With ``lo``/``hi`` left ``None`` the op takes each channel's min and max (widened to
    ``[v - 1, v + 1]`` for a constant channel, as ``torch.histc``; by ``max(1, |v| 2^-23)`` within the
    finite floats from ``|v| >= 2^23`` on, where ``v +- 1`` rounds back to ``v``)."""
    _require_tensor("x", x)
    _check_int("bins", bins)
    _check_axis(axis)
    if counts is not None:
        _require_tensor("counts", counts)
    return torch.ops.pyquant.histogram(
        x.detach(), bins, _as_bound(lo, x, "lo"), _as_bound(hi, x, "hi"), axis, counts
    )


def histogram(
    x: Tensor,
    bins: int,
    lo: Optional[TensorOrNumber] = None,
    hi: Optional[TensorOrNumber] = None,
    axis: Optional[int] = None,
    counts: Optional[Tensor] = None,
) -> Tensor:
    """int64 counts ``[bins]`` (per tensor) or ``[channels, bins]`` (``axis``) over ``[lo, hi]``.

    Bin of x: ``clamp(int((x - lo) * bins / (hi - lo)), 0, bins - 1)`` in float32, the expression
    ``torch.histc`` uses, so counts equal ``torch.histc`` per channel for values inside the range;
    values outside go to the edge bins. Where that expression could overflow (``hi - lo`` or
    ``(hi - lo) * bins`` beyond float32, or a subnormal ``hi - lo``) it is evaluated in float64 instead
    (torch.histc itself returns garbage there). ``lo``/``hi``: numbers or tensors with 1 or C values (or both
    ``None``: the data's min/max). ``counts``: running counts to add to (accumulation across batches);
    a new tensor is returned. Raises ``ValueError`` for empty input and NaN/Inf in ``x``.
    """
    return histogram_range(x, bins, lo, hi, axis, counts)[0]


@torch.library.register_fake("pyquant::histogram")
def _histogram_fake(x, bins, lo=None, hi=None, axis=None, counts=None):
    channels = 1 if axis is None else x.shape[axis]
    shape = (bins,) if axis is None else (channels, bins)
    return (
        x.new_empty(shape, dtype=torch.int64),
        x.new_empty((channels,), dtype=torch.float32),
        x.new_empty((channels,), dtype=torch.float32),
    )
# BatchNorm-statistic loss (ZeroQ / DSG / GDFQ / Genie)


def _check_opt_tensor(name: str, value) -> None:
    if value is not None and not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")


def bn_stat_loss(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float = 1e-5,
    per_sample: bool = False,
    unbiased: bool = False,
    mean_margin: Optional[Tensor] = None,
    std_margin: Optional[Tensor] = None,
    sample_weight: Optional[Tensor] = None,
    *,
    match_var: bool = False,
) -> Tensor:
    """BatchNorm-statistic loss of a BN layer's input ``x`` [N, C, *] against its running statistics.

    Statistics are taken over every dimension but C (batch mode, GDFQ/Genie) or over the spatial
    dimensions of each sample (``per_sample=True``, ZeroQ/DSG), in float64, in one pass over ``x``::

        s_c = sqrt(running_var_c + eps); sigma = sqrt(var + eps); h(d, m) = max(|d| - m, 0)
        loss = (1/N) sum_n w_n sum_c [h(mu_nc - running_mean_c, mean_margin_c)^2 + h(sigma_nc - s_c, std_margin_c)^2]

    (batch mode: one "sample", no 1/N). ``unbiased`` selects the (M-1) variance (ZeroQ uses it);
    ``mean_margin``/``std_margin`` are DSG's per-channel slack margins (eq. 6); ``sample_weight`` [N]
    weights samples (DSG's layerwise sample enhancement). Extension: ``match_var=True`` compares
    ``var`` with ``running_var`` instead of the standard deviations (GDFQ's form; divide by C for its
    ``nn.MSELoss``). Differentiable w.r.t. ``x`` (one elementwise backward pass); the result is
    float32 (float64 for float64 inputs) and does not depend on the thread count. CPU raises
    ValueError for NaN/Inf in ``x``, negative ``running_var`` and similar; CUDA returns NaN instead
    (no host synchronisation).
    """
    _require_tensor("x", x)
    _require_tensor("running_mean", running_mean)
    _require_tensor("running_var", running_var)
    _check_opt_tensor("mean_margin", mean_margin)
    _check_opt_tensor("std_margin", std_margin)
    _check_opt_tensor("sample_weight", sample_weight)
    if isinstance(eps, bool) or not isinstance(eps, Number):
        raise TypeError(f"eps must be a number, got {type(eps).__name__}")
    loss, _ = torch.ops.pyquant.bn_stat_loss(
        x, running_mean, running_var, float(eps), bool(per_sample), bool(unbiased),
        mean_margin, std_margin, sample_weight, bool(match_var),
    )
    return loss


@torch.library.register_fake("pyquant::bn_stat_loss")
def _bn_stat_loss_fake(x, running_mean, running_var, eps=1e-5, per_sample=False, unbiased=False,
                       mean_margin=None, std_margin=None, sample_weight=None, match_var=False):
    torch._check(x.dim() >= 2, lambda: "bn_stat_loss: x must have shape [N, C, *]")
    stats = x.shape[0] * x.shape[1] if per_sample else x.shape[1]
    loss_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty((), dtype=loss_dtype), x.new_empty((stats, 4), dtype=torch.float64)


@torch.library.register_fake("pyquant::bn_stat_loss_backward")
def _bn_stat_loss_backward_fake(grad, x, stats, per_sample):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _bn_stat_loss_setup(ctx, inputs, output):
    x = inputs[0]
    per_sample = inputs[4]
    _, stats = output
    ctx.save_for_backward(x, stats)
    ctx.per_sample = per_sample
    ctx.mark_non_differentiable(stats)


def _bn_stat_loss_backward(ctx, grad_loss, grad_stats):
    x, stats = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        dx = torch.ops.pyquant.bn_stat_loss_backward(grad_loss, x, stats, ctx.per_sample)
    return dx, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("pyquant::bn_stat_loss", _bn_stat_loss_backward, setup_context=_bn_stat_loss_setup)



# --------------------------------------------------------------------------------------------------
# squant_round


def squant_round(x: Tensor, qmin: int, qmax: int, kernel_stage: bool = True, channel_stage: bool = True) -> Tensor:
    """SQuant rounding (Guo et al., ICLR 2022): integer codes, as floats of ``x``'s dtype (float32 or
    float64), of the scaled weight ``x = w / scale (+ zero_point)`` of shape [O, I, *kernel] or [O, I]
    (output channels first), after the kernel-wise (SQuant-K) and channel-wise (SQuant-C) flips.

    Every code lies in [qmin, qmax], within one level of ``round(clamp(x))``; each output channel's
    rounding-error sum ``sum(q - clamp(x))`` is within 0.5 and each kernel's is within 0.5 after
    SQuant-K (strictly within 1 after SQuant-C). ``kernel_stage=False`` / ``channel_stage=False``
    give the paper's ablations (SQuant-E = round to nearest). Algorithm and proofs:
    :mod:`pyquant.reference.squant`. Not differentiable (it returns integer codes; no autograd
    formula is registered: call it on detached weights).
    """
    _require_tensor("x", x)
    _check_int("qmin", qmin)
    _check_int("qmax", qmax)
    for name, flag in (("kernel_stage", kernel_stage), ("channel_stage", channel_stage)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    return torch.ops.pyquant.squant_round(x.detach(), qmin, qmax, kernel_stage, channel_stage)


@torch.library.register_fake("pyquant::squant_round")
def _squant_round_fake(x, quant_min, quant_max, kernel_stage=True, channel_stage=True):
    return x.new_empty(x.shape)
# ---------------------------------------------------------------------------------------------------
# Real int8: pack_int8_weight, int8_linear, int8_conv2d (u8 activations x s8 weights, int32 accumulation)

_PACKED_HEADER_BYTES = 64
_NR = 64  # output columns per weight panel


class PackedInt8Weight(NamedTuple):
    """A weight prepared for :func:`int8_linear` / :func:`int8_conv2d` by :func:`pack_int8_weight`.

    ``data``: int8 1-d tensor (64-byte header + panels of 64 output channels, ``[K/4][64][4]`` each);
    ``col_sum``: int32 ``[N]`` per-output-channel sums of the weights (the activation zero-point enters
    as ``- x_zero_point * col_sum``); ``scale``: float32 ``[N]`` weight scales; ``shape``: the original
    weight shape; ``groups``: conv groups (1 for linear)."""

    data: Tensor
    col_sum: Tensor
    scale: Tensor
    shape: Tuple[int, ...]
    groups: int


def _packed_payload_bytes(shape: Sequence[int], groups: int) -> int:
    n = shape[0]
    k = math.prod(shape[1:])
    if len(shape) == 4 and groups > 1 and groups == n and shape[1] == 1:  # depthwise: [taps][C padded to 64]
        return k * ((n + 63) // 64 * 64)
    npg = n // groups
    return groups * ((npg + _NR - 1) // _NR) * (((k + 3) // 4 + 15) // 16 * 16) * _NR * 4


def pack_int8_weight(w_q: Tensor, w_scale: TensorOrNumber, groups: int = 1) -> PackedInt8Weight:
    """Packs symmetric int8 weights once for the int8 kernels.

    ``w_q``: int8 ``[N, K]`` (linear) or ``[N, C_in / groups, kh, kw]`` (conv); ``w_scale``: float32 ``[N]``
    per-output-channel scales (or one number for all). Depthwise conv weights (``groups == N``,
    ``C_in / groups == 1``) get the depthwise kernel's layout. ``K`` (``C_in / groups * kh * kw`` for conv)
    is at most 65536 so the int32 accumulation cannot overflow."""
    _require_tensor("w_q", w_q)
    _check_int("groups", groups)
    if w_q.dtype != torch.int8:
        raise TypeError(f"pack_int8_weight: w_q must be int8, got {w_q.dtype}")
    n = w_q.shape[0] if w_q.dim() > 0 else 0
    scale = _as_param(w_scale, w_q, "w_scale", torch.float32)
    if scale.dtype != torch.float32:
        raise TypeError(f"pack_int8_weight: w_scale must be float32, got {scale.dtype}")
    if scale.numel() == 1 and n != 1:
        scale = scale.reshape(1).expand(n)
    scale = scale.reshape(-1).contiguous()
    if scale.numel() != n:
        raise ValueError(f"pack_int8_weight: w_scale must have {n} values (one per output channel), got {scale.numel()}")
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        raise ValueError("pack_int8_weight: w_scale must be finite and > 0")
    data, col_sum = torch.ops.pyquant.pack_int8_weight(w_q.detach(), groups)
    return PackedInt8Weight(data, col_sum, scale, tuple(w_q.shape), groups)


def _check_packed(op: str, w_packed) -> PackedInt8Weight:
    if not isinstance(w_packed, PackedInt8Weight):
        raise TypeError(
            f"{op}: w_packed must be a PackedInt8Weight from pyquant.ops.pack_int8_weight, got {type(w_packed).__name__}"
        )
    return w_packed


def _as_float_scale(op: str, name: str, value) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{op}: {name} must have one element, got shape {tuple(value.shape)}")
        value = float(value.item())
    if isinstance(value, bool) or not isinstance(value, Number):
        raise TypeError(f"{op}: {name} must be a number or a 1-element tensor, got {type(value).__name__}")
    return float(value)


def _as_int_zero_point(op: str, name: str, value) -> int:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_floating_point():
            raise ValueError(f"{op}: {name} must be one integer, got {value}")
        value = int(value.item())
    _check_int(name, value)
    return value


def _out_args(op: str, out_scale, out_zero_point):
    if (out_scale is None) != (out_zero_point is None):
        raise ValueError(f"{op}: give both out_scale and out_zero_point (uint8 output) or neither (float32 output)")
    if out_scale is None:
        return None, None
    return _as_float_scale(op, "out_scale", out_scale), _as_int_zero_point(op, "out_zero_point", out_zero_point)


def int8_linear(
    x_q: Tensor,
    x_scale: TensorOrNumber,
    x_zero_point: Union[int, Tensor],
    w_packed: PackedInt8Weight,
    bias: Optional[Tensor] = None,
    out_scale: Optional[TensorOrNumber] = None,
    out_zero_point: Optional[Union[int, Tensor]] = None,
    relu: bool = False,
    *,
    _kernel: str = "auto",
) -> Tensor:
    """``y = (x_q - x_zero_point) @ w_q.T`` in int32, then ``y * (x_scale * w_scale) + bias`` (ReLU
    optional) in float32; returns float32 ``[*, N]``, or uint8 requantized as
    ``clamp(round_half_even(y / out_scale) + out_zero_point, 0, 255)`` when ``out_scale`` and
    ``out_zero_point`` are given (fused: int32 never reaches memory). ``x_q``: uint8 ``[*, K]``.
    ``_kernel`` (private, for tests): "auto", "amx", "vnni", "avx2" or "scalar"."""
    op = "int8_linear"
    _require_tensor("x_q", x_q)
    w = _check_packed(op, w_packed)
    if len(w.shape) != 2:
        raise ValueError(f"{op}: w_packed holds a conv weight of shape {w.shape}; pack a 2-d [out, in] weight")
    if x_q.dim() < 1:
        raise ValueError(f"{op}: x_q must have shape [*, K], got a 0-d tensor")
    if x_q.dtype != torch.uint8:
        raise TypeError(f"{op}: x_q must be uint8, got {x_q.dtype}")
    if x_q.shape[-1] != w.shape[1]:
        raise ValueError(f"{op}: x_q has K={x_q.shape[-1]} features but the weight has K={w.shape[1]}")
    os_, oz = _out_args(op, out_scale, out_zero_point)
    lead = x_q.shape[:-1]
    y = torch.ops.pyquant.int8_linear(
        x_q.reshape(-1, x_q.shape[-1]),
        _as_float_scale(op, "x_scale", x_scale),
        _as_int_zero_point(op, "x_zero_point", x_zero_point),
        w.data, w.col_sum, w.scale, bias, os_, oz, bool(relu), _kernel,
    )
    return y.reshape(*lead, y.shape[-1])


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return tuple(v)


def int8_conv2d(
    x_q: Tensor,
    x_scale: TensorOrNumber,
    x_zero_point: Union[int, Tensor],
    w_packed: PackedInt8Weight,
    bias: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    out_scale: Optional[TensorOrNumber] = None,
    out_zero_point: Optional[Union[int, Tensor]] = None,
    relu: bool = False,
    *,
    residual: Optional[Tensor] = None,
    residual_scale: Optional[TensorOrNumber] = None,
    residual_zero_point: Optional[Union[int, Tensor]] = None,
    _kernel: str = "auto",
) -> Tensor:
    """2-d convolution of uint8 ``x_q`` (NCHW or channels_last) with a packed int8 weight; padding
    stands for the value 0 (level ``x_zero_point``). Same epilogue as :func:`int8_linear`. The output
    has the logical shape ``[N, C_out, H_out, W_out]`` in channels_last memory format.

    ``residual`` (uint8 codes of the output's shape on ``residual_scale`` / ``residual_zero_point``): fused
    conv -> add -> ReLU; ``(residual - zr) * sr`` is added to the float32 conv output (after the bias, before
    the ReLU and the requantization), so neither the conv output nor the sum exists as a float tensor."""
    op = "int8_conv2d"
    _require_tensor("x_q", x_q)
    w = _check_packed(op, w_packed)
    if len(w.shape) != 4:
        raise ValueError(f"{op}: w_packed holds a linear weight of shape {w.shape}; pack a 4-d conv weight")
    if x_q.dtype != torch.uint8:
        raise TypeError(f"{op}: x_q must be uint8, got {x_q.dtype}")
    _check_int("groups", groups)
    if groups != w.groups:
        raise ValueError(f"{op}: groups={groups} but the weight was packed with groups={w.groups}")
    if x_q.dim() != 4 or x_q.shape[1] != w.shape[1] * groups:
        raise ValueError(
            f"{op}: x_q must be [N, {w.shape[1] * groups}, H, W] for this weight, got shape {tuple(x_q.shape)}"
        )
    os_, oz = _out_args(op, out_scale, out_zero_point)
    rs, rz = 1.0, 0
    if residual is not None:
        _require_tensor("residual", residual)
        if residual_scale is None or residual_zero_point is None:
            raise ValueError(f"{op}: a residual needs residual_scale and residual_zero_point")
        rs = _as_float_scale(op, "residual_scale", residual_scale)
        rz = _as_int_zero_point(op, "residual_zero_point", residual_zero_point)
    return torch.ops.pyquant.int8_conv2d(
        x_q,
        _as_float_scale(op, "x_scale", x_scale),
        _as_int_zero_point(op, "x_zero_point", x_zero_point),
        w.data, w.col_sum, w.scale, list(w.shape[2:]), bias,
        list(_pair(stride)), list(_pair(padding)), list(_pair(dilation)), groups, os_, oz, bool(relu), _kernel,
        residual, rs, rz,
    )


def int8_add(
    a_q: Tensor,
    a_scale: TensorOrNumber,
    a_zero_point: Union[int, Tensor],
    b_q: Tensor,
    b_scale: TensorOrNumber,
    b_zero_point: Union[int, Tensor],
    out_scale: TensorOrNumber,
    out_zero_point: Union[int, Tensor],
    quant_min: int = 0,
    quant_max: int = 255,
) -> Tensor:
    """Requantizing add of two uint8 code tensors of one shape (a residual add between quantizers):
    ``clamp(round_half_even(((a - za) * sa + (b - zb) * sb) * (1 / s_out)) + z_out, quant_min, quant_max)``
    in float32 -- the fake-quant network's float add of its two dequantized inputs, quantized -- with no
    float tensor in memory. A ReLU after the add is ``quant_min = max(quant_min, out_zero_point)``; a ReLU6
    also clamps ``quant_max`` at the code of 6 (quantization is monotone). The output keeps ``a_q``'s layout."""
    op = "int8_add"
    _require_tensor("a_q", a_q)
    _require_tensor("b_q", b_q)
    for name, t in (("a_q", a_q), ("b_q", b_q)):
        if t.dtype != torch.uint8:
            raise TypeError(f"{op}: {name} must be uint8 codes, got {t.dtype}")
    if a_q.shape != b_q.shape:
        raise ValueError(f"{op}: a_q and b_q must have the same shape, got {tuple(a_q.shape)} and {tuple(b_q.shape)}")
    _check_int("quant_min", quant_min)
    _check_int("quant_max", quant_max)
    return torch.ops.pyquant.int8_add(
        a_q, _as_float_scale(op, "a_scale", a_scale), _as_int_zero_point(op, "a_zero_point", a_zero_point),
        b_q, _as_float_scale(op, "b_scale", b_scale), _as_int_zero_point(op, "b_zero_point", b_zero_point),
        _as_float_scale(op, "out_scale", out_scale), _as_int_zero_point(op, "out_zero_point", out_zero_point),
        quant_min, quant_max,
    )


@torch.library.register_fake("pyquant::int8_add")
def _int8_add_fake(a_q, a_scale, a_zero_point, b_q, b_scale, b_zero_point, out_scale, out_zero_point, quant_min=0,
                   quant_max=255):
    torch._check(a_q.shape == b_q.shape, lambda: "int8_add: a_q and b_q must have the same shape")
    return torch.empty_like(a_q, memory_format=torch.preserve_format)


@torch.library.register_fake("pyquant::pack_int8_weight")
def _pack_int8_weight_fake(w_q, groups=1):
    return (
        w_q.new_empty((_PACKED_HEADER_BYTES + _packed_payload_bytes(tuple(w_q.shape), groups),), dtype=torch.int8),
        w_q.new_empty((w_q.shape[0],), dtype=torch.int32),
    )


@torch.library.register_fake("pyquant::int8_linear")
def _int8_linear_fake(x_q, x_scale, x_zero_point, w_packed, w_col_sum, w_scale, bias=None, out_scale=None,
                      out_zero_point=None, relu=False, kernel="auto"):
    dtype = torch.uint8 if out_scale is not None else torch.float32
    return x_q.new_empty((x_q.shape[0], w_scale.shape[0]), dtype=dtype)


@torch.library.register_fake("pyquant::int8_conv2d")
def _int8_conv2d_fake(x_q, x_scale, x_zero_point, w_packed, w_col_sum, w_scale, kernel_size, bias=None, stride=(1, 1),
                      padding=(0, 0), dilation=(1, 1), groups=1, out_scale=None, out_zero_point=None, relu=False,
                      kernel="auto", residual=None, residual_scale=1.0, residual_zero_point=0):
    kh, kw = _pair(kernel_size) if len(kernel_size) == 2 else (kernel_size[0],) * 2
    sh, sw = _pair(stride) if len(stride) == 2 else (stride[0],) * 2
    ph, pw = _pair(padding) if len(padding) == 2 else (padding[0],) * 2
    dh, dw = _pair(dilation) if len(dilation) == 2 else (dilation[0],) * 2
    n, _, h, w = x_q.shape
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    dtype = torch.uint8 if out_scale is not None else torch.float32
    return x_q.new_empty((n, w_scale.shape[0], oh, ow), dtype=dtype).contiguous(memory_format=torch.channels_last)

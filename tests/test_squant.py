"""SQuant rounding: the squant_round op against the plain-PyTorch reference (bit for bit), the
CASE invariants, squant_weight, bad input, and real ResNet-20 weights."""

import os

import pytest
import torch

from pyquant import ops
from pyquant.dfq.squant import squant_codes, squant_weight
from pyquant.reference import squant as ref

SHAPES = [(1, 1, 1, 1), (3, 5, 3, 3), (7, 3, 1, 1), (16, 8, 3, 3), (5, 9, 5, 5), (4, 13), (9, 1, 3, 3), (2, 3, 2, 3, 1)]


def grid(bits, signed=True):
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def random_codes(shape, bits, seed, signed=True, overflow=1.3):
    """Scaled weights spanning the grid, some beyond it (clamped), plus exact half-way and integer values."""
    g = torch.Generator().manual_seed(seed)
    qmin, qmax = grid(bits, signed)
    mid, half = (qmin + qmax) / 2, (qmax - qmin) / 2
    x = mid + half * overflow * (2 * torch.rand(shape, generator=g) - 1)
    special = torch.rand(shape, generator=g)
    x = torch.where(special < 0.05, torch.round(x) + 0.5, x)
    x = torch.where((special > 0.05) & (special < 0.08), torch.round(x), x)
    return x, qmin, qmax


def error_sums(q, x, qmin, qmax):
    d = (q.double() - x.double().clamp(qmin, qmax)).reshape(x.shape[0], x.shape[1], -1)
    return d, d.sum(-1), d.sum((1, 2))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("stages", [(True, True), (True, False), (False, True), (False, False)])
def test_op_matches_reference(shape, bits, stages):
    for seed in range(3):
        x, qmin, qmax = random_codes(shape, bits, seed * 97 + bits, signed=seed != 1)
        if seed == 1:  # unsigned grid with the data shifted onto it, like an affine zero-point
            x = x.clamp(min=-2.0)
        got = ops.squant_round(x, qmin, qmax, *stages)
        want = ref.squant_round(x, qmin, qmax, *stages)
        assert got.dtype == x.dtype and got.shape == x.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_op_float64_and_noncontiguous():
    x, qmin, qmax = random_codes((8, 6, 3, 3), 4, 5)
    xd = x.double()
    torch.testing.assert_close(ops.squant_round(xd, qmin, qmax), ref.squant_round(xd, qmin, qmax), rtol=0, atol=0)
    xt = x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)  # dense, not contiguous
    assert not xt.is_contiguous()
    torch.testing.assert_close(ops.squant_round(xt, qmin, qmax), ops.squant_round(x, qmin, qmax), rtol=0, atol=0)


def test_thread_count_does_not_change_result():
    x, qmin, qmax = random_codes((64, 32, 3, 3), 4, 11)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.squant_round(x, qmin, qmax)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(ops.squant_round(x, qmin, qmax), one, rtol=0, atol=0)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_case_invariants(bits):
    """Both stages: channel sums within 0.5, kernel sums strictly within 1; kernel stage alone:
    kernel sums within 0.5. Every code on the grid, within one level of round(clamp(x)) and with
    |q - clamp(x)| < 1 -- also for elements clamped at qmin/qmax (overflow=2 puts many there)."""
    for seed, shape in enumerate([(32, 16, 3, 3), (17, 5, 5, 5), (10, 64), (6, 3, 7, 7)]):
        x, qmin, qmax = random_codes(shape, bits, 1000 + seed, overflow=2.0 if seed % 2 else 1.1)
        q = ops.squant_round(x, qmin, qmax)
        assert torch.equal(q, torch.round(q))
        assert q.min() >= qmin and q.max() <= qmax
        xc = x.double().clamp(qmin, qmax)
        assert (q.double() - torch.round(xc)).abs().max() <= 1
        d, kernel, channel = error_sums(q, x, qmin, qmax)
        assert d.abs().max() < 1
        assert channel.abs().max() <= 0.5
        assert kernel.abs().max() < 1
        clamped = (x < qmin) | (x > qmax)
        assert torch.equal(q[clamped], torch.round(xc).float()[clamped])  # clipped elements never move
        _, kernel_k, _ = error_sums(ops.squant_round(x, qmin, qmax, channel_stage=False), x, qmin, qmax)
        assert kernel_k.abs().max() <= 0.5
        _, _, channel_c = error_sums(ops.squant_round(x, qmin, qmax, kernel_stage=False), x, qmin, qmax)
        if shape[2:] in ((), (1,)) or len(shape) == 2:  # K = 1: the channel stage alone reaches the bound too
            assert channel_c.abs().max() <= 0.5


def test_flips_choose_elements_closest_to_half():
    """One kernel [0.4, 0.45, 0.3, 0.1]: RTN gives 0 everywhere, error sum -1.25 -> one element moves
    up, the one whose error grows least (0.45 -> 1)."""
    x = torch.tensor([[[0.4, 0.45, 0.3, 0.1]]])
    q = ops.squant_round(x, -8, 7)
    assert q.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
    # ties go to the lower index
    q = ops.squant_round(torch.tensor([[[0.3, 0.3, 0.3, 0.3]]]), -8, 7)
    assert q.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_channel_stage_reverts_over_flip():
    """Kernel A [0.35, 0.35] sums to -0.7 -> one flip up (the lower index) leaves +0.3; kernel B
    [0.45, 0] sums to -0.45 and is left alone; the channel sum -0.15 needs no move."""
    x = torch.tensor([[[0.35, 0.35], [0.45, 0.0]]])
    q = ops.squant_round(x, -8, 7)
    assert q.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    # Channel sum after K: kernels +0.3, +0.3 (=0.6 -> one move down); both candidates are reverts
    # with priority 0.65; the lower kernel index wins.
    x = torch.tensor([[[0.35, 0.35], [0.35, 0.35]]])
    q = ops.squant_round(x, -8, 7)
    assert q.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]


def test_squant_weight_rtn_equivalence_and_axis():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(12, 7, 3, 3, generator=g)
    qmin, qmax = -8, 7
    scale, zp, _ = ops.range_search(w, qmin, qmax, axis=0, symmetric=True)
    rtn = squant_weight(w, scale, zp, qmin, qmax, kernel_stage=False, channel_stage=False)
    torch.testing.assert_close(rtn, ops.fake_quant(w, scale, zp, qmin, qmax, axis=0), rtol=0, atol=0)
    out = squant_weight(w, scale, zp, qmin, qmax)
    assert out.shape == w.shape and out.dtype == w.dtype
    levels = out / scale.view(-1, 1, 1, 1)
    torch.testing.assert_close(levels, torch.round(levels), rtol=0, atol=1e-4)
    # axis=1 (e.g. a transposed conv's [I, O, kh, kw]) equals axis=0 on the transposed weight
    wt = w.transpose(0, 1)
    torch.testing.assert_close(squant_weight(wt, scale, zp, qmin, qmax, axis=1), out.transpose(0, 1), rtol=0, atol=0)
    # affine grid with per-channel zero-points: codes relative to the shifted grid
    zp_a = torch.randint(5, 10, (12,), generator=g, dtype=torch.int32)
    codes = squant_codes(w, scale, zp_a, 0, 15)
    assert codes.min() >= 0 and codes.max() <= 15
    deq = squant_weight(w, scale, zp_a, 0, 15)
    torch.testing.assert_close(deq, (codes - zp_a.view(-1, 1, 1, 1)) * scale.view(-1, 1, 1, 1), rtol=0, atol=0)
    half = squant_weight(w.half(), scale, zp, qmin, qmax)
    assert half.dtype == torch.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and a CUDA build")
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matches_cpu(shape):
    for bits in (2, 4, 8):
        x, qmin, qmax = random_codes(shape, bits, bits)
        for stages in ((True, True), (False, True), (True, False)):
            got = ops.squant_round(x.cuda(), qmin, qmax, *stages).cpu()
            torch.testing.assert_close(got, ops.squant_round(x, qmin, qmax, *stages), rtol=0, atol=0)


def test_opcheck():
    x, qmin, qmax = random_codes((6, 4, 3, 3), 4, 1)
    torch.library.opcheck(torch.ops.pyquant.squant_round.default, (x, qmin, qmax, True, True))
    torch.library.opcheck(torch.ops.pyquant.squant_round.default, (x[:, :, 0, 0].contiguous().double(), 0, 3, False, True))


def test_bad_input():
    x = torch.randn(4, 3, 3, 3)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        ops.squant_round(x.half(), -8, 7)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.squant_round(x.int(), -8, 7)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ops.squant_round(torch.randn(5), -8, 7)
    with pytest.raises(ValueError, match="must not be empty"):
        ops.squant_round(torch.randn(0, 3, 3, 3), -8, 7)
    with pytest.raises(ValueError, match="quant_min"):
        ops.squant_round(x, 7, 7)
    bad = x.clone()
    bad[1, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        ops.squant_round(bad, -8, 7)
    bad[1, 1, 1, 1] = -float("inf")
    with pytest.raises(ValueError, match="finite"):
        ops.squant_round(bad.double(), -8, 7)
    with pytest.raises(TypeError, match="qmin must be an int"):
        ops.squant_round(x, -8.0, 7)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.squant_round(x.numpy(), -8, 7)
    with pytest.raises(ValueError, match="scale must have 1 or 4"):
        squant_weight(x, torch.ones(3), 0, -8, 7)
    with pytest.raises(ValueError, match="scale must be positive"):
        squant_weight(x, torch.zeros(4), 0, -8, 7)
    with pytest.raises(ValueError, match="axis"):
        squant_weight(x, 1.0, 0, -8, 7, axis=4)
    with pytest.raises(TypeError, match="floating-point"):
        squant_weight(x.long(), 1.0, 0, -8, 7)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        squant_weight(torch.randn(4), 1.0, 0, -8, 7)


def _resnet20():
    from pyquant.data.cifar import find_shared_data
    from pyquant.models import resnet_cifar

    root = find_shared_data()
    if root is None:
        pytest.skip("shared data (ResNet-20 checkpoint) not available")
    return resnet_cifar(20, checkpoint=os.path.join(root, "resnet20-12fca82f.th"))


@pytest.mark.parametrize("bits", [3, 4])
def test_real_resnet20_weights(bits):
    """On every conv/linear weight of the real ResNet-20 at per-channel symmetric W3/W4: the op equals
    the reference, the invariants hold, and SQuant's per-channel error sums are far below RTN's."""
    model = _resnet20()
    qmin, qmax = grid(bits)
    rtn_total = squant_total = 0.0
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        w = module.weight.detach()
        scale, zp, _ = ops.range_search(w, qmin, qmax, axis=0, symmetric=True)
        x = w / scale.view((-1,) + (1,) * (w.dim() - 1))
        q = ops.squant_round(x, qmin, qmax)
        torch.testing.assert_close(q, ref.squant_round(x, qmin, qmax), rtol=0, atol=0)
        _, kernel, channel = error_sums(q, x, qmin, qmax)
        assert channel.abs().max() <= 0.5 and kernel.abs().max() < 1, name
        _, _, channel_rtn = error_sums(torch.round(x.clamp(qmin, qmax)), x, qmin, qmax)
        rtn_total += channel_rtn.abs().sum().item()
        squant_total += channel.abs().sum().item()
    assert squant_total < 0.2 * rtn_total


def test_op_matches_reference_on_mixed_magnitudes():
    """Values from 2^-40 to 4 levels in one kernel (the float64 sums are then no longer exact in every
    order, see pyquant/reference/squant.py): still bit-exact on these draws."""
    g = torch.Generator().manual_seed(2)
    for _ in range(30):
        x = torch.randn(8, 16, 3, 3, generator=g) * torch.exp2(torch.randint(-40, 3, (8, 16, 3, 3), generator=g).float())
        for stages in ((True, True), (False, True)):
            torch.testing.assert_close(ops.squant_round(x, -8, 7, *stages), ref.squant_round(x, -8, 7, *stages),
                                       rtol=0, atol=0)

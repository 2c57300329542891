"""ZeroQ mixed precision: the exact DP against brute force, the Pareto frontier, KL sensitivity."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyquant import ops
from pyquant.calib import MSEEstimator
from pyquant.mixed import allocate_bits, layer_sensitivity, pareto_frontier, plot_frontier, weight_sizes


def random_case(seed, integer_values=False):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 7, (1,), generator=g))
    all_bits = [2, 3, 4, 6, 8]
    sens, sizes = {}, {}
    for i in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        bits = sorted(torch.randperm(len(all_bits), generator=g)[:k].tolist())
        if integer_values:  # many exact ties
            vals = torch.randint(0, 4, (k,), generator=g).double().tolist()
        else:
            vals = (torch.rand(k, generator=g).double() * 10).tolist()
        sens[f"layer{i}"] = {all_bits[b]: v for b, v in zip(bits, vals)}
        sizes[f"layer{i}"] = int(torch.randint(1, 6 if integer_values else 40, (1,), generator=g))
    return sens, sizes


def brute_force(sens, sizes):
    """Every assignment as (size, total sensitivity summed in layer order, assignment)."""
    names = list(sens)
    out = []
    for combo in itertools.product(*[sorted(sens[n]) for n in names]):
        size = sum(sizes[n] * b for n, b in zip(names, combo))
        total = 0.0
        for n, b in zip(names, combo):
            total += float(sens[n][b])
        out.append((size, total, dict(zip(names, combo))))
    return out


@pytest.mark.parametrize("integer_values", [False, True])
def test_dp_equals_brute_force(integer_values):
    for seed in range(40):
        sens, sizes = random_case(seed, integer_values)
        everything = brute_force(sens, sizes)
        lo = min(p[0] for p in everything)
        hi = max(p[0] for p in everything)
        for budget in sorted({lo, hi, (lo + hi) // 2, lo + 1, hi - 1, (lo + 3 * hi) // 4}):
            if budget < lo:
                continue
            feasible = [p for p in everything if p[0] <= budget]
            best = min(p[1] for p in feasible)
            smallest = min(p[0] for p in feasible if p[1] == best)
            got = allocate_bits(sens, sizes, budget)
            size = sum(sizes[n] * b for n, b in got.items())
            total = sum(float(sens[n][b]) for n, b in got.items())
            assert set(got) == set(sens)
            assert size <= budget
            assert total == best, (seed, budget)
            assert size == smallest  # tie rule: the smallest optimal assignment


def test_infeasible_budget():
    sens = {"a": {4: 1.0, 8: 0.5}, "b": {2: 3.0, 8: 0.1}}
    sizes = {"a": 10, "b": 5}
    assert allocate_bits(sens, sizes, 50) == {"a": 4, "b": 2}
    with pytest.raises(ValueError, match="infeasible.*needs 50 bits"):
        allocate_bits(sens, sizes, 49)


def test_frontier_is_the_exact_pareto_set():
    for seed in range(30):
        sens, sizes = random_case(seed, integer_values=seed % 2 == 0)
        frontier = pareto_frontier(sens, sizes)
        sizes_f = [p[0] for p in frontier]
        sens_f = [p[1] for p in frontier]
        assert sizes_f == sorted(set(sizes_f))  # strictly increasing size
        assert all(a > b for a, b in zip(sens_f, sens_f[1:]))  # strictly decreasing sensitivity
        everything = brute_force(sens, sizes)
        for size, total, assign in frontier:
            assert size == sum(sizes[n] * b for n, b in assign.items())
            assert total == sum(float(sens[n][b]) for n, b in assign.items())
            assert not any(p[0] <= size and p[1] < total for p in everything)  # non-dominated
        # complete: every non-dominated (size, total) pair of the brute force appears
        pareto = {(s, t) for s, t, _ in everything if not any(p[0] <= s and p[1] < t or p[0] < s and p[1] <= t
                                                               for p in everything)}
        assert pareto == {(s, t) for s, t, _ in frontier}


def test_resolution_stays_within_budget():
    sens, sizes = random_case(7)
    sizes = {k: v * 37 for k, v in sizes.items()}
    everything = brute_force(sens, sizes)
    budget = (min(p[0] for p in everything) + max(p[0] for p in everything)) // 2
    got = allocate_bits(sens, sizes, budget, resolution=64)
    assert sum(sizes[n] * b for n, b in got.items()) <= budget
    exact = allocate_bits(sens, sizes, budget)
    assert sum(sens[n][b] for n, b in exact.items()) <= sum(sens[n][b] for n, b in got.items())


def test_allocation_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        allocate_bits({}, {}, 10)
    with pytest.raises(ValueError, match="no size given"):
        allocate_bits({"a": {4: 1.0}}, {}, 10)
    with pytest.raises(ValueError, match="positive int"):
        allocate_bits({"a": {4: 1.0}}, {"a": 0}, 10)
    with pytest.raises(ValueError, match="finite"):
        allocate_bits({"a": {4: math.nan}}, {"a": 1}, 10)
    with pytest.raises(TypeError, match="budget_bits"):
        allocate_bits({"a": {4: 1.0}}, {"a": 1}, "10")
    with pytest.raises(ValueError, match="resolution"):
        pareto_frontier({"a": {4: 1.0}}, {"a": 1}, resolution=0)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def small_net():
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 2.0)
    return net.train()


def test_sensitivity_on_random_net():
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = torch.randn(24, 3, 8, 8)
    sens = layer_sensitivity(net, data, bits_options=(2, 4, 8), batch_size=10, progress=False)
    assert list(sens) == ["conv1", "conv2", "fc"]
    for name, by_bits in sens.items():
        assert list(by_bits) == [2, 4, 8]
        assert all(v >= 0 for v in by_bits.values())
        assert by_bits[2] > by_bits[4] > by_bits[8] > 0, (name, by_bits)
    # the model is left exactly as it was (weights, buffers, training flag)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # Omega for one layer, computed independently: quantize only fc at 4 bit, KL(P_fp || P_q) batchmean
    net.eval()
    with torch.no_grad():
        log_p = F.log_softmax(net(data).double(), 1)
        w = net.fc.weight.detach().clone()
        scale, zp = MSEEstimator(axis=0).observe(w).qparams(-8, 7)
        net.fc.weight.copy_(ops.fake_quant(w, scale, zp, -8, 7, axis=0))
        log_q = F.log_softmax(net(data).double(), 1)
        net.fc.weight.copy_(w)
    want = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean").item()
    assert sens["fc"][4] == pytest.approx(want, rel=1e-9)
    # SQuant rounding: other values, same ordering, the model still restored
    sq = layer_sensitivity(net, data, bits_options=(2, 4, 8), rounding="squant", progress=False)
    for name in sens:
        assert sq[name][2] > sq[name][4] > sq[name][8] > 0
        assert sq[name][4] != sens[name][4]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    only = layer_sensitivity(net, data, bits_options=(3,), layers=["conv2"], progress=False)
    assert list(only) == ["conv2"] and list(only["conv2"]) == [3]
    assert weight_sizes(net) == {"conv1": 8 * 3 * 9, "conv2": 16 * 8 * 9, "fc": 160}


def test_sensitivity_bad_input():
    net = small_net()
    data = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match="bits must be in 2..8"):
        layer_sensitivity(net, data, bits_options=(1, 4), progress=False)
    with pytest.raises(ValueError, match="no module named 'nope'"):
        layer_sensitivity(net, data, layers=["nope"], progress=False)
    with pytest.raises(ValueError, match="has no weight"):
        layer_sensitivity(net, data, layers=[""], progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        layer_sensitivity(net, data[:0], progress=False)
    with pytest.raises(ValueError, match="finite"):
        layer_sensitivity(net, data * math.inf, progress=False)
    with pytest.raises(ValueError, match="rounding must be one of"):
        layer_sensitivity(net, data, rounding="floor", progress=False)
    with pytest.raises(TypeError, match="model"):
        layer_sensitivity(data, data, progress=False)


def test_plot_frontier(tmp_path):
    sens, sizes = random_case(3)
    frontier = pareto_frontier(sens, sizes)
    path = plot_frontier(frontier, str(tmp_path / "f.png"), chosen={"mid": frontier[len(frontier) // 2]})
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        plot_frontier([], str(tmp_path / "g.png"))

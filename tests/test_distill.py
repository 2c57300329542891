"""pyquant.distill: the generators on a tiny network, BN hooks, sharded output, 2-process Gloo run
under torchrun, kill + resume."""

import json
import os
import signal
import subprocess
import sys
import time
from statistics import NormalDist

import pytest
import torch
from safetensors.torch import load_file, save_file

import pyquant
from pyquant.distill import BNStatHooks, bn_layers, generate_shards, load_shards, measure_bn_loss
from pyquant.distill.dsg import lse_weights, sda_margins
from pyquant.distill.genie import swing_convolutions
from pyquant.models import resnet_cifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (3, 8, 8)


def tiny_model(seed=0):
    """ResNet-8 with random weights and realistic, distinct BN running statistics."""
    g = torch.Generator().manual_seed(seed)
    m = resnet_cifar(8)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for bn in bn_layers(m):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 2 + 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", ["zeroq", "dsg", "aac", "genie"])
def test_generator_lowers_bn_loss_and_is_deterministic(model, method):
    fn = getattr(pyquant.distill, method)
    kw = dict(batch_size=4, iterations=40, progress=False)
    if method == "genie":
        kw.update(latent_dim=16, iterations=25)
    x = fn(model, 6, SHAPE, seed=3, **kw)
    assert x.shape == (6,) + SHAPE and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, fn(model, 6, SHAPE, seed=3, **kw))
    assert not torch.equal(x, fn(model, 6, SHAPE, seed=4, **kw))
    noise = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(0))
    # Each generator lowers the loss it optimises: per-sample statistics (ZeroQ, DSG, AAC) or batch
    # statistics (Genie), against the same number of Gaussian-noise images.
    per_sample = method != "genie"
    assert measure_bn_loss(model, x, per_sample=per_sample) < 0.9 * measure_bn_loss(model, noise, per_sample=per_sample)
    assert all(p.requires_grad for p in model.parameters()), "parameters restored"
    assert not model.training


@pytest.mark.parametrize("method", ["zeroq", "dsg", "aac", "genie"])
def test_label_term_changes_the_data(model, method):
    fn = getattr(pyquant.distill, method)
    kw = dict(batch_size=4, iterations=3, seed=2, progress=False, num_classes=10)
    if method == "genie":
        kw["latent_dim"] = 16
    a = fn(model, 4, SHAPE, **kw)
    b = fn(model, 4, SHAPE, label_weight=1.0, **kw)
    assert not torch.equal(a, b) and torch.isfinite(b).all()


def test_zeroq_fused_matches_eager_hooks(model):
    a = pyquant.distill.zeroq(model, 4, SHAPE, batch_size=4, iterations=3, seed=1, progress=False)
    b = pyquant.distill.zeroq(model, 4, SHAPE, batch_size=4, iterations=3, seed=1, progress=False, backend="eager")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_zeroq_arguments(model):
    with pytest.raises(ValueError, match="num_samples"):
        pyquant.distill.zeroq(model, 0, SHAPE, batch_size=4, iterations=1)
    with pytest.raises(ValueError, match="input_shape"):
        pyquant.distill.zeroq(model, 2, (3, 0, 8), batch_size=4, iterations=1)
    with pytest.raises(TypeError, match="input_shape"):
        pyquant.distill.zeroq(model, 2, 8, batch_size=4, iterations=1)
    with pytest.raises(ValueError, match="init"):
        pyquant.distill.zeroq(model, 2, SHAPE, batch_size=4, iterations=1, init="laplace", progress=False)
    with pytest.raises(ValueError, match="no BatchNorm"):
        pyquant.distill.zeroq(torch.nn.Conv2d(3, 3, 3), 2, SHAPE, batch_size=2, iterations=1, progress=False)


def test_hooks_collect_one_loss_per_bn(model):
    x = torch.randn(2, *SHAPE)
    with BNStatHooks(model, per_sample=True) as hooks:
        model(x)
        assert len(hooks.losses) == len(bn_layers(model)) == 7
        total = hooks.total()
    manual = sum(
        pyquant.reference.bn_stat_loss(inp, bn.running_mean, bn.running_var, bn.eps, per_sample=True)
        for bn, inp in _bn_inputs(model, x)
    )
    torch.testing.assert_close(total.double(), manual, rtol=1e-6, atol=1e-6)


def _bn_inputs(model, x):
    seen = []
    handles = [bn.register_forward_pre_hook(lambda m, a: seen.append((m, a[0].detach()))) for bn in bn_layers(model)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def test_dsg_margins_and_lse():
    rv = torch.tensor([0.25, 4.0])
    delta, gamma = sda_margins(rv, 0.0, 64, 0.9)
    z = NormalDist().inv_cdf(0.95)
    torch.testing.assert_close(delta, torch.tensor([0.5, 2.0]) * z / 8)
    torch.testing.assert_close(gamma, torch.tensor([0.5, 2.0]) * z / (2 * 63) ** 0.5)
    # The percentile rule: about 90 % of per-sample means of N(0, sigma^2) data fall within delta.
    data = torch.randn(4000, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    inside = (data.mean((2, 3)).abs() <= delta[0]).float().mean()
    assert 0.87 < inside < 0.93
    w = lse_weights(7, 1, 3, "cpu")
    assert w.tolist() == [1, 2, 1, 1, 2, 1, 1]
    with pytest.raises(ValueError, match="percentile"):
        sda_margins(rv, 0.0, 64, 1.5)


def test_swing_convolution_jitters_strided_convs_only():
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, stride=2, padding=1), torch.nn.Conv2d(1, 1, 1))
    x = torch.randn(1, 1, 8, 8)
    ref = conv(x)
    torch.manual_seed(0)
    outs = []
    with swing_convolutions(conv):
        for _ in range(12):
            outs.append(conv(x))
    assert all(o.shape == ref.shape for o in outs)
    assert any(not torch.equal(o, ref) for o in outs)
    assert torch.equal(conv(x), ref), "hooks removed"


# ----------------------------------------------------------------------------------- shards and CLI


def shard_args(out_dir, ckpt, num_samples=8, shard_size=2, iterations=150):
    return ["distill", "--method", "zeroq", "--model", "resnet8", "--checkpoint", ckpt, "--input-shape", "3", "8",
            "8", "--num-samples", str(num_samples), "--shard-size", str(shard_size), "--batch-size", "2",
            "--iterations", str(iterations), "--seed", "5", "--threads", "1", "--no-progress", "--out", out_dir]


def run_cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pyquant"] + args, env=env, capture_output=True, text=True,
                          cwd=ROOT, **kw)


def _shard_meta(path):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.metadata()


def read_all(out_dir):
    names = sorted(f for f in os.listdir(out_dir) if f.endswith(".safetensors"))
    return {n: load_file(os.path.join(out_dir, n))["images"] for n in names}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "resnet8.safetensors")
    save_file(tiny_model(1).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, checkpoint):
    out = str(tmp_path_factory.mktemp("single"))
    res = run_cli(shard_args(out, checkpoint))
    assert res.returncode == 0, res.stderr
    return out


def test_single_process_run(reference_run, checkpoint):
    shards = read_all(reference_run)
    assert sorted(shards) == [f"shard-{k:05d}.safetensors" for k in range(4)]
    with open(os.path.join(reference_run, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["num_samples"] == 8 and [s["seed"] for s in manifest["shards"]] == [5, 6, 7, 8]
    meta = json.loads(json.dumps(_shard_meta(os.path.join(reference_run, "shard-00000.safetensors"))))
    assert meta["config_digest"] == manifest["config_digest"]
    assert torch.equal(load_shards(reference_run), torch.cat([shards[k] for k in sorted(shards)]))
    assert not [f for f in os.listdir(reference_run) if ".tmp." in f]
    # Shard k equals the in-process generator with seed base + k.
    model = resnet_cifar(8)
    model.load_state_dict(load_file(checkpoint))
    x = pyquant.distill.zeroq(model.eval(), 2, SHAPE, batch_size=2, iterations=150, seed=7, progress=False)
    assert torch.equal(x, shards["shard-00002.safetensors"])
    # Rerunning skips everything; a different configuration in the same folder is refused.
    res = run_cli(shard_args(reference_run, checkpoint))
    assert res.returncode == 0 and res.stdout.count("already complete") == 4, res.stdout + res.stderr
    res = run_cli(shard_args(reference_run, checkpoint, iterations=151))
    assert res.returncode != 0 and "different configuration" in res.stderr


def test_torchrun_two_gloo_processes_match_single_process(reference_run, checkpoint, tmp_path):
    out = str(tmp_path / "ddp")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    # --standalone: a free rendezvous port (a fixed one collides when two test runs share the machine).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pyquant"] + shard_args(out, checkpoint)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[rank 1] shard 1" in res.stdout and "[rank 0] shard 2" in res.stdout
    ddp, single = read_all(out), read_all(reference_run)
    assert sorted(ddp) == sorted(single)
    for name in single:
        assert torch.equal(ddp[name], single[name]), name
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["num_samples"] == 8


def test_kill_and_resume_loses_nothing(reference_run, checkpoint, tmp_path):
    out = str(tmp_path / "killed")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pyquant"] + shard_args(out, checkpoint), env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = os.path.join(out, "shard-00000.safetensors")
    deadline = time.time() + 120
    while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert 1 <= len(done_before) < 4, f"kill came too late or too early: {done_before}"
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    res = run_cli(shard_args(out, checkpoint))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("already complete") == len(done_before)
    resumed, single = read_all(out), read_all(reference_run)
    assert sorted(resumed) == sorted(single)
    for name in single:
        assert torch.equal(resumed[name], single[name]), name
    assert not [f for f in os.listdir(out) if ".tmp." in f]

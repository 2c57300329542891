"""The `pyquant` command (pyquant/cli.py, pyquant/demo.py) on tiny settings, in-process and as a subprocess; the
digits CNN, model lookup, safe checkpoint loading, evaluation data and the Markdown report behind it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import pyquant
from pyquant.cli import main
from pyquant.data import load_eval_data
from pyquant.models import CheckpointMismatchError, get_model, load_weights, read_state_dict
from pyquant.models.digits_cnn import DigitsCNN, digits_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num-samples", "16", "--iterations", "10", "--quiet"]


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    # one digits-cnn training per test session, in a private cache (never the user's)
    cache = tmp_path_factory.getbasetemp() / "pyquant-cache"
    monkeypatch.setenv("PYQUANT_CACHE", str(cache))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def run_cli(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def subprocess_cli(*argv, cache=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    if cache:
        env["PYQUANT_CACHE"] = cache
    return subprocess.run([sys.executable, "-m", "pyquant", *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


# -------------------------------------------------------------------------------------------------- the digits CNN

def test_digits_cnn_trains_deterministically_to_high_accuracy():
    from pyquant.data import evaluate_top1, load_digits_split

    a = digits_cnn(cache=False)
    b = digits_cnn(cache=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    x, y = load_digits_split("test")
    xt, _ = load_digits_split("train")
    assert x.shape == (450, 1, 8, 8) and xt.shape == (1347, 1, 8, 8)
    assert abs(float(xt.mean())) < 0.1 and abs(float(xt.std()) - 1) < 0.1  # standardized input
    assert evaluate_top1(a, x, y) > 95.0  # real held-out digits
    # the cached copy is the trained one
    c = digits_cnn()
    d = digits_cnn()
    assert all(torch.equal(v, d.state_dict()[k]) for k, v in c.state_dict().items())


# ------------------------------------------------------------------------------------------ checkpoints and lookup

def test_checkpoint_formats_load_the_same_weights(tmp_path):
    ref = DigitsCNN()
    state = ref.state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "wrapped.pt")
    torch.save(state, tmp_path / "plain.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("wrapped.pt", "plain.pth", "w.safetensors"):
        m = load_weights(DigitsCNN(), str(tmp_path / name))
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items()), name
    with pytest.raises(CheckpointMismatchError, match="shape mismatches.*conv1.weight"):
        load_weights(pyquant.models.resnet_cifar(8), str(tmp_path / "plain.pth"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_is_never_unpickled(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot be read safely"):
        read_state_dict(str(tmp_path / "evil.pt"))
    with pytest.raises(FileNotFoundError):
        read_state_dict(str(tmp_path / "missing.pt"))


def test_model_lookup(tmp_path, monkeypatch):
    m, info = get_model("digits-cnn")
    assert isinstance(m, DigitsCNN) and info.input_shape == (1, 8, 8) and info.default_eval == "digits"
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),\n"
        "                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))\n"
        "def not_a_model():\n"
        "    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m, info = get_model("my_models:tiny")
    assert isinstance(m, nn.Sequential) and not m.training
    with pytest.raises(pyquant.models.UnknownModelError, match="returned int"):
        get_model("my_models:not_a_model")
    with pytest.raises(pyquant.models.UnknownModelError, match="unknown model"):
        get_model("no-such-net")


def test_eval_data_npz_and_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (6, 5, 4, 3), dtype=np.uint8)  # NHWC
    y = np.arange(6) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    xs, ys = load_eval_data(str(tmp_path / "d.npz"), (3, 5, 4), mean, std)
    expect = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(xs, expect) and torch.equal(ys, torch.from_numpy(y))
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(x[i, :, :, :]).save(tmp_path / "imgs" / ("cat" if i < 2 else "dog") / f"{i}.png")
    xf, yf = load_eval_data(str(tmp_path / "imgs"), (3, 5, 4), mean, std)
    assert torch.allclose(xf, expect[:4]) and yf.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="the model takes|neither"):
        load_eval_data(str(tmp_path / "d.npz"), (1, 8, 8))
    # --limit takes a fixed random subset, not the first (class-sorted) images
    sub, suby = load_eval_data(str(tmp_path / "d.npz"), (3, 5, 4), mean, std, limit=3)
    assert sub.shape[0] == 3 and torch.equal(sub, load_eval_data(str(tmp_path / "d.npz"), (3, 5, 4), mean, std,
                                                                  limit=3)[0])


# --------------------------------------------------------------------------------------------------------- quantize

@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory):
    """A folder written by `pyquant quantize --out` (data-free dfq: no synthesis, a second)."""
    out = str(tmp_path_factory.mktemp("quantized"))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["quantize", "digits-cnn", "--recipe", "dfq", "--out", out, "--quiet"]) == 0
    finally:
        torch.set_num_threads(old)
    return out


def test_quantize_digits_writes_models_manifest_report_and_eval_agrees(tmp_path, capsys):
    out = tmp_path / "q"
    rc, stdout, _ = run_cli(capsys, "quantize", "digits-cnn", "--recipe", "best", "--w-bits", "4", "--a-bits", "4",
                            "--out", str(out), "--onnx", "--json", *TINY)
    assert rc == 0
    res = json.loads(stdout)  # --json: stdout is one JSON object, nothing else
    for f in ("fake_quant.safetensors", "int8.safetensors", "model.onnx", "manifest.json", "report.md",
              "report.json", "layers.png", "accuracy.png"):
        assert (out / f).is_file(), f
    assert (out / "layers.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "best" and manifest["recipe"]["num_samples"] == 16
    assert manifest["versions"]["pyquant"] == pyquant.__version__
    assert [layer["weight_bits"] for layer in manifest["layers"]] == [4, 4, 4, 4]
    acc = res["accuracy"]
    assert set(acc) == {"FP32", "fake-quant", "int8"} and acc["FP32"] > 95
    assert abs(acc["int8"] - acc["fake-quant"]) <= 1.0  # 450 images: at most a few flips
    # the saved fake-quant and int8 models, reloaded, reproduce the recorded accuracies exactly (same data, same
    # batches: the same floats), and the FP32 model named beside them its accuracy
    rc, stdout, _ = run_cli(capsys, "eval", str(out), "--fp32", "digits-cnn", "--json", "--quiet")
    ev = json.loads(stdout)
    assert rc == 0 and ev["accuracy"] == acc and ev["images"] == 450
    # fake_quant.safetensors holds the state dict under its own names (weights, quantizer scales) and the graph
    state = load_file(str(out / "fake_quant.safetensors"))
    assert "conv1.weight" in state and "conv1.weight_quantizer.scale" in state
    report = (out / "report.md").read_text()
    assert "| `conv1` | QuantConv2d | 4 | 4 |" in report and "## Wall time per step" in report


def test_quantize_input_bits_reaches_the_recipe_and_the_network_input(tmp_path, capsys):
    out = tmp_path / "q"
    rc, _, _ = run_cli(capsys, "quantize", "digits-cnn", "--recipe", "dfq", "--w-bits", "4", "--a-bits", "4",
                       "--input-bits", "8", "--out", str(out), "--quiet")
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["input_bits"] == 8
    assert "network input at 8 bit" in (out / "report.md").read_text()


def test_quantize_own_model_from_function_and_checkpoint(tmp_path, capsys, monkeypatch):
    (tmp_path / "zoo.py").write_text(
        "import torch\n"
        "def net():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),\n"
        "                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),\n"
        "                               torch.nn.Linear(8, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    zoo = importlib.import_module("zoo")
    torch.manual_seed(0)
    ref = zoo.net()
    torch.save({"model": {"_orig_mod." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "ck.pt")
    rng = np.random.RandomState(1)
    np.savez(tmp_path / "ev.npz", x=rng.randint(0, 256, (20, 12, 12, 3), dtype=np.uint8), y=rng.randint(0, 4, 20))
    rc, stdout, _ = run_cli(capsys, "quantize", "zoo:net", "--checkpoint", str(tmp_path / "ck.pt"), "--input-shape",
                            "3,12,12", "--recipe", "dfq", "--eval", str(tmp_path / "ev.npz"), "--mean", "0.5",
                            "--std", "0.25", "--out", str(tmp_path / "o"), "--json", "--quiet")
    assert rc == 0
    res = json.loads(stdout)
    assert res["input_shape"] == [3, 12, 12] and res["eval"]["images"] == 20
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] and manifest["mean"] == [0.5] and manifest["recipe"]["name"] == "dfq"
    # eval reads the .npz with the normalisation quantize was given, so it reproduces every accuracy exactly
    rc, stdout, _ = run_cli(capsys, "eval", str(tmp_path / "o"), "--fp32", "zoo:net", "--checkpoint",
                            str(tmp_path / "ck.pt"), "--json", "--quiet")
    assert rc == 0 and json.loads(stdout)["accuracy"] == res["accuracy"]
    assert set(res["accuracy"]) == {"FP32", "fake-quant", "int8"}


@pytest.mark.parametrize("argv, message", [
    (["quantize", "no-such-model"], "unknown model 'no-such-model'"),
    (["quantize", "digits-cnn", "--w-bits", "9"], "bits must be in 2..8"),
    (["quantize", "digits-cnn", "--a-bits", "1"], "bits must be in 2..8"),
    (["quantize", "digits-cnn", "--checkpoint", "/no/such/file.pt"], "checkpoint not found"),
    (["quantize", "digits-cnn", "--input-shape", "3,32,32"], "does not fit the model"),
    (["quantize", "digits-cnn", "--eval", "/no/such/data.npz"], "no such file or folder"),
    (["quantize", "digits-cnn", "--recipe", "nope"], "--recipe 'nope'"),
    (["quantize", "resnet20", "--checkpoint", "CKPT"], "does not match ResNetCifar"),
    (["quantize", "digits-cnn", "--out", "/proc/pyquant-out"], "is not writable"),
    (["eval", "/no/such/dir"], "no manifest.json"),
    (["quantize", "digits-cnn", "--avg-bits", "9"], "average bits must be a number in 2..8"),
    (["quantize", "digits-cnn", "--recipe", "dfq", "--avg-bits", "4"], "--avg-bits: the allocation measures"),
    (["quantize", "digits-cnn", "--device", "tpu"], "--device 'tpu'"),
    (["eval", "QDIR", "--fp32", "no-such-model"], "unknown model 'no-such-model'"),
    (["eval", "QDIR", "--fp32", "digits-cnn", "--checkpoint", "/no/such/file.pt"], "checkpoint not found"),
    (["eval", "QDIR", "--fp32", "resnet20", "--checkpoint", "CKPT"], "does not match ResNetCifar"),
    (["eval", "QDIR", "--eval", "/no/such/data.npz"], "no such file or folder"),
    (["eval", "QDIR", "--checkpoint", "CKPT"], "pass --fp32 too"),
    (["distill", "--model", "vgg", "--out", "OUT"], "unknown --model 'vgg'"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message, quantized_dir):
    torch.save(DigitsCNN().state_dict(), tmp_path / "digits.pt")
    paths = {"CKPT": str(tmp_path / "digits.pt"), "QDIR": quantized_dir, "OUT": str(tmp_path / "out")}
    argv = [paths.get(a, a) for a in argv]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("pyquant")


def test_mixed_precision_report_has_the_pareto_frontier(tmp_path, capsys):
    from pyquant.mixed import pareto_frontier

    out = tmp_path / "mp"
    rc, stdout, _ = run_cli(capsys, "quantize", "digits-cnn", "--recipe", "zeroq", "--avg-bits", "5", "--out",
                            str(out), "--json", *TINY)
    assert rc == 0
    res = json.loads(stdout)
    mixed = res["mixed_precision"]
    sizes = mixed["sizes"]
    bits = {layer["name"]: layer["weight_bits"] for layer in res["layers"]}
    # the allocation stays within the budget and uses more than one width
    assert sum(sizes[n] * bits[n] for n in sizes) <= 5 * sum(sizes.values()) and len(set(bits.values())) > 1
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## Mixed precision" in report and "![Pareto frontier](frontier.png)" in report
    for name, per_bits in mixed["sensitivity"].items():  # per-layer sensitivity table: every layer, its bits
        assert f"| `{name}` | {sizes[name]} | " in report and report.count(f"`{name}`") >= 2
    # the tabulated frontier is the exact Pareto frontier of the recorded sensitivities (JSON keys are strings)
    sens = {n: {int(b): v for b, v in per_bits.items()} for n, per_bits in mixed["sensitivity"].items()}
    frontier = pareto_frontier(sens, sizes)
    recorded = json.loads((out / "report.json").read_text())["mixed_precision"]["frontier"]
    assert [(p["size_bits"], p["sensitivity"]) for p in recorded] == [(p[0], p[1]) for p in frontier]
    assert f"| {frontier[-1][0] / 8 / 1024:.2f} | " in report
    # the point the model uses lies on the frontier: nothing smaller is less sensitive
    used = sum(sens[n][bits[n]] for n in sizes)
    size = sum(sizes[n] * bits[n] for n in sizes)
    assert all(not (p[0] <= size and p[1] < used - 1e-12) for p in frontier)


def test_device_cuda(tmp_path, capsys, quantized_dir):
    from pyquant.cli import pick_device

    if pyquant.build_info().get("cuda") and torch.cuda.is_available():
        assert pick_device("auto").type == "cuda"  # picked by default with CUDA kernels and a GPU
        rc, stdout, _ = run_cli(capsys, "eval", quantized_dir, "--device", "cuda", "--json", "--quiet")
        rc_cpu, stdout_cpu, _ = run_cli(capsys, "eval", quantized_dir, "--device", "cpu", "--json", "--quiet")
        assert rc == rc_cpu == 0
        gpu, cpu = json.loads(stdout)["accuracy"], json.loads(stdout_cpu)["accuracy"]
        # the int8 model moved to the GPU (packed again for the CUDA kernels) and the fake-quant one agree with the
        # CPU within two of the 450 images (float convolutions sum in another order there)
        assert gpu.keys() == cpu.keys() and all(abs(gpu[k] - cpu[k]) <= 200 / 450 + 1e-9 for k in gpu)
        return
    # no CUDA kernels or no GPU here: auto is the CPU, and asking for cuda is bad input on every subcommand
    assert pick_device("auto").type == "cpu"
    for argv in (["quantize", "digits-cnn"], ["eval", quantized_dir], ["demo", "--out", str(tmp_path / "d")],
                 ["bench"], ["distill", "--out", str(tmp_path / "s")]):
        rc, stdout, err = run_cli(capsys, *argv, "--device", "cuda")
        assert rc == 2 and stdout == "", argv
        assert len(err.strip().splitlines()) == 1 and "--device cuda:" in err and "Traceback" not in err, argv


def test_every_subcommand_takes_quiet_and_json(tmp_path, capsys, quantized_dir):
    from pyquant.cli import SUBCOMMANDS, build_parser

    parser = build_parser()
    for name, _ in SUBCOMMANDS:
        extra = {"quantize": ["digits-cnn"], "eval": [quantized_dir], "distill": ["--out", "x"]}.get(name, [])
        args = parser.parse_args([name, *extra, "--quiet", "--json"])
        assert args.quiet and args.json, name
    rc, stdout, err = run_cli(capsys, "eval", quantized_dir, "--quiet", "--json")
    assert rc == 0 and set(json.loads(stdout)["accuracy"]) == {"fake-quant", "int8"} and err == ""
    rc, stdout, _ = run_cli(capsys, "info", "--quiet")
    assert rc == 0 and len(stdout.strip().splitlines()) == 1 and pyquant.__version__ in stdout
    # distill --json: stdout holds only the final JSON line, shard lines go to stderr
    ckpt = tmp_path / "r8.safetensors"
    save_file(pyquant.models.resnet_cifar(8).state_dict(), str(ckpt))
    rc, stdout, err = run_cli(capsys, "distill", "--model", "resnet8", "--checkpoint", str(ckpt), "--num-samples",
                              "2", "--shard-size", "2", "--batch-size", "2", "--iterations", "2", "--input-shape",
                              "3", "8", "8", "--out", str(tmp_path / "s"), "--json", "--quiet")
    assert rc == 0 and json.loads(stdout)["num_samples"] == 2


def test_subprocess_quantize_quiet_prints_nothing_else(tmp_path):
    # no warnings (ours or a library's) and no progress: stdout is the JSON, stderr is empty
    p = subprocess_cli("quantize", "digits-cnn", "--w-bits", "4", "--a-bits", "4", "--num-samples", "8",
                       "--iterations", "3", "--out", str(tmp_path / "q"), "--onnx", "--json", "--quiet")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert json.loads(p.stdout)["accuracy"]["FP32"] > 95


def test_subprocess_bad_checkpoint_and_info_json(tmp_path):
    torch.save({"state_dict": {"conv1.weight": torch.zeros(3)}}, tmp_path / "bad.pt")
    p = subprocess_cli("quantize", "digits-cnn", "--checkpoint", str(tmp_path / "bad.pt"), "--quiet",
                       cache=str(tmp_path / "cache"))
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "does not match DigitsCNN" in p.stderr and "Traceback" not in p.stderr
    p = subprocess_cli("info", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["version"] == pyquant.__version__ and info["torch_runtime"] == torch.__version__
    assert info["cpu_isa"] in ("default", "avx2", "avx512") and isinstance(info["cuda"], bool)


# ----------------------------------------------------------------------------------- default job, bench, distill

def test_default_job_tiny(tmp_path, capsys):
    rc, stdout, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "d"), "--json", *TINY)
    assert rc == 0
    summary = json.loads(stdout)
    assert [(c["w_bits"], c["a_bits"]) for c in summary["configs"]] == [(8, 8), (4, 4)]
    for c in summary["configs"]:
        acc = c["accuracy"]
        assert acc["FP32"] > 95 and abs(acc["int8"] - acc["fake-quant"]) <= 1.0
        assert os.path.isfile(c["report"]) and os.path.isfile(c["files"]["int8"])
    # W8A8 data-free stays close to FP32 even on 16 synthetic samples
    assert summary["configs"][0]["accuracy"]["fake-quant"] > summary["configs"][0]["accuracy"]["FP32"] - 3
    assert (tmp_path / "d" / "summary.md").is_file()


def test_bare_pyquant_runs_the_default_job(tmp_path):
    p = subprocess_cli("--out", str(tmp_path / "d"), "--num-samples", "8", "--iterations", "3", "--quiet",
                       cache=str(tmp_path / "cache"))
    assert p.returncode == 0, p.stderr
    assert "W8A8" in p.stdout and "W4A4" in p.stdout and (tmp_path / "d" / "W4A4" / "report.md").is_file()


def test_bench_prints_ratio_table(capsys):
    rc, stdout, _ = run_cli(capsys, "bench", "--repeat", "1", "--json", "--quiet")
    assert rc == 0
    rows = json.loads(stdout)
    assert {"fake_quant per-channel 8b 32x128x28x28", "int8_conv2d 3x3 8x64x28x28"} <= {r["case"] for r in rows}
    assert all(r["pyquant_ms"] > 0 and r["baseline_ms"] > 0 and r["speedup"] > 0 for r in rows)


def test_distill_subcommand_still_registered(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--help"])
    assert exc.value.code == 0 and "--method" in capsys.readouterr().out


def test_report_write_from_python(tmp_path):
    from tests.nets import resnet8

    q = pyquant.quantize(resnet8(), "dfq", w_bits=6, a_bits=6, input_shape=(3, 8, 8), progress=False)
    path = q.quant_report.write(str(tmp_path / "r"), accuracy={"FP32": 90.0, "fake-quant": 89.5})
    text = open(path).read()
    assert text.count("| `") >= len(q.quant_report.layers)
    for r in q.quant_report.layers:
        assert f"| `{r.name}` | {r.kind} | 6 |" in text
    assert (tmp_path / "r" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["accuracy"] == {"FP32": 90.0, "fake-quant": 89.5} and len(data["layers"]) == len(q.quant_report.layers)


def test_quantize_help_names_every_recipe(capsys):
    rc, stdout, _ = run_cli(capsys, "quantize", "--help")
    assert rc == 0
    for name in pyquant.RECIPES:
        assert name in stdout, name

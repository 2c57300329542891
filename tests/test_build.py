"""Build metadata, version-mismatch warning, and the CPU-variant selection."""

import json
import os
import shutil
import subprocess
import sys

import torch

import pyquant


def test_build_info_reports_build():
    info = pyquant.build_info()
    assert info["version"] == pyquant.__version__
    assert info["torch_built"] == torch.__version__  # built against the torch the tests run with
    assert info["torch_runtime"] == torch.__version__
    assert isinstance(info["cuda"], bool)
    assert info["cpu_isa"] in info["cpu_isas_compiled"]
    expected = {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "default")
    if os.environ.get("ATEN_CPU_CAPABILITY") is None:
        assert info["cpu_isa"] == expected


def test_every_op_has_a_cpu_kernel():
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pyquant::")]
    assert names
    for name in names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name


def test_mismatched_torch_version_warns(tmp_path):
    pkg_dir = os.path.dirname(pyquant.__file__)
    copy = tmp_path / "pyquant"
    shutil.copytree(pkg_dir, copy, ignore=shutil.ignore_patterns("__pycache__"))
    meta_path = copy / "_build_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["torch_version"] = "1.0.0+elsewhere"
    meta_path.write_text(json.dumps(meta))
    code = "import warnings; warnings.simplefilter('always'); import pyquant"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert "built against torch 1.0.0+elsewhere" in proc.stderr
    assert "rebuild" in proc.stderr

"""Runs every fenced code block of README.md, so the README cannot rot.

Marker convention — an HTML comment on the line just before the opening fence (invisible on GitHub):

    <!-- readme-test: skip REASON -->        not run; pytest shows REASON (-rs). Only for installs and builds, CUDA
                                              GPUs / NCCL, runs of minutes or more, API signature listings and
                                              fragments that use names defined elsewhere. Keep these few.
    <!-- readme-test: needs-shared-data -->  run only when the shared data folder is found (PYQUANT_DATA or
                                              ../shared/data beside the checkout). Blocks that mention
                                              ``../shared/data`` get this automatically.

Which blocks run:

* ```` ```python ````: run as ``python -c`` in a fresh temporary folder (``PYTHONPATH`` = the checkout).
* ```` ```bash ```` / ``sh`` / ``shell``: run with ``bash -euo pipefail`` in a fresh temporary folder that links the
  checkout's top-level entries (``pyquant/``, ``bench/``, ``scripts/``, ...), with ``pyquant`` on ``PATH`` (a shim
  for ``python -m pyquant``) and ``python`` / ``torchrun`` from this interpreter's environment.
* ```` ```text ```` and untagged blocks are output or listings and are not run — but an untagged block whose first
  line looks like a command (``python``, ``pyquant``, ``torchrun``, ``./``, ``pip``, ...) fails
  :func:`test_command_blocks_are_tagged`: tag it ``bash`` (and mark it if it cannot run quickly).

Tiny settings, so the whole README runs in a minute or two:

* shell: every ``pyquant quantize`` / ``pyquant distill`` command (also ``-m pyquant distill``) gets
  ``--num-samples 8 --iterations 3`` (replacing the values written), ``distill`` also ``--shard-size 4
  --batch-size 4``; ``.venv/bin/pyquant`` becomes ``pyquant``. A bare ``pyquant`` (the default job) runs as written.
* python: ``pyquant.quantize`` is wrapped so the synthetic data has at most 8 samples and 3 iterations.
* ``../shared/data`` is replaced by the shared data folder found.

A new README section adds blocks that either run quickly under these rules or carry a marker with a reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from pyquant.data import find_shared_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
RUN_LANGS = {"python", "bash", "sh", "shell"}
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|needs-shared-data)\b\s*(.*?)\s*-->")
COMMAND_START = re.compile(r"^\s*(python\d?|pyquant|torchrun|\./|\.venv/|pip\d?|PYTHONPATH=|cmake|bash|source)\b")
TINY_FLAGS = {"--num-samples": "8", "--iterations": "3"}
TINY_DISTILL_FLAGS = {"--shard-size": "4", "--batch-size": "4"}

PYTHON_PRELUDE = '''
import functools as _functools, pyquant as _pyquant
_quantize = _pyquant.quantize
@_functools.wraps(_quantize)
def _tiny_quantize(*args, **kwargs):
    kwargs["num_samples"] = min(kwargs.get("num_samples", 8), 8)
    kwargs["data_iterations"] = min(kwargs.get("data_iterations", 3), 3)
    return _quantize(*args, **kwargs)
_pyquant.quantize = _tiny_quantize
'''


def readme_blocks(path: str = README):
    """[(line number of the opening fence, language, code, marker kind or None, marker reason)]."""
    lines = open(path).read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mm = MARKER.search(prev)
        blocks.append((start + 1, lang, "\n".join(lines[start + 1:j]) + "\n", mm.group(1) if mm else None,
                       mm.group(2) if mm else ""))
        i = j + 1
    return blocks


def _set_flag(command: str, flag: str, value: str) -> str:
    if re.search(rf"{flag}(\s+|=)\S+", command):
        return re.sub(rf"{flag}(\s+|=)\S+", f"{flag} {value}", command)
    return f"{command} {flag} {value}"


def tiny_shell(code: str) -> str:
    """The tiny-settings rewrite of a shell block (see the module docstring)."""
    code = code.replace("\\\n", " ").replace(".venv/bin/pyquant", "pyquant")
    out = []
    for line in code.split("\n"):
        if re.search(r"(^|[\s/])pyquant\s+(quantize|distill)\b|-m\s+pyquant\s+distill\b", line) and \
                not line.lstrip().startswith("#"):
            # keep redirections, pipes and trailing comments after the flags we add
            m = re.search(r"\s(>|\||&&|#)\s", line)
            command, tail = (line[:m.start()], line[m.start():]) if m else (line, "")
            flags = dict(TINY_FLAGS, **(TINY_DISTILL_FLAGS if "distill" in command else {}))
            for flag, value in flags.items():
                command = _set_flag(command, flag, value)
            line = command + tail
        out.append(line)
    return "\n".join(out)


def _workdir(tmp_path) -> str:
    work = tmp_path / "work"
    work.mkdir()
    for entry in os.listdir(ROOT):
        if entry.startswith(".") or entry in ("build",):
            continue
        os.symlink(os.path.join(ROOT, entry), work / entry)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "pyquant").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pyquant "$@"\n')
    (shim / "pyquant").chmod(0o755)
    return str(work)


def _env(tmp_path, cache) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(tmp_path / "bin"), os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYQUANT_CACHE"] = cache
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    data = find_shared_data()
    if data is not None:  # the blocks run in a temporary folder: ../shared/data is not beside it
        env["PYQUANT_DATA"] = data
    return env


BLOCKS = readme_blocks()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pyquant-cache"))


@pytest.mark.parametrize("line, lang, code, marker, reason",
                         [b for b in BLOCKS if b[1] in RUN_LANGS], ids=lambda v: None)
def test_readme_block(line, lang, code, marker, reason, tmp_path, cache):
    if marker == "skip":
        pytest.skip(f"README.md:{line}: {reason}")
    data = find_shared_data()
    if (marker == "needs-shared-data" or "shared/data" in code) and data is None:
        pytest.skip(f"README.md:{line}: needs the shared data folder (PYQUANT_DATA)")
    if data is not None:
        code = code.replace("../shared/data", data)
    work = _workdir(tmp_path)
    env = _env(tmp_path, cache)
    if lang == "python":
        cmd = [sys.executable, "-c", PYTHON_PRELUDE + textwrap.dedent(code)]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", tiny_shell(code)]
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"README.md:{line} failed ({lang}):\n{cmd[-1]}\n--- stdout\n{p.stdout[-3000:]}\n" \
                              f"--- stderr\n{p.stderr[-3000:]}"


def test_command_blocks_are_tagged():
    bad = [line for line, lang, code, marker, _ in BLOCKS
           if lang == "" and COMMAND_START.match(code.split("\n", 1)[0]) and marker is None]
    assert not bad, f"README.md lines {bad}: untagged blocks that look like commands; tag them ```bash (and add " \
                    f"<!-- readme-test: skip REASON --> if they cannot run in seconds)"


def test_every_skip_has_a_reason_and_most_blocks_run():
    runnable = [b for b in BLOCKS if b[1] in RUN_LANGS]
    skipped = [b for b in runnable if b[3] == "skip"]
    assert all(b[4] for b in skipped), "a skip marker without a reason"
    assert len(runnable) - len(skipped) >= 6, "the README's own tutorial blocks should run"


def test_tiny_shell_rewrite():
    src = ("pyquant quantize resnet20 --num-samples 256 --out r \\\n    --json > x.json  # note\n"
           "torchrun --nproc_per_node 2 -m pyquant distill --method dsg --num-samples 1024 --out runs/dsg\n"
           ".venv/bin/pyquant\n")
    got = tiny_shell(src).split("\n")
    assert got[0] == "pyquant quantize resnet20 --num-samples 8 --out r      --json --iterations 3 > x.json  # note"
    assert got[1] == ("torchrun --nproc_per_node 2 -m pyquant distill --method dsg --num-samples 8 --out runs/dsg "
                      "--iterations 3 --shard-size 4 --batch-size 4")
    assert got[2] == "pyquant"

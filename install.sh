#!/usr/bin/env bash
# One-command install of pyquant into a virtual environment (default ./.venv; PYQUANT_VENV overrides).
#
#   ./install.sh          torch (CPU build) + pyquant, compiled for this machine's torch
#   ./install.sh test     ... plus the test and benchmark tools
#
# torch comes first, then pyquant with --no-build-isolation so the extension is compiled against that
# torch (build isolation would download a multi-GB CUDA torch into a throw-away build environment).
# For a CUDA build: install a CUDA torch in the venv first and set FORCE_CUDA=1 (see README).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${PYQUANT_VENV:-$PWD/.venv}"
TORCH_SPEC="${PYQUANT_TORCH:-torch==2.13.0}"
EXTRAS=""
case "${1:-}" in
  "") ;;
  test) EXTRAS="[test]" ;;
  *) echo "usage: ./install.sh [test]" >&2; exit 2 ;;
esac

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# Keep a torch already in the venv (e.g. a CUDA build); otherwise take the CPU build.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi
"$PY" -m pip install --quiet ninja "setuptools>=64" wheel numpy
MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip install --quiet --no-build-isolation -e ".$EXTRAS"
"$PY" -c "import pyquant; print('pyquant', pyquant.__version__, 'installed in $VENV:', pyquant.build_info())"

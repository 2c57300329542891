#!/usr/bin/env bash
# One-command install of pyquant into a virtual environment (default ./.venv; PYQUANT_VENV overrides).
#
#   ./install.sh          torch (CPU build) + pyquant, compiled for this machine's torch
#   ./install.sh test     ... plus the test and benchmark tools
#
# torch comes first, then pyquant with --no-build-isolation so the extension is compiled against that
# torch (build isolation would download a multi-GB CUDA torch into a throw-away build environment).
# For a CUDA build: install a CUDA torch in the venv first and set FORCE_CUDA=1 (see README).
#
# The compiled extension is reused when nothing it is built from changed: after a build, the hash of csrc/,
# setup.py, the torch version and the build variables (FORCE_CUDA, TORCH_CUDA_ARCH_LIST, DEBUG) is stored in
# $VENV/pyquant-build.sha256; a later run with the same hash, pyquant/_C*.so present and pyquant importable only
# installs the (extra) dependencies listed in pyproject.toml. PYQUANT_REBUILD=1 forces a build.
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

STAMP="$VENV/pyquant-build.sha256"
build_hash() {
  "$PY" - <<'PY'
import hashlib, os, torch
h = hashlib.sha256()
files = ["setup.py"] + sorted(os.path.join(d, f) for d, _, fs in os.walk("csrc") for f in fs)
for path in files:
    h.update(path.encode() + b"\0")
    with open(path, "rb") as f:
        h.update(f.read())
for var in ("FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "DEBUG"):
    h.update(f"{var}={os.environ.get(var, '')}".encode())
h.update(torch.__version__.encode())
print(h.hexdigest(), os.getcwd())
PY
}
HASH="$(build_hash)"
if [[ "${PYQUANT_REBUILD:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]] && compgen -G "pyquant/_C*.so" >/dev/null \
    && (cd /tmp && "$PY" -c "import sys, tomllib, pyquant; sys.exit(not pyquant.__file__.startswith(sys.argv[1]))" \
        "$OLDPWD/" >/dev/null 2>&1); then
  # Same sources, same torch: keep the build and install only the dependencies pyproject.toml lists.
  DEPS="$("$PY" - "$EXTRAS" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"])
for extra in sys.argv[1].strip("[]").split(","):
    if extra:
        deps += project["optional-dependencies"][extra]
print("\n".join(deps))
PY
)"
  echo "pyquant: csrc/ unchanged since the last build; reusing the extension (PYQUANT_REBUILD=1 rebuilds)"
  mapfile -t DEP_LIST <<< "$DEPS"
  "$PY" -m pip install --quiet "${DEP_LIST[@]}"
else
  rm -f "$STAMP"
  MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip install --quiet --no-build-isolation -e ".$EXTRAS"
  echo "$HASH" > "$STAMP"
fi
# A dependency that pulls in another torch after the build leaves an extension compiled against the wrong one.
"$PY" -c "
import sys, pyquant
info = pyquant.build_info()
print('pyquant', pyquant.__version__, 'installed in $VENV:', info)
if info['torch_built'] != info['torch_runtime']:
    sys.exit('install.sh: a dependency replaced torch ' + info['torch_built'] + ' by ' + info['torch_runtime']
             + ' after pyquant was compiled; pin it or rebuild with PYQUANT_REBUILD=1')
"

#!/usr/bin/env bash
# CI "CUDA build check": compile pyquant with FORCE_CUDA=1 on a machine without a
# GPU, install it (non-editable) into a dedicated venv, then verify from outside
# the source tree that every pyquant:: op has a CUDA kernel (.ci/check_cuda_kernels.py).
#
# Run from the repository root.  Environment knobs:
#   PYQ_CUDA_VENV         venv location      (default: $HOME/.cache/pyquant/venv-cuda)
#   PYQ_TORCH_SPEC        torch requirement  (default: torch==2.14.1)
#   PYTHON                interpreter used to create the venv (default: python3)
#   TORCH_CUDA_ARCH_LIST  archs to compile   (default: "8.0;9.0")
#   MAX_JOBS              parallel compiles  (default: 2)
#   CUDA_HOME             toolkit root; auto-detected when unset/invalid
#   PYQ_CUDA_INPLACE=1    build straight from the checkout instead of a clean
#                         staging copy (a stale ./build from a CPU-only build can
#                         make setuptools skip the CUDA compile as "up-to-date").
set -euo pipefail

die() { echo "cuda_build_check: ERROR: $*" >&2; exit 1; }
log() { echo "cuda_build_check: $*" >&2; }

REPO_ROOT="$(pwd -P)"
[[ -f "$REPO_ROOT/setup.py" ]] || die "run from the repository root (no setup.py in $REPO_ROOT)"
[[ -f "$REPO_ROOT/.ci/check_cuda_kernels.py" ]] || die "missing $REPO_ROOT/.ci/check_cuda_kernels.py"

VENV="${PYQ_CUDA_VENV:-$HOME/.cache/pyquant/venv-cuda}"
TORCH_SPEC="${PYQ_TORCH_SPEC:-torch==2.14.1}"
TORCH_WANT_VER=""
[[ "$TORCH_SPEC" == torch==* ]] && TORCH_WANT_VER="${TORCH_SPEC#torch==}"
PY="$VENV/bin/python"

# ---------------------------------------------------------------- 1. venv
venv_ok() {
  [[ -x "$PY" ]] || return 1
  "$PY" - "$TORCH_WANT_VER" <<'EOF' >/dev/null 2>&1
import sys
import torch, ninja, numpy, setuptools, wheel  # noqa: F401
want = sys.argv[1]
assert not want or torch.__version__.split("+")[0] == want, torch.__version__
assert torch.version.cuda, "torch build has no CUDA"
EOF
}

if venv_ok; then
  log "reusing venv $VENV"
else
  if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" ]]; then
    die "$VENV exists but is not a venv; refusing to overwrite it (set PYQ_CUDA_VENV)"
  fi
  log "creating venv $VENV (torch install takes ~1-2 min)"
  mkdir -p "$(dirname "$VENV")"
  "${PYTHON:-python3}" -m venv --clear "$VENV"
  "$PY" -m pip install "$TORCH_SPEC" ninja numpy setuptools wheel
  venv_ok || die "venv $VENV is still not usable after install (need a CUDA build of $TORCH_SPEC)"
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"

TORCH_CUDA_VER="$("$PY" -c 'import torch; print(torch.version.cuda)')"   # e.g. 13.0
TORCH_CUDA_MAJOR="${TORCH_CUDA_VER%%.*}"
log "torch $("$PY" -c 'import torch; print(torch.__version__)') (CUDA $TORCH_CUDA_VER)"

# ---------------------------------------------------------------- 2. CUDA_HOME
# torch guesses CUDA_HOME as dirname(dirname(which nvcc)); that is wrong when
# nvcc on PATH is a wrapper script (e.g. /usr/local/bin/nvcc -> CUDA_HOME=/usr/local).
nvcc_release() { "$1/bin/nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1; }
cuda_root_ok() {
  local d="$1"
  [[ -n "$d" && -x "$d/bin/nvcc" && -f "$d/include/cuda_runtime.h" ]] || return 1
  compgen -G "$d/lib64/libcudart.so*" >/dev/null || compgen -G "$d/lib/libcudart.so*" >/dev/null || return 1
}

candidates=()
[[ -n "${CUDA_HOME:-}" ]] && candidates+=("$CUDA_HOME")
[[ -n "${CUDA_PATH:-}" ]] && candidates+=("$CUDA_PATH")
if nvcc_on_path="$(command -v nvcc 2>/dev/null)"; then
  real="$(readlink -f "$nvcc_on_path")"
  candidates+=("$(dirname "$(dirname "$real")")")
  # a shell wrapper: pull any .../bin/nvcc path out of it
  if head -c 2 "$real" | grep -q '#!'; then
    while read -r p; do candidates+=("$(dirname "$(dirname "$(readlink -f "$p")")")"); done \
      < <(grep -oE '/[^[:space:]"'"'"']*/bin/nvcc' "$real" || true)
  fi
fi
candidates+=(/usr/local/cuda-"$TORCH_CUDA_VER" /usr/local/cuda)
for d in /usr/local/cuda-"$TORCH_CUDA_MAJOR".* /usr/local/cuda-* /opt/cuda /opt/nvidia/cuda /usr/lib/cuda; do
  [[ -d "$d" ]] && candidates+=("$d")
done

CUDA_ROOT=""; FALLBACK=""
for d in "${candidates[@]}"; do
  d="$(readlink -f "$d" 2>/dev/null || true)"
  cuda_root_ok "$d" || continue
  rel="$(nvcc_release "$d")"
  if [[ "${rel%%.*}" == "$TORCH_CUDA_MAJOR" ]]; then CUDA_ROOT="$d"; break; fi
  [[ -z "$FALLBACK" ]] && FALLBACK="$d ($rel)"
done
[[ -n "$CUDA_ROOT" ]] || die "no CUDA $TORCH_CUDA_MAJOR.x toolkit found (need bin/nvcc, include/cuda_runtime.h, lib64/libcudart.so). Checked: ${candidates[*]}${FALLBACK:+; wrong major only: $FALLBACK}. Set CUDA_HOME."
export CUDA_HOME="$CUDA_ROOT"
export PATH="$CUDA_HOME/bin:$PATH"
log "CUDA_HOME=$CUDA_HOME (nvcc $(nvcc_release "$CUDA_HOME"), torch built with $TORCH_CUDA_VER)"

# ---------------------------------------------------------------- 3. header/lib paths
# ATen/cuda/CUDAContextLight.h includes cusparse.h, cublas_v2.h, cublasLt.h,
# cusolverDn.h ...  A minimal toolkit lacks them; torch's pip deps (nvidia-* cu13
# wheels) ship them under site-packages/nvidia/<cu13|cublas|...>/include.
mapfile -t NV_INC < <("$PY" - <<'EOF'
import glob, os, site, sysconfig
roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
seen = []
for r in sorted(roots):
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "include"))):
        if d not in seen:
            seen.append(d)
# put the dir holding cusparse.h (cu13 bundle, or per-lib cusparse for cu12) first
seen.sort(key=lambda d: not os.path.exists(os.path.join(d, "cusparse.h")))
print("\n".join(seen))
EOF
)
NV_LIB=()
for inc in "${NV_INC[@]}"; do [[ -d "${inc%/include}/lib" ]] && NV_LIB+=("${inc%/include}/lib"); done

INC_DIRS=("$CUDA_HOME/include" "${NV_INC[@]}")
for h in cusparse.h cublas_v2.h cublasLt.h cusolverDn.h; do
  found=""
  for d in "${INC_DIRS[@]}"; do [[ -f "$d/$h" ]] && { found="$d"; break; }; done
  [[ -n "$found" ]] || die "$h not found in CUDA_HOME/include or site-packages/nvidia/*/include (searched: ${INC_DIRS[*]}). Install the nvidia-* CUDA wheels torch depends on, or a full toolkit."
done
if ((${#NV_INC[@]})); then
  # CPATH is honoured by gcc and by nvcc's host-preprocessing; it is searched after
  # all -I dirs, so $CUDA_HOME/include (passed with -I by torch) still wins.
  CPATH_ADD="$(IFS=:; echo "${NV_INC[*]}")"
  export CPATH="$CPATH_ADD${CPATH:+:$CPATH}"
fi
# The wheels ship only versioned sonames (libcublas.so.13 ...).  Give the linker
# unversioned names in case setup.py links -lcublas/-lcusparse etc.
SHIM="$VENV/.pyq-link-shim"
rm -rf "$SHIM"; mkdir -p "$SHIM"
for libdir in "${NV_LIB[@]}"; do
  for so in "$libdir"/lib*.so.*; do
    [[ -e "$so" ]] || continue
    base="$(basename "$so")"; base="${base%%.so.*}.so"
    [[ -e "$libdir/$base" || -e "$SHIM/$base" ]] || ln -s "$so" "$SHIM/$base"
  done
done
export LIBRARY_PATH="$SHIM${LIBRARY_PATH:+:$LIBRARY_PATH}"
log "CPATH=${CPATH:-}"

# ---------------------------------------------------------------- 4. build + install
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
log "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pyq-cuda-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
if [[ "${PYQ_CUDA_INPLACE:-0}" == "1" ]]; then
  SRC="$REPO_ROOT"
else
  # clean staging copy: no stale build/, *.so or egg-info from earlier CPU builds
  SRC="$WORK/src"; mkdir -p "$SRC"
  tar -C "$REPO_ROOT" --exclude=./build --exclude=./dist --exclude='*.egg-info' \
      --exclude='*.so' --exclude='__pycache__' --exclude=./.venv -cf - . | tar -C "$SRC" -xf -
fi

"$PY" -m pip uninstall -y pyquant >/dev/null 2>&1 || true
start=$SECONDS
(cd "$SRC" && "$PY" -m pip install --no-build-isolation -v .)
log "build+install took $((SECONDS - start)) s"

# ---------------------------------------------------------------- 5. verify (outside the repo)
mkdir -p "$WORK/run"
cd "$WORK/run"
PYQ_REPO_ROOT="$REPO_ROOT" PYQ_SRC_ROOT="$SRC" "$PY" "$REPO_ROOT/.ci/check_cuda_kernels.py"

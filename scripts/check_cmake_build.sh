#!/usr/bin/env bash
# Builds pyquant._C through CMakeLists.txt (find_package(Torch)) and checks that the module it makes
# is a drop-in replacement for the setup.py build: same ops, same results.
# Run from the repository root inside the environment that has torch installed.
set -euo pipefail
ROOT="$(pwd -P)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PREFIX="$(python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
{ cmake -S "$ROOT" -B "$WORK/build" -DCMAKE_PREFIX_PATH="$PREFIX" -DPython3_EXECUTABLE="$(command -v python)" &&
  cmake --build "$WORK/build" -j "${MAX_JOBS:-2}"; } > "$WORK/cmake.log" 2>&1 || { cat "$WORK/cmake.log"; exit 1; }
mkdir -p "$WORK/pkg"
cp -r "$ROOT/pyquant" "$WORK/pkg/"
rm -f "$WORK/pkg/pyquant/"_C*.so "$WORK/pkg/pyquant/_build_meta.json"
cp "$WORK/build/"_C*.so "$WORK/pkg/pyquant/"
cd "$WORK/pkg"
python - <<'PY'
import torch, pyquant
from pyquant import ops
assert pyquant.__file__.startswith("."+"/") or "pkg" in pyquant.__file__, pyquant.__file__
x = torch.randn(8, 16, 5, 5)
s = torch.rand(16) + 0.01
z = torch.randint(-3, 3, (16,), dtype=torch.int32)
assert torch.equal(ops.fake_quant(x, s, z, -8, 7, axis=1), torch.fake_quantize_per_channel_affine(x, s, z, 1, -8, 7))
print("cmake build OK:", pyquant.build_info())
PY

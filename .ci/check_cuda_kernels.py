#!/usr/bin/env python
"""CI "CUDA build check" verifier (run by .ci/cuda_build_check.sh).

Imports the *installed* pyquant (run it from a directory outside the repo),
enumerates every operator in the ``pyquant`` namespace of the torch dispatcher and
asserts each one has a kernel for the CUDA dispatch key.  No GPU is needed: the
check only inspects the dispatcher's registration tables.

Ops count as OK when they have
  * a CUDA kernel, or
  * a CompositeExplicitAutograd(NonFunctional) kernel (device-agnostic, runs on CUDA), or
  * a CompositeImplicitAutograd kernel (decomposes into other ops; listed separately).
Anything else -> non-zero exit.  Also asserts pyquant.build_info()["cuda"] is
truthy when build_info exists.

Env: PYQ_REPO_ROOT / PYQ_SRC_ROOT -- if set, fail when pyquant was imported from
there (i.e. the source tree shadowed the installed package).
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

NS = os.environ.get("PYQ_NAMESPACE", "pyquant")
PKG = os.environ.get("PYQ_PACKAGE", "pyquant")

CUDA = "CUDA"
CEA = ("CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional")
CIA = "CompositeImplicitAutograd"
INFO_KEYS = ("CPU", "Meta")


def _fail(msg: str) -> None:
    print(f"check_cuda_kernels: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main() -> int:
    import torch

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"cuda available: {torch.cuda.is_available()}")

    try:
        pkg = importlib.import_module(PKG)
    except Exception:
        traceback.print_exc()
        _fail(f"cannot import {PKG}")
    # Make sure the compiled extension is loaded even if the package loads it lazily.
    try:
        importlib.import_module(f"{PKG}._C")
    except ModuleNotFoundError as e:
        if e.name != f"{PKG}._C":
            raise
        print(f"note: no {PKG}._C module; relying on import {PKG} to register ops")

    pkg_file = os.path.realpath(getattr(pkg, "__file__", "") or "")
    print(f"{PKG} imported from {pkg_file}")
    for var in ("PYQ_REPO_ROOT", "PYQ_SRC_ROOT"):
        root = os.environ.get(var)
        if root and pkg_file.startswith(os.path.realpath(root) + os.sep):
            _fail(f"{PKG} was imported from {root} ({var}), not from the installed package; "
                  "run this script from outside the source tree")

    # build_info()["cuda"]
    build_info = getattr(pkg, "build_info", None)
    if build_info is not None:
        info = build_info() if callable(build_info) else build_info
        print(f"build_info: {info}")
        cuda_flag = info.get("cuda") if isinstance(info, dict) else getattr(info, "cuda", None)
        if not cuda_flag:
            _fail(f"{PKG}.build_info()['cuda'] is {cuda_flag!r}: extension was built without CUDA")
    else:
        print(f"note: {PKG}.build_info not found; skipping build_info check")

    prefix = NS + "::"
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix))
    if not ops:
        _fail(f"no operators registered in namespace '{NS}' (did the extension load?)")

    has = torch._C._dispatch_has_kernel_for_dispatch_key
    cuda_ops, cea_ops, cia_ops, missing = [], [], [], []
    rows = []
    for op in ops:
        k_cuda = has(op, CUDA)
        k_cea = any(has(op, k) for k in CEA)
        k_cia = has(op, CIA)
        extra = ",".join(k for k in INFO_KEYS if has(op, k)) or "-"
        if k_cuda:
            status = "OK"
            cuda_ops.append(op)
        elif k_cea:
            status = "OK (CompositeExplicit)"
            cea_ops.append(op)
        elif k_cia:
            status = "OK (CompositeImplicit)"
            cia_ops.append(op)
        else:
            status = "MISSING CUDA"
            missing.append(op)
        rows.append((op, "y" if k_cuda else "-", "y" if k_cea else "-", "y" if k_cia else "-", extra, status))

    hdr = ("op", "CUDA", "CEA", "CIA", "other", "status")
    widths = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print()
    print(fmt.format(*hdr))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))
    print()
    print(f"{len(ops)} ops in '{NS}': {len(cuda_ops)} with CUDA kernel, "
          f"{len(cea_ops)} CompositeExplicitAutograd, {len(cia_ops)} CompositeImplicitAutograd "
          f"(device-agnostic), {len(missing)} missing")
    if cea_ops or cia_ops:
        print("device-agnostic (no dedicated CUDA kernel, accepted):")
        for op in cea_ops:
            print(f"  {op}  [CompositeExplicitAutograd]")
        for op in cia_ops:
            print(f"  {op}  [CompositeImplicitAutograd]")
    if missing:
        print("ops WITHOUT a CUDA kernel:", file=sys.stderr)
        for op in missing:
            print(f"  {op}", file=sys.stderr)
        _fail(f"{len(missing)} op(s) lack a CUDA kernel")
    print("check_cuda_kernels: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())

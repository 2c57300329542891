"""Sharded, resumable, multi-process generation (DESIGN.md section 4).

The output folder holds ``shard-00000.safetensors`` ... (tensor ``images`` plus string metadata) and a
``manifest.json``. Shard k holds samples [k * shard_size, ...) and is generated with seed
``seed + k``, independently of every other shard, so the set of shards does not depend on how many
processes made it or on interruptions. Under torchrun, rank r of W makes shards k with k mod W == r
(its first shard uses seed + r); Gloo on CPU, NCCL on GPU. Every file is written to a temporary
name in the same folder and renamed, so a killed job leaves only complete shards; a restarted job
skips the shards already on disk (after checking they belong to the same configuration).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from pyquant.distill.hooks import measure_bn_loss

MANIFEST = "manifest.json"
FORMAT = "pyquant-distill/1"


def _generators() -> Dict[str, Callable]:
    from pyquant.distill.aac import aac
    from pyquant.distill.dsg import dsg
    from pyquant.distill.genie import genie
    from pyquant.distill.zeroq import zeroq

    return {"zeroq": zeroq, "dsg": dsg, "aac": aac, "genie": genie}


GENERATORS = ("zeroq", "dsg", "aac", "genie")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomic_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_shard_meta(path: str) -> Optional[dict]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # a truncated or foreign file: regenerate it
        return None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def generate_shards(
    model: nn.Module,
    out_dir: str,
    *,
    method: str,
    num_samples: int,
    input_shape: Sequence[int],
    shard_size: int,
    batch_size: int,
    iterations: int,
    seed: int = 0,
    method_kwargs: Optional[dict] = None,
    rank: int = 0,
    world_size: int = 1,
    extra_config: Optional[dict] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> List[int]:
    """Generates this rank's missing shards into ``out_dir``; returns the shard indices it wrote."""
    gens = _generators()
    if method not in gens:
        raise ValueError(f"method must be one of {sorted(gens)}, got {method!r}")
    if shard_size < 1 or num_samples < 1:
        raise ValueError("num_samples and shard_size must be positive")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    method_kwargs = dict(method_kwargs or {})
    config = {
        "method": method,
        "num_samples": num_samples,
        "input_shape": list(input_shape),
        "shard_size": shard_size,
        "batch_size": batch_size,
        "iterations": iterations,
        "seed": seed,
        "method_kwargs": method_kwargs,
        **(extra_config or {}),
    }
    digest = config_digest(config)
    os.makedirs(out_dir, exist_ok=True)
    num_shards = (num_samples + shard_size - 1) // shard_size
    written = []
    from safetensors.torch import save

    for k in range(rank, num_shards, world_size):
        path = os.path.join(out_dir, shard_name(k))
        for stale in os.listdir(out_dir):  # partial files of a killed run
            if stale.startswith(shard_name(k) + ".tmp."):
                os.remove(os.path.join(out_dir, stale))
        if os.path.exists(path):
            meta = _read_shard_meta(path)
            if meta is not None and meta.get("config_digest") == digest:
                log(f"[rank {rank}] shard {k} already complete, skipping")
                continue
            if meta is not None and meta.get("config_digest") not in (None, digest):
                raise ValueError(
                    f"{path} was made with a different configuration (digest {meta.get('config_digest')} != "
                    f"{digest}); use a new output folder"
                )
        n = min(shard_size, num_samples - k * shard_size)
        t0 = time.perf_counter()
        images = gens[method](model, n, input_shape, batch_size=batch_size, iterations=iterations, seed=seed + k,
                              progress=progress, **method_kwargs)
        seconds = time.perf_counter() - t0
        images = images.detach().float().cpu().contiguous()
        bn_loss = measure_bn_loss(model, images.to(next(model.parameters()).device))
        meta = {
            "format": FORMAT,
            "config_digest": digest,
            "shard": str(k),
            "seed": str(seed + k),
            "num_samples": str(n),
            "bn_loss": repr(bn_loss),
            "seconds": f"{seconds:.3f}",
            "rank": str(rank),
        }
        _write_atomic_bytes(path, save({"images": images}, metadata=meta))
        written.append(k)
        log(f"[rank {rank}] shard {k}: {n} samples in {seconds:.1f} s, BN loss {bn_loss:.4f}")
    return written


def write_manifest(out_dir: str, config: dict, num_shards: int, versions: Optional[dict] = None) -> dict:
    """Scans the finished shards and writes ``manifest.json`` (temporary file + rename)."""
    shards = []
    for k in range(num_shards):
        path = os.path.join(out_dir, shard_name(k))
        meta = _read_shard_meta(path) if os.path.exists(path) else None
        if meta is None:
            raise RuntimeError(f"shard {k} is missing or unreadable in {out_dir}; rerun to complete it")
        shards.append({
            "file": shard_name(k),
            "num_samples": int(meta["num_samples"]),
            "seed": int(meta["seed"]),
            "bn_loss": float(meta["bn_loss"]),
            "seconds": float(meta.get("seconds", "nan")),
            "sha256": _sha256(path),
        })
    manifest = {
        "format": FORMAT,
        "config": config,
        "config_digest": config_digest(config),
        "versions": versions or {},
        "num_samples": sum(s["num_samples"] for s in shards),
        "shards": shards,
    }
    _write_atomic_bytes(os.path.join(out_dir, MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def load_shards(out_dir: str) -> Tensor:
    """All images of a finished run, in shard order (reads ``manifest.json``; safetensors only)."""
    from safetensors.torch import load_file

    with open(os.path.join(out_dir, MANIFEST)) as f:
        manifest = json.load(f)
    parts = [load_file(os.path.join(out_dir, s["file"]))["images"] for s in manifest["shards"]]
    return torch.cat(parts)

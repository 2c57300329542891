"""`pyquant distill`: generate synthetic calibration data into safetensors shards + a JSON manifest.

    pyquant distill --method zeroq --model resnet20 --num-samples 512 --out runs/zeroq
    torchrun --nproc_per_node 2 -m pyquant distill ...      # each rank makes its own shards

A killed run restarted with the same arguments skips finished shards and ends with the same files.
"""

from __future__ import annotations

import json
import os

import torch


def add_parser(sub):
    p = sub.add_parser("distill", help="generate synthetic data (ZeroQ, DSG, AAC, Genie) into safetensors shards")
    p.add_argument("--method", default="zeroq", choices=["zeroq", "dsg", "aac", "genie"])
    p.add_argument("--model", default="resnet20", help="resnetDEPTH (CIFAR ResNet, depth 6n+2)")
    p.add_argument("--checkpoint", default="auto",
                   help="state dict (.th/.pt via torch.load(weights_only=True), or .safetensors); 'auto': "
                        "the shared data folder's checkpoint for --model")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--input-shape", type=int, nargs="+", default=[3, 32, 32])
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress (as --no-progress)")
    p.add_argument("--json", action="store_true", help="stdout holds only the final JSON line (progress and shard "
                                                      "lines go to stderr)")
    p.set_defaults(run=run)


def _checkpoint_for(model_name: str, checkpoint: str):
    if checkpoint != "auto":
        return checkpoint
    from pyquant.data import find_shared_data

    data = find_shared_data()
    if data:
        for f in sorted(os.listdir(data)):
            if f.startswith(model_name + "-") and f.endswith(".th"):
                return os.path.join(data, f)
    from pyquant.cli import UsageError

    raise UsageError(f"no checkpoint found for {model_name}; pass --checkpoint PATH (or set PYQUANT_DATA to the "
                     f"shared data folder)")


def load_model(model_name: str, checkpoint: str, num_classes: int):
    from pyquant.models import resnet_cifar

    if not model_name.startswith("resnet") or not model_name[6:].isdigit():
        from pyquant.cli import UsageError

        raise UsageError(f"unknown --model {model_name!r} (use resnetDEPTH, e.g. resnet20)")
    model = resnet_cifar(int(model_name[6:]), num_classes=num_classes)
    path = _checkpoint_for(model_name, checkpoint)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path), strict=True)
    else:
        from pyquant.models import load_checkpoint

        model.load_state_dict(load_checkpoint(path), strict=True)
    return model.eval(), path


def run(args) -> int:
    import pyquant
    from pyquant.cli import human_output, pick_device
    from pyquant.distill.shards import generate_shards, write_manifest

    if args.threads:
        torch.set_num_threads(args.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(args.device)
    if device.type == "cuda" and device.index is None:  # under torchrun: each rank on its own GPU
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    dist = None
    if world_size > 1:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    model, ckpt = load_model(args.model, args.checkpoint, args.num_classes)
    model = model.to(device)
    config_extra = {"model": args.model, "checkpoint": os.path.basename(ckpt)}
    common = dict(method=args.method, num_samples=args.num_samples, input_shape=args.input_shape,
                  shard_size=args.shard_size, batch_size=args.batch_size, iterations=args.iterations,
                  seed=args.seed)
    try:
        with human_output(args):
            generate_shards(model, args.out, rank=rank, world_size=world_size, extra_config=config_extra,
                            progress=not (args.no_progress or args.quiet), **common)
        if dist is not None:
            dist.barrier()
        if rank == 0:
            config = {**{k: (list(v) if k == "input_shape" else v) for k, v in common.items()},
                      "method_kwargs": {}, **config_extra}
            num_shards = (args.num_samples + args.shard_size - 1) // args.shard_size
            manifest = write_manifest(args.out, config, num_shards, versions={
                "pyquant": pyquant.__version__, "torch": torch.__version__, "world_size": world_size,
                "threads": torch.get_num_threads()})
            print(json.dumps({"out": args.out, "num_samples": manifest["num_samples"],
                              "shards": len(manifest["shards"]),
                              "mean_bn_loss": sum(s["bn_loss"] for s in manifest["shards"]) / len(manifest["shards"])}))
    finally:
        if dist is not None:
            dist.destroy_process_group()
    return 0

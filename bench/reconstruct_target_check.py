"""What reconstruction trains towards after a calibration (issue 11): pyquant.finetune.reconstruct computes its
"FP32" block targets by running the prepared network with every quantizer bypassed, i.e. on each layer's
``float_weight()`` (``weight_fp`` for SQuant-rounded layers) and its current bias. After ABN those are ABN's
rescaled weights and shifted biases, not the FP32 network's. This script builds exactly that float network for
study settings with reconstruction off and reports its top-1 (dev subset) and its logits' error against FP32 on
the cached synthetic data, beside the FP32 network's.

    python bench/reconstruct_target_check.py --settings none none_best
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1, find_shared_data, load_cifar10_npz  # noqa: E402
from pyquant.models import resnet_cifar  # noqa: E402
from pyquant.quant import graph as qgraph  # noqa: E402
from quantize_table import CHECKPOINTS, synthetic_data  # noqa: E402
from reconstruct_study import CONFIGS, SETTINGS, recipe_for, subset  # noqa: E402


@torch.no_grad()
def target_network(qm):
    """The network reconstruct's targets come from: float weights as stored, current biases, no quantizer."""
    fnet = copy.deepcopy(qm)
    for m in qgraph.quant_layers(fnet).values():
        m.weight.copy_(m.float_weight())
        m.weight_quantizer.enabled = False
    for q in qgraph.act_quantizers(fnet).values():
        q.enabled = False
    return fnet


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet32", choices=sorted(CHECKPOINTS))
    p.add_argument("--config", default="W4A4", choices=list(CONFIGS))
    p.add_argument("--settings", nargs="+", default=["none", "none_best"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "pyquant_reconstruct_study"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data_dir = find_shared_data()
    images, labels = subset(*load_cifar10_npz(os.path.join(data_dir, "cifar10_test_jpeg_q75.npz")), "subset")
    model = resnet_cifar(int(args.model[6:]), checkpoint=os.path.join(data_dir, CHECKPOINTS[args.model]))
    model.eval()
    print(f"FP32: top-1 {evaluate_top1(model, images, labels):.2f}")
    for setting in args.settings:
        if SETTINGS[setting].get("reconstruct", {}) is not None:
            sys.exit(f"{setting}: pick settings with reconstruction off (the calibration reconstruct starts from)")
        recipe = recipe_for(setting, "")
        spec = types.SimpleNamespace(num_samples=recipe.num_samples, iterations=recipe.data_iterations,
                                     cache_dir=args.cache_dir)
        data, _ = synthetic_data(model, args.model, recipe.data, args.seed, spec, {})
        w, a = CONFIGS[args.config]
        q = pyquant.quantize(model, recipe, w_bits=w, a_bits=a, input_shape=(3, 32, 32), seed=args.seed, data=data)
        fnet = target_network(q)
        with torch.no_grad():
            ref = model(data)
            rel = float((fnet(data) - ref).pow(2).sum() / ref.pow(2).sum())
        print(f"{setting}: quantized top-1 {evaluate_top1(q, images, labels):.2f}; its target network: top-1 "
              f"{evaluate_top1(fnet, images, labels):.2f}, logits' relative squared error vs FP32 on the "
              f"{len(data)} synthetic samples {rel:.4f}", flush=True)


if __name__ == "__main__":
    main()

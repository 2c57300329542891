"""Where block reconstruction's gain goes (issue 11): the error of each block's output, synthetic vs real images.

For the calibrated network without reconstruction (setting ``none`` of bench/reconstruct_study.py) and for
each finished reconstruction run of that study (its last block checkpoint, loaded into the same calibrated
network), measures on the 512 ZeroQ samples the network was reconstructed on and on real CIFAR-10 images:
the relative squared error of every block's output against the FP32 network (whole quantized chain, hard
rounding, no QDrop; sum over samples of ||q - fp||^2 / sum ||fp||^2), agreement of the argmax with the FP32
network, and top-1 on real images. A gain on the synthetic samples that does not carry over to real images
is overfitting to the synthetic data. ``--revert linear conv1,linear aq_x``: also measures each reconstructed
network with the named blocks, layers or activation quantizers (comma-separated) put back to their calibrated state (weights and step sizes
as before reconstruction; no retraining). One thread.

    python bench/reconstruct_diagnose.py --settings base qdrop0 --revert linear conv1 \
        --out bench/results/reconstruct_diagnose.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
from torch import fx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1, find_shared_data, load_cifar10_npz  # noqa: E402
from pyquant.finetune.reconstruct import CHECKPOINT, _load_state, blocks  # noqa: E402
from pyquant.models import resnet_cifar  # noqa: E402
from pyquant.quant import graph as qgraph  # noqa: E402
from quantize_table import CHECKPOINTS, save_json  # noqa: E402
from reconstruct_study import recipe_for, subset  # noqa: E402


class _Recorder(fx.Interpreter):
    def __init__(self, gm, names):
        super().__init__(gm)
        self.names, self.seen = names, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.names:
            self.seen[n.name] = out.detach()
        return out


@torch.no_grad()
def block_outputs(qm, x, names, batch_size=256):
    """name -> output of that graph node for all of x (and the logits under 'logits')."""
    parts = {}
    for i in range(0, x.shape[0], batch_size):
        rec = _Recorder(qm, set(names))
        logits = rec.run(x[i:i + batch_size])
        for k, v in list(rec.seen.items()) + [("logits", logits)]:
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def float_copy(qm):
    """The calibrated network with every quantizer off: the FP32 (BN-folded) network, same node names."""
    import copy

    fp = copy.deepcopy(qm)
    qgraph.set_activation_quant(fp, False)
    for m in qgraph.quant_layers(fp).values():
        m.weight_quantizer.enabled = False
    return fp


@torch.no_grad()
def revert_blocks(qm, calibrated, units, names):
    """Puts the blocks (or single layers / activation quantizers) ``names`` of the reconstructed ``qm`` back
    to their state in ``calibrated``."""
    by_name = {b.name: b for b in units}
    layers, aqs = set(qgraph.quant_layers(qm)), set(qgraph.act_quantizers(qm))
    unknown = [n for n in names if n not in by_name and n not in layers and n not in aqs]
    if unknown:
        raise ValueError(f"--revert: unknown block(s) {unknown}; blocks are {list(by_name)}")
    revert_layers = [n for n in names if n in layers] + [l for n in names if n in by_name for l in by_name[n].layers]
    revert_aqs = [n for n in names if n in aqs] + [q for n in names if n in by_name for q in by_name[n].act_quantizers]
    for layer in revert_layers:
        m, m0 = qm.get_submodule(layer), calibrated.get_submodule(layer)
        m.weight.copy_(m0.weight)  # the FP32 weight, rounded to nearest again by its quantizer
        m.weight_quantizer.set_qparams(m0.weight_quantizer.scale.clone(), m0.weight_quantizer.zero_point.clone())
    for aq in revert_aqs:
        q0 = calibrated.get_submodule(aq)
        qm.get_submodule(aq).set_qparams(q0.scale.clone(), q0.zero_point.clone())
    qgraph.resolve_ties(qm)


def measure(qm, fp_out, x, names):
    out = block_outputs(qm, x, names)
    rel = {n: float((out[n] - fp_out[n]).pow(2).sum() / fp_out[n].pow(2).sum()) for n in names}
    agree = float((out["logits"].argmax(1) == fp_out["logits"].argmax(1)).float().mean() * 100)
    return rel, agree


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["base"])
    p.add_argument("--revert", nargs="*", default=[], help="groups of block names, comma-separated")
    p.add_argument("--model", default="resnet32")
    p.add_argument("--config", default="W4A4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "pyquant_reconstruct_study"))
    p.add_argument("--out", default="bench/results/reconstruct_diagnose.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data_dir = find_shared_data()
    images, labels = subset(*load_cifar10_npz(os.path.join(data_dir, "cifar10_test_jpeg_q75.npz")), "subset")
    model = resnet_cifar(int(args.model[6:]), checkpoint=os.path.join(data_dir, CHECKPOINTS[args.model]))
    recipe = recipe_for("none", "")
    synth = torch.load(os.path.join(args.cache_dir, f"{args.model}_{recipe.data}_s{args.seed}_n{recipe.num_samples}"
                                                    f"_it{recipe.data_iterations}.pt"), weights_only=True)
    w, a = {"W4A4": (4, 4), "W3A3": (3, 3), "W2A4": (2, 4)}[args.config]

    def calibrated():
        return pyquant.quantize(model, recipe, w_bits=w, a_bits=a, input_shape=(3, 32, 32), seed=args.seed,
                                data=synth, progress=False)

    q0 = calibrated()
    units = blocks(q0)
    names = [b.output.name for b in units]
    fp = float_copy(q0)
    fp_synth, fp_real = block_outputs(fp, synth, names), block_outputs(fp, images, names)
    results = {"blocks": [b.name for b in units], "runs": {},
               "fp32_top1": evaluate_top1(fp, images, labels)}
    runs = [("none", None)] + [(s, r) for s in args.settings if s != "none" for r in [None] + args.revert]
    for setting, revert in runs:
        if setting == "none":
            qm = q0
        else:
            key = f"{args.model}|{args.config}|{setting}|seed{args.seed}|subset"
            ckpt = os.path.join(args.cache_dir, "ckpt", key.replace("|", "_"), CHECKPOINT)
            saved = torch.load(ckpt, weights_only=True)
            if int(saved["done"]) != len(units):
                print(f"{setting}: checkpoint not finished ({saved['done']} of {len(units)} blocks), skipped")
                continue
            qm = calibrated()
            _load_state(qm, saved["state"])
            qgraph.resolve_ties(qm)
            if revert:
                revert_blocks(qm, q0, units, revert.split(","))
                setting = f"{setting} (revert {revert})"
        rel_s, agree_s = measure(qm, fp_synth, synth, names)
        rel_r, agree_r = measure(qm, fp_real, images, names)
        results["runs"][setting] = {"top1_real": evaluate_top1(qm, images, labels), "agree_fp_synth": agree_s,
                                    "agree_fp_real": agree_r, "rel_err_synth": [rel_s[n] for n in names],
                                    "rel_err_real": [rel_r[n] for n in names]}
        r = results["runs"][setting]
        print(f"{setting}: top-1 {r['top1_real']:.2f}; argmax = FP32 on synthetic {agree_s:.1f} %, real "
              f"{agree_r:.1f} %; rel. error at the last block synthetic {r['rel_err_synth'][-1]:.4f}, "
              f"real {r['rel_err_real'][-1]:.4f}", flush=True)
        save_json(args.out, results)
    base = results["runs"]["none"]
    for setting, r in results["runs"].items():
        print(f"\n{setting}: block, rel. error synthetic (x of none), real (x of none)")
        for i, b in enumerate(results["blocks"]):
            print(f"  {b:10s} {r['rel_err_synth'][i]:.4f} ({r['rel_err_synth'][i] / base['rel_err_synth'][i]:.2f})"
                  f"  {r['rel_err_real'][i]:.4f} ({r['rel_err_real'][i] / base['rel_err_real'][i]:.2f})")


if __name__ == "__main__":
    main()

"""AAC data: "accurate activation clipping" samples (He, Zhang, Wu, Zhou, "Data-Free Quantization with
Accurate Activation Clipping and Adaptive Batch Normalization", arXiv 2204.04215, section 3.2).

The paper generates data that makes the full-precision network respond strongly, so that the
activation ranges observed on it (and the clipping values calibrated from them) approach those of real
data. Its exact loss is not public; this module implements our reading of it, in the paper's terms:

    L = L_BN + alpha * L_conf - beta * L_resp
    L_BN   : per-sample BN-statistic loss (ZeroQ form)
    L_conf : cross-entropy of the network's output with its own (detached) arg-max -- a confident response
    L_resp : mean over BN layers of the per-channel maximum of the standardised BN input
             (x - mu_c) / sigma_c over the spatial positions -- a high response

with alpha = 1, beta = 0.1. Use it to set activation clipping ranges (min-max calibration on it).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyquant._guards import any_grad_mode
from pyquant.distill._loop import check_common, iterate, own_input_term, run_batches
from pyquant.distill.hooks import BNStatHooks, model_device
from pyquant.distill.zeroq import init_inputs


@any_grad_mode
def aac(
    model: nn.Module,
    num_samples: int,
    input_shape: Sequence[int],
    *,
    batch_size: int = 32,
    iterations: int = 500,
    seed: int = 0,
    confidence_weight: float = 1.0,
    response_weight: float = 0.1,
    label_weight: float = 0.0,
    num_classes: int = 0,
    lr: float = 0.5,
    init: str = "gaussian",
    backend: str = "pyquant",
    progress: bool = True,
) -> Tensor:
    """``num_samples`` AAC images for ``model`` (see the module docstring). ``label_weight > 0`` adds
    cross-entropy on random labels (optional)."""
    shape = check_common(num_samples, input_shape, batch_size, iterations, model)
    device = model_device(model)
    was_training = model.training
    model.eval()
    responses = []

    def on_input(index, bn, x):
        if response_weight == 0:
            return
        n, c = x.shape[:2]
        z = (x - bn.running_mean.view(1, c, *([1] * (x.dim() - 2)))) / torch.sqrt(
            bn.running_var + bn.eps).view(1, c, *([1] * (x.dim() - 2)))
        responses.append(z.reshape(n, c, -1).amax(dim=2).mean())

    def make_batch(n: int, b: int) -> Tensor:
        x = init_inputs(n, shape, init, device).requires_grad_()
        labels = torch.randint(0, max(num_classes, 1), (n,), device=device) if label_weight > 0 else None
        opt = torch.optim.Adam([x], lr=lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=100, min_lr=1e-4)
        with BNStatHooks(model, per_sample=True, unbiased=True, backend=backend, on_input=on_input) as hooks:
            bar = iterate(iterations, f"aac batch {b}", progress)
            for it in bar:
                opt.zero_grad(set_to_none=True)
                responses.clear()
                out = model(x)
                loss = hooks.total() + own_input_term(x)
                if confidence_weight:
                    loss = loss + confidence_weight * F.cross_entropy(out, out.argmax(1).detach())
                if responses:
                    loss = loss - response_weight * torch.stack(responses).mean()
                if labels is not None:
                    loss = loss + label_weight * F.cross_entropy(out, labels)
                loss.backward()
                opt.step()
                value = loss.item()
                sched.step(value)
                if it % 20 == 0:
                    bar.set_postfix(loss=f"{value:.4f}")
        return x

    try:
        return run_batches(num_samples, batch_size, seed, make_batch, "aac", progress)
    finally:
        responses.clear()
        model.train(was_training)

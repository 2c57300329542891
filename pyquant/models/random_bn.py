"""Non-trivial random BatchNorm statistics for untrained networks (tests, demos): with the default
running_mean 0 / running_var 1 / affine (1, 0), BN folding and BN-based steps would be no-ops."""

import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0, mean_std: float = 0.3) -> nn.Module:
    """Draws every BN layer's running mean ~ N(0, mean_std^2), running var ~ U[0.5, 1.5), weight ~
    U[0.5, 1.5) and bias ~ N(0, mean_std^2) from a generator seeded with ``seed``; returns the model in
    eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * mean_std)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * mean_std)
    return model.eval()


@torch.no_grad()
def fit_bn_statistics(model: nn.Module, input_shape, seed: int = 0, batches: int = 2, batch_size: int = 8,
                      affine_std: float = 0.2) -> nn.Module:
    """Realistic BN statistics for a randomly initialised network (e.g. a torchvision model built with
    ``weights=None``): draws each BN's weight ~ U[0.5, 1.5) and bias ~ N(0, affine_std^2), then sets its
    running mean / var to the actual statistics of its input on Gaussian images (cumulative average over
    ``batches`` batches, only the BN layers in train mode: dropout and stochastic depth stay off).
    Unlike :func:`randomize_bn` (statistics unrelated to the activations), the activations keep their
    scale through any depth, so the network's outputs depend on its input. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
        if bn.affine:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * affine_std)
        bn.train()
    try:
        for _ in range(batches):
            model(torch.randn((batch_size,) + tuple(input_shape), generator=g))
    finally:
        for bn in bns:
            bn.momentum = 0.1
    return model.eval()

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

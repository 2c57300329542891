"""Synthetic calibration data from the network itself (DESIGN.md sections 2 and 4).

Generators (one module each, named in their paper's terms): :func:`zeroq` (ZeroQ), :func:`dsg` (DSG:
slack distribution alignment + layerwise sample enhancement), :func:`aac` (AAC's highly responsive
data), :func:`genie` (Genie-D: generator + latents, swing convolutions). All match BatchNorm statistics
through the fused ``pyquant.ops.bn_stat_loss`` op via :class:`BNStatHooks`. ``pyquant distill`` (see
:mod:`pyquant.distill.shards`) writes sharded safetensors output, resumable and torchrun-parallel.
"""

from pyquant.distill.aac import aac
from pyquant.distill.dsg import dsg
from pyquant.distill.genie import genie
from pyquant.distill.hooks import BNStatHooks, bn_layers, measure_bn_loss
from pyquant.distill.shards import GENERATORS, generate_shards, load_shards
from pyquant.distill.zeroq import zeroq

__all__ = ["zeroq", "dsg", "aac", "genie", "BNStatHooks", "bn_layers", "measure_bn_loss", "GENERATORS",
           "generate_shards", "load_shards"]

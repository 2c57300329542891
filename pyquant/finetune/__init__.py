"""Training the quantized network on (synthetic) data: block reconstruction (BRECQ / Genie-M)."""

from pyquant.finetune.reconstruct import AdaRoundWeight, Block, ReconstructionError, blocks, reconstruct

__all__ = ["reconstruct", "blocks", "Block", "AdaRoundWeight", "ReconstructionError"]

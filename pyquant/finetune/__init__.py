"""Training the quantized network on (synthetic) data: block reconstruction (BRECQ / Genie-M) and
knowledge-distillation fine-tuning (GDFQ / IntraQ / HAST / SynQ style)."""

from pyquant.finetune.kd import KDError, kd_finetune, kd_loss
from pyquant.finetune.reconstruct import AdaRoundWeight, Block, ReconstructionError, blocks, reconstruct

__all__ = ["reconstruct", "blocks", "Block", "AdaRoundWeight", "ReconstructionError", "kd_finetune", "kd_loss",
           "KDError"]

"""``digits-cnn``: a small BatchNorm CNN for scikit-learn's 8x8 handwritten digits, trained by pyquant itself
(seconds on one CPU core) so the default job quantizes a real trained network with nothing downloaded.

The weights are cached as safetensors in the user's cache folder (``$PYQUANT_CACHE``, else
``$XDG_CACHE_HOME/pyquant``, else ``~/.cache/pyquant``); training is deterministic (fixed seed, one thread)."""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Bump when the architecture or the training recipe changes: cached weights of another version are not reused.
WEIGHTS_VERSION = 1
TRAIN_CONFIG = {"epochs": 30, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "seed": 0}
INPUT_SHAPE = (1, 8, 8)


class DigitsCNN(nn.Module):
    """conv3x3(16)-BN-ReLU, conv3x3(32)-BN-ReLU, max-pool 2, conv3x3(32)-BN-ReLU, global average pool, linear(10)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.pool(self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cache_dir() -> str:
    """Where pyquant caches what it makes (trained digits weights)."""
    if os.environ.get("PYQUANT_CACHE"):
        return os.environ["PYQUANT_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pyquant")


def train_digits_cnn(progress: bool = False) -> nn.Module:
    """A DigitsCNN trained on the 1,347 training digits (SGD + Nesterov, one-cycle LR), in eval mode.
    Deterministic: fixed seed, one thread, fixed data order."""
    from pyquant.data.digits import load_digits_split

    cfg = TRAIN_CONFIG
    x, y = load_digits_split("train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the caller's thread count
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(cfg["seed"])
            model = DigitsCNN()
            opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                  weight_decay=cfg["weight_decay"], nesterov=True)
            steps_per_epoch = (x.shape[0] + cfg["batch_size"] - 1) // cfg["batch_size"]
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch)
            order = torch.Generator().manual_seed(cfg["seed"])
            from tqdm.auto import tqdm

            model.train()
            for _ in tqdm(range(cfg["epochs"]), desc="train digits-cnn", unit="epoch", disable=not progress,
                          leave=False):
                perm = torch.randperm(x.shape[0], generator=order)
                for i in range(0, x.shape[0], cfg["batch_size"]):
                    idx = perm[i:i + cfg["batch_size"]]
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _weights_path(directory: str) -> str:
    return os.path.join(directory, f"digits-cnn-v{WEIGHTS_VERSION}.safetensors")


def digits_cnn(checkpoint: Optional[str] = None, *, progress: bool = False, cache: bool = True) -> nn.Module:
    """The trained digits CNN in eval mode. ``checkpoint``: a state dict file to load instead. Otherwise the cached
    weights (trained once, then reused; ``cache=False`` retrains without touching the cache)."""
    from safetensors.torch import load_file, save_file

    model = DigitsCNN()
    if checkpoint is not None:
        from pyquant.models.checkpoint import load_weights

        load_weights(model, checkpoint)
        return model.eval()
    path = _weights_path(cache_dir())
    if cache and os.path.isfile(path):
        model.load_state_dict(load_file(path), strict=True)
        return model.eval()
    model = train_digits_cnn(progress=progress)
    if cache:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp,
                      metadata={"pyquant.digits_cnn": json.dumps({"version": WEIGHTS_VERSION, **TRAIN_CONFIG,
                                                                  "torch": torch.__version__})})
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
        except OSError:
            pass  # an unwritable cache only costs retraining next time
    return model

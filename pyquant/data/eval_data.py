"""Evaluation data for the ``pyquant`` command: ``digits`` (the built-in held-out digits), an ``.npz`` with ``x``
and ``y``, or an image folder with one sub-folder per class (sorted names = class indices, as torchvision's
ImageFolder).

uint8 images are scaled to [0, 1] and normalised with the model's ``mean`` / ``std``; float arrays in an ``.npz``
are taken as already normalised unless ``mean`` / ``std`` are given explicitly (``normalize_float=True``).
``limit``: a fixed random subset of that many images (seed 0, kept in file order), not the first ones: data sets are
often sorted by class."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def load_eval_data(spec: str, input_shape: Sequence[int], mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None, *, normalize_float: bool = False,
                   limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x float32 [N, *input_shape], y int64 [N])``. ``ValueError`` / ``FileNotFoundError`` name the problem."""
    shape = tuple(int(s) for s in input_shape)
    if spec == "digits":
        from pyquant.data.digits import load_digits_split

        x, y = load_digits_split("test")
    elif os.path.isdir(spec):
        x, y = _image_folder(spec, shape, limit)
        x = _normalize(x, mean, std, spec)
    elif os.path.isfile(spec):
        if not spec.endswith(".npz"):
            raise ValueError(f"--eval {spec}: expected an .npz file (arrays x, y) or an image folder")
        with np.load(spec) as data:
            if "x" not in data or "y" not in data:
                raise ValueError(f"--eval {spec}: the .npz needs arrays 'x' and 'y', it has {sorted(data.keys())}")
            xs, ys = data["x"], data["y"]
            if limit and limit < len(xs):
                keep = _subset(len(xs), limit)
                xs, ys = xs[keep], ys[keep]
        x = _to_nchw(xs, shape, spec)
        if xs.dtype == np.uint8:
            x = _normalize(x.float().div_(255.0), mean, std, spec)
        else:
            x = x.float()
            if normalize_float:
                x = _normalize(x, mean, std, spec)
        y = torch.from_numpy(np.asarray(ys)).long()
    else:
        raise FileNotFoundError(f"--eval {spec}: no such file or folder (or 'digits' for the built-in digits)")
    if limit and limit < x.shape[0]:
        keep = torch.from_numpy(_subset(x.shape[0], limit))
        x, y = x[keep], y[keep]
    if x.shape[1:] != shape:
        raise ValueError(f"--eval {spec}: images are {tuple(x.shape[1:])}, the model takes {shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"--eval {spec}: {x.shape[0]} images but labels of shape {tuple(y.shape)}")
    return x.contiguous(), y


def _subset(n: int, k: int) -> np.ndarray:
    return np.sort(np.random.RandomState(0).permutation(n)[:k])


def _to_nchw(xs: np.ndarray, shape, where) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(xs))
    if x.dim() == 3 and len(shape) == 3 and shape[0] == 1:
        x = x.unsqueeze(1)
    if x.dim() == 4 and tuple(x.shape[1:]) != shape and tuple(x.shape[1:]) == (shape[1], shape[2], shape[0]):
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"--eval {where}: x has shape {tuple(xs.shape)}, which is neither N x {shape} nor NHWC of it")
    return x


def _normalize(x: torch.Tensor, mean, std, where) -> torch.Tensor:
    if mean is None and std is None:
        return x
    c = x.shape[1]
    m = torch.tensor(mean if mean is not None else [0.0] * c, dtype=torch.float32)
    s = torch.tensor(std if std is not None else [1.0] * c, dtype=torch.float32)
    if m.numel() == 1:
        m = m.expand(c)
    if s.numel() == 1:
        s = s.expand(c)
    if m.numel() != c or s.numel() != c:
        raise ValueError(f"--mean/--std: need 1 or {c} values for {where}, got {m.numel()} and {s.numel()}")
    if bool((s <= 0).any()):
        raise ValueError("--std: values must be positive")
    return (x - m.view(1, c, 1, 1)) / s.view(1, c, 1, 1)


def _image_folder(root: str, shape, limit) -> Tuple[torch.Tensor, torch.Tensor]:
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("--eval with an image folder needs Pillow: pip install pillow") from None
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise ValueError(f"--eval {root}: no images in class sub-folders (expected {root}/CLASS/IMAGE.png)")
    if limit and limit < len(files):
        files = [files[i] for i in _subset(len(files), limit)]
    c, h, w = shape
    from tqdm.auto import tqdm

    images = []
    for path, _ in tqdm(files, desc="read images", unit="img", leave=False, mininterval=1.0,
                        disable=len(files) < 500):
        img = Image.open(path).convert("L" if c == 1 else "RGB")
        if img.size != (w, h):  # resize the shorter side to 1/0.875 of the target, then centre-crop (ImageNet style)
            scale = max(h, w) / 0.875 / min(img.size)
            img = img.resize((max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale))),
                             Image.BILINEAR)
            left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
            img = img.crop((left, top, left + w, top + h))
        a = np.asarray(img, dtype=np.uint8)
        images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(images)).float().div_(255.0)
    return x, torch.tensor([i for _, i in files], dtype=torch.int64)

"""Augmentation: the presets the authors' recipes use, and batched versions for whole uint8 batches on a device.

In-memory datasets (CIFAR) are augmented as whole batches on the training device: crop and flip, colour jitter,
random erasing and cutout are each a few kernel launches for a batch of 8 or of 8,192, with per-image random
parameters and no Python loop over images. Folder datasets run the torchvision v2 policies (RandAugment,
TrivialAugment, AutoAugment) per image in the DataLoader workers, then the same erasing and cutout functions.

Every function draws from an explicit generator (or the default one, which the folder path seeds per image), in
a fixed order, so a step's augmentation is the same whether or not the steps before it ran in this process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "AUG_POLICIES",
    "AugmentSpec",
    "batch_augmentation",
    "color_jitter",
    "cutout",
    "derive_seed",
    "random_crop_flip",
    "random_erasing",
]

# "none": crop and flip only. The policies beyond colorjitter need per-image PIL-style ops (folder datasets).
AUG_POLICIES = ("none", "colorjitter", "randaugment", "trivialaugment", "autoaugment")
BATCHED_POLICIES = ("none", "colorjitter")
COLOR_JITTER = 0.4  # brightness, contrast and saturation, as megvii's ShuffleNet recipe


@dataclass(frozen=True)
class AugmentSpec:
    """What to add to the crop and flip: a policy, RandAugment's settings, random erasing and cutout."""

    policy: str = "none"
    ops: int = 2  # RandAugment: operations per image
    magnitude: int = 9  # RandAugment: magnitude on torchvision's 0-30 scale
    random_erasing: float = 0.0  # probability per image
    cutout: int = 0  # side of the square, in pixels; 0: off


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends only on ``keys`` (e.g. seed, epoch, step), well mixed.

    Seeding a generator per step (or per sample) from this, instead of drawing from one long stream, is what
    makes augmentation resumable: step ``k`` of epoch ``e`` gets the same random numbers whether or not the
    steps before it ran in this process.
    """
    if any(key < 0 for key in keys):
        raise ValueError(f"derive_seed keys must be non-negative integers, got {keys}")
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def random_crop_flip(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding``, crop a random HxW window per image, and mirror each image with probability 0.5.

    ``images`` is (B, C, H, W) of any dtype (uint8 in training) on any device; the result has the same shape,
    dtype and device. Crop offsets are uniform in ``[0, 2 * padding]`` along each axis, independently per image.
    Random numbers come from ``generator`` (the device's default generator when ``None``), which must live on
    the same device type as ``images`` (e.g. ``torch.Generator(device="cuda")`` for CUDA batches); the draws are
    row offsets, then column offsets, then flips, so a given generator state always gives the same output.
    """
    if images.ndim != 4:
        raise ValueError(f"random_crop_flip expects a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"random_crop_flip padding must be >= 0, got {padding}")
    device = images.device
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"random_crop_flip got images on {device} but a generator on {generator.device}; "
            f"create it with torch.Generator(device={device.type!r})"
        )
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images

    span = 2 * padding + 1
    top = torch.randint(0, span, (batch,), generator=generator, device=device)
    left = torch.randint(0, span, (batch,), generator=generator, device=device)
    flip = torch.rand(batch, generator=generator, device=device) < 0.5

    rows = top[:, None] + torch.arange(height, device=device)  # (B, H)
    cols = left[:, None] + torch.arange(width, device=device)  # (B, W)
    # Mirroring is reading the crop's columns right to left: folded into the gather, it costs nothing extra.
    cols = torch.where(flip[:, None], cols.flip(1), cols)

    # Broadcast index tensors select padded[b, c, rows[b, i], cols[b, j]] in one gather kernel.
    batch_index = torch.arange(batch, device=device)[:, None, None, None]
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def _uniform(batch: int, low: float, high: float, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(batch, generator=generator, device=device) * (high - low) + low


def color_jitter(
    images: torch.Tensor, strength: float = COLOR_JITTER, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors drawn from ``[1 - strength, 1 + strength]``.

    ``images`` is a uint8 (B, 3, H, W) batch; the result is too. The three are applied in that fixed order
    (torchvision's ColorJitter shuffles the order per image, which a batched kernel cannot do cheaply). Draws:
    brightness, contrast, saturation factors, each a (B,) vector.
    """
    batch, device = images.shape[0], images.device
    factors = [_uniform(batch, 1 - strength, 1 + strength, generator, device)[:, None, None, None] for _ in range(3)]
    brightness, contrast, saturation = factors
    weights = torch.tensor([0.299, 0.587, 0.114], device=device)[None, :, None, None]  # ITU-R 601 luma, as torchvision
    x = (images.float() * brightness).clamp_(0, 255)
    gray_mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - gray_mean) * contrast + gray_mean).clamp_(0, 255)
    gray = (x * weights).sum(1, keepdim=True)
    x = ((x - gray) * saturation + gray).clamp_(0, 255)
    return x.round_().to(torch.uint8)


def _box_mask(
    top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor, shape: Sequence[int]
) -> torch.Tensor:
    """(B, 1, H, W) bool mask of one box per image: rows top..top+height-1, columns left..left+width-1."""
    device = top.device
    rows = torch.arange(shape[-2], device=device)[None, :]
    cols = torch.arange(shape[-1], device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def random_erasing(
    images: torch.Tensor,
    probability: float,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """With ``probability`` per image, fill one random box with per-pixel noise (timm's "pixel" mode).

    The box covers a fraction of the image drawn from ``scale`` with an aspect ratio drawn log-uniformly from
    ``ratio`` (torchvision's and timm's defaults), clipped to the image rather than redrawn when it does not fit.
    The noise is ``mean + std * N(0, 1)`` in 0-255 units, i.e. standard normal after normalisation, as timm fills
    it. ``images`` is uint8 (B, C, H, W); draws: apply flags, areas, log-ratios, tops, lefts, then the noise.
    """
    batch, _, height, width = images.shape
    device = images.device
    apply = torch.rand(batch, generator=generator, device=device) < probability
    area = _uniform(batch, *scale, generator, device) * height * width
    aspect = torch.exp(_uniform(batch, math.log(ratio[0]), math.log(ratio[1]), generator, device))
    box_h = (area * aspect).sqrt().round().clamp(1, height).long()
    box_w = (area / aspect).sqrt().round().clamp(1, width).long()
    top = (torch.rand(batch, generator=generator, device=device) * (height - box_h + 1)).long()
    left = (torch.rand(batch, generator=generator, device=device) * (width - box_w + 1)).long()
    mask = _box_mask(top, left, box_h, box_w, images.shape) & apply[:, None, None, None]
    noise = torch.randn(images.shape, generator=generator, device=device)
    mean_t = torch.tensor(mean, device=device).reshape(1, -1, 1, 1) * 255
    std_t = torch.tensor(std, device=device).reshape(1, -1, 1, 1) * 255
    noise = (noise * std_t + mean_t).round_().clamp_(0, 255).to(torch.uint8)
    return torch.where(mask, noise, images)


def cutout(
    images: torch.Tensor, size: int, fill: Sequence[float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Cutout (DeVries and Taylor, 2017): one ``size`` x ``size`` square per image set to ``fill`` (0-1 per channel).

    The square's centre is uniform over the image, so it may hang over the border and cover less, as in the
    paper. ``fill`` is the dataset mean, which normalisation turns into 0. Draws: centre rows, then columns.
    """
    batch, _, height, width = images.shape
    device = images.device
    centre_y = torch.randint(0, height, (batch,), generator=generator, device=device)
    centre_x = torch.randint(0, width, (batch,), generator=generator, device=device)
    top, left = centre_y - size // 2, centre_x - size // 2
    extent = torch.full_like(top, size)
    mask = _box_mask(top, left, extent, extent, images.shape)
    value = torch.tensor([round(v * 255) for v in fill], dtype=torch.uint8, device=device).reshape(1, -1, 1, 1)
    return torch.where(mask, value, images)


def batch_augmentation(
    spec: AugmentSpec, mean: Sequence[float], std: Sequence[float]
) -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None:
    """What to do to a uint8 batch after crop and flip, drawing from one generator; None when there is nothing."""
    if spec.policy not in BATCHED_POLICIES:
        raise ValueError(
            f"--aug {spec.policy} runs per image in a folder dataset's loader; in-memory (CIFAR) batches are augmented "
            f"on the device, where --aug colorjitter, --random-erasing P and --cutout N are available"
        )
    if spec.policy == "none" and not spec.random_erasing and not spec.cutout:
        return None

    def augment(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if spec.policy == "colorjitter":
            images = color_jitter(images, generator=generator)
        if spec.random_erasing:
            images = random_erasing(images, spec.random_erasing, mean, std, generator)
        if spec.cutout:
            images = cutout(images, spec.cutout, mean, generator)
        return images

    return augment

"""Batched CIFAR-style augmentation on whole uint8 batches, on whatever device the batch is on.

This is the hot path of CIFAR training: one pad, one gather, no Python loop over images, so it costs the same
few kernel launches for a batch of 8 or of 8,192.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["derive_seed", "random_crop_flip"]


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

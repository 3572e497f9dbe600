"""Batches for training and evaluation, on the device, resumable at any step.

Two data paths with one interface (:func:`batches`): an in-memory split (CIFAR) lives as one uint8 tensor on the
training device and is cropped, flipped and augmented there in whole batches; a folder dataset is decoded by a
DataLoader's workers, each image's augmentation seeded by (seed, epoch, index). Either way the order of an epoch
depends only on (seed, epoch) and a step's augmentation only on (seed, epoch, step), so a run resumed mid-epoch
sees exactly the batches the uninterrupted run saw. Under torchrun each rank takes its slice of every global
batch. :class:`Preprocess` turns the uint8 batches into the model's normalised input, on the device.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lightnets.data.augment import derive_seed, random_crop_flip
from lightnets.data.cifar import TensorSplit
from lightnets.data.folder import BadImageLog, ImageFolderSplit, SeededSamples, collate_skip_bad, collate_with_bad

__all__ = [
    "Preprocess",
    "batches",
    "epoch_generator",
    "loader_batches",
    "step_generator",
    "steps_per_epoch",
    "tensor_batches",
]


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    # The data order depends only on (seed, epoch): a resumed run replays it.
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def step_generator(seed: int, epoch: int, step: int, device: torch.device) -> torch.Generator:
    # One generator per step rather than one stream per epoch: step k's crops and flips are then the same
    # whether the k steps before it ran in this process or in one that was killed.
    return torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, step))


def _usable(count: int, batch_size: int) -> int:
    # Drop the ragged last batch (BN wants full batches), unless there is only one batch's worth.
    return count - count % batch_size if count > batch_size else count


def _shard_bounds(count: int, shard: tuple[int, int]) -> tuple[int, int]:
    """Rank ``shard[0]`` of ``shard[1]``'s contiguous share of ``count`` items (sizes differ by at most one)."""
    rank, world = shard
    return count * rank // world, count * (rank + 1) // world


def tensor_batches(
    split: TensorSplit,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
    shard: tuple[int, int] = (0, 1),
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``start_step``..``num_steps`` of an in-memory split on the device; no per-image Python.

    Training batches are cropped and flipped, then ``augment``-ed (see :func:`batch_augmentation`), drawing from one
    generator per step.

    With ``shard=(rank, world_size)`` a training batch is this rank's slice of the global batch of
    ``batch_size``: every rank draws the same per-epoch permutation and the same crops and flips, so the
    ranks' slices together are exactly the batch one process would train on. An evaluation shard is the
    rank's contiguous share of the split, in batches of ``batch_size``.
    """
    device = split.images.device
    count = len(split)
    if train:
        order = torch.randperm(count, device=device, generator=epoch_generator(seed, epoch, device))
        count = _usable(count, batch_size)
    else:
        low, high = _shard_bounds(count, shard)
        order, count = torch.arange(low, high, device=device), high - low
    starts = range(0, count, batch_size)
    for step in range(start_step, len(starts) if num_steps is None else min(num_steps, len(starts))):
        index = order[starts[step] : starts[step] + batch_size]
        images, labels = split.images[index], split.labels[index]
        if train:
            # Augmenting the whole global batch costs one gather of uint8 pixels; drawing only this rank's share
            # of the random numbers would give crops that depend on the process count.
            generator = step_generator(seed, epoch, step, device)
            images = random_crop_flip(images, padding=4, generator=generator)
            if augment is not None:
                images = augment(images, generator)
            if shard[1] > 1:
                low, high = _shard_bounds(len(index), shard)
                images, labels = images[low:high], labels[low:high]
        yield images, labels


def _batch_indices(
    count: int, batch_size: int, *, train: bool, seed: int, epoch: int, shard: tuple[int, int] = (0, 1)
) -> list[list[int]]:
    """Sample indices per step: for training this rank's slice of each global batch (the sharding of a
    DistributedSampler, in the order one process would see), for evaluation batches of its contiguous share."""
    if train:
        # The order RandomSampler gave with a generator seeded this way, so runs before resumable batching
        # saw the same epochs.
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        count = _usable(count, batch_size)
        global_batches = [order[start : start + batch_size] for start in range(0, count, batch_size)]
        return [batch[slice(*_shard_bounds(len(batch), shard))] for batch in global_batches]
    low, high = _shard_bounds(count, shard)
    return [list(range(start, min(start + batch_size, high))) for start in range(low, high, batch_size)]


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group. Workers leave it to the main process, which finishes its step
    # and saves; a worker that died of it would fail the batch being fetched instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def loader_batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    train: bool,
    workers: int,
    device: torch.device,
    seed: int = 0,
    epoch: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
    bad_images: BadImageLog | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``start_step``..``num_steps`` of a decoded-on-access dataset, through a DataLoader.

    Under torchrun (``shard=(rank, world_size)``) each rank decodes only its slice of every global batch.

    An :class:`ImageFolderSplit` is read through :class:`SeededSamples`, so each image's augmentation depends
    only on (seed, epoch, index), and its unreadable files are reported to ``bad_images`` (a fresh log that
    warns once per file when not given).
    """
    index_batches = _batch_indices(len(dataset), batch_size, train=train, seed=seed, epoch=epoch, shard=shard)
    index_batches = index_batches[start_step:num_steps]
    if not index_batches:
        return
    seeded = isinstance(dataset, ImageFolderSplit)
    log = bad_images if bad_images is not None else BadImageLog()
    loader = torch.utils.data.DataLoader(
        SeededSamples(dataset, seed, epoch) if seeded else dataset,
        batch_sampler=index_batches,
        num_workers=min(workers, os.cpu_count() or 1),  # more workers than cores only thrash
        collate_fn=collate_with_bad if seeded else collate_skip_bad,
        pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_sigint,
        # Its own generator: a DataLoader without one draws its worker seed from the global generator, which
        # would shift dropout's random numbers by whether the epoch started in this process.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
    for batch in loader:
        images, labels = batch[0], batch[1]
        if seeded:
            log.record(batch[2])
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def batches(
    split: TensorSplit | torch.utils.data.Dataset,
    batch_size: int,
    device: torch.device,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    workers: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
    bad_images: BadImageLog | None = None,
    shard: tuple[int, int] = (0, 1),
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Either data path: an in-memory split on the device, or a folder dataset through a DataLoader.

    Training batches are global batches of ``batch_size`` (sliced to this rank's share); evaluation batches are
    ``batch_size`` images of the rank's share of the split. ``augment`` applies to in-memory training batches
    (folder datasets augment in their transform).
    """
    position = {"seed": seed, "epoch": epoch, "start_step": start_step, "num_steps": num_steps, "shard": shard}
    if isinstance(split, TensorSplit):
        return tensor_batches(split, batch_size, train=train, augment=augment, **position)
    return loader_batches(
        split, batch_size, train=train, workers=workers, device=device, bad_images=bad_images, **position
    )


def steps_per_epoch(count: int, batch_size: int, max_steps: int | None = None) -> int:
    """Optimizer steps in an epoch of ``count`` images: full global batches only, at least one."""
    steps = max(1, count // batch_size)
    return min(steps, max_steps) if max_steps else steps


class Preprocess(nn.Module):
    """uint8 batch -> normalised float batch at the model's input size, on the device.

    ``bgr`` flips the RGB batch to BGR first, for models trained on BGR input (megvii's ShuffleNet); ``mean`` and
    ``std`` are then in BGR order too.
    """

    def __init__(self, mean, std, input_size: int, channels_last: bool, bgr: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1) * 255)
        self.input_size = input_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.bgr = bgr

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            images = images.flip(1)
        x = (images.float() - self.mean) / self.std
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=self.memory_format)

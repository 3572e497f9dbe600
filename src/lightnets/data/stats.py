"""Dataset statistics: images per class, image sizes, unreadable files, per-channel mean and std.

``lightnets data stats SPEC`` prints them (:func:`dataset_stats`); ``lightnets train --normalize dataset`` trains
with the mean and std (:func:`channel_stats`, :func:`with_normalization`).

Mean and std are per RGB channel on the 0-1 scale, over every pixel of every training image as the model sees it:
for CIFAR the stored 32x32 images, for a folder each image resized (short side ``input_size / 0.875``, antialiased)
and centre-cropped to ``input_size``, the deterministic resize and crop of evaluation. (The random-resized crops of
training are random; their mean over many epochs is close to this.) The sums are exact integers (uint8 pixels,
Python ints), so the result does not depend on the order the images were read in or on the number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lightnets.data.augment import AugmentSpec
from lightnets.data.cifar import TensorSplit
from lightnets.data.folder import (
    ImageFolderSplit,
    UnreadableImageError,
    eval_transform,
    load_image_rgb,
    train_transform,
)

__all__ = [
    "ChannelStats",
    "DatasetStats",
    "channel_stats",
    "dataset_stats",
    "print_dataset_stats",
    "with_normalization",
]


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and std (0-1 scale) of ``images`` images, and how they were measured."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    images: int
    scale: str  # the transform the images went through
    unreadable: tuple[tuple[str, str], ...] = ()  # (path, reason) of training images that could not be decoded
    seconds: float = 0.0


class _Moments:
    """Exact per-channel sums of uint8 pixels and of their squares."""

    def __init__(self) -> None:
        self.images, self.pixels = 0, 0
        self.sums, self.squares = [0, 0, 0], [0, 0, 0]

    def add(self, images: torch.Tensor) -> None:
        """A uint8 (3, H, W) image or (N, 3, H, W) batch."""
        batch = images if images.dim() == 4 else images[None]
        wide = batch.to(torch.int64)
        sums, squares = wide.sum((0, 2, 3)).tolist(), (wide * wide).sum((0, 2, 3)).tolist()
        self.merge(len(batch), batch[:, 0].numel(), sums, squares)

    def merge(self, images: int, pixels: int, sums: Sequence[int], squares: Sequence[int]) -> None:
        self.images += images
        self.pixels += pixels
        self.sums = [a + b for a, b in zip(self.sums, sums)]
        self.squares = [a + b for a, b in zip(self.squares, squares)]

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if not self.pixels:
            raise ValueError("no readable training image to measure the mean and std on")
        n = self.pixels
        mean = tuple(s / n / 255 for s in self.sums)
        # Var = (n sum(x^2) - (sum x)^2) / n^2, in exact integers before the one division.
        var = [(n * q - s * s) / (n * n) / 255**2 for s, q in zip(self.sums, self.squares)]
        return mean, tuple(max(v, 0.0) ** 0.5 for v in var)


def _measure_tensor(images: torch.Tensor, chunk: int = 4096) -> _Moments:
    moments = _Moments()
    for start in range(0, len(images), chunk):  # int64 copies of a whole CIFAR split would take 1.2 GB
        moments.add(images[start : start + chunk])
    return moments


class _ImageMeasures(Dataset):
    """Per image: ``(width, height, sums, squares, pixels)`` of its pixels after ``transform`` (none: sizes only),
    or ``(path, reason)`` when it cannot be decoded; read by a DataLoader's workers."""

    def __init__(self, paths: Sequence[Path], transform: Callable | None) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple:
        path = self.paths[index]
        try:
            image = load_image_rgb(path)
        except Exception as error:  # PIL raises a zoo of types on bad files
            return str(path), f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
        if self.transform is None:
            return image.width, image.height, None, None, 0
        pixels = self.transform(image).to(torch.int64)
        sums, squares = pixels.sum((1, 2)).tolist(), (pixels * pixels).sum((1, 2)).tolist()
        return image.width, image.height, sums, squares, pixels[0].numel()


def _first(batch: list) -> Any:
    return batch[0]


def _measure_images(
    split: ImageFolderSplit, transform: Callable | None, workers: int, strict: bool = False
) -> tuple[_Moments, list[tuple[int, int]], list[tuple[str, str]]]:
    """Decode every image of ``split`` once: the moments of the transformed pixels, the sizes, the bad files."""
    measures = _ImageMeasures([path for path, _ in split.samples], transform)
    loader = DataLoader(measures, batch_size=1, num_workers=workers, collate_fn=_first)
    moments, sizes, unreadable = _Moments(), [], []
    for item in loader:
        if len(item) == 2:
            if strict:
                raise UnreadableImageError(Path(item[0]), f"{item[1]} (--strict makes an unreadable image an error)")
            unreadable.append(item)
            continue
        width, height, sums, squares, pixels = item
        sizes.append((width, height))
        if sums is not None:
            moments.merge(1, pixels, sums, squares)
    return moments, sizes, unreadable


def _scale(split: TensorSplit | ImageFolderSplit, input_size: int, eval_resize: int) -> str:
    if isinstance(split, TensorSplit):
        return f"as stored, {split.images.shape[-1]}x{split.images.shape[-2]}"
    return f"short side resized to {eval_resize}, centre crop {input_size}x{input_size}"


def channel_stats(bundle: Any, workers: int = 0, strict: bool = False) -> ChannelStats:
    """Mean and std of ``bundle``'s training split (see the module docstring); unreadable images are left out."""
    start = time.perf_counter()
    split = bundle.train
    if isinstance(split, TensorSplit):
        moments, unreadable = _measure_tensor(split.images), []
    else:
        transform = eval_transform(bundle.input_size, bundle.eval_resize)
        moments, _, unreadable = _measure_images(split, transform, workers, strict)
    mean, std = moments.mean_std()
    scale = _scale(split, bundle.input_size, bundle.eval_resize)
    return ChannelStats(mean, std, moments.images, scale, tuple(unreadable), time.perf_counter() - start)


def with_normalization(
    bundle: Any, mean: Sequence[float], std: Sequence[float], augment: AugmentSpec | None = None
) -> Any:
    """``bundle`` normalised with ``mean``/``std``; a folder's training transform is rebuilt, as its random erasing
    noise and cutout fill follow the mean and std."""
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    train = bundle.train
    if isinstance(train, ImageFolderSplit):
        train = ImageFolderSplit(train.samples, train.classes, train_transform(bundle.input_size, augment, mean, std))
    return dataclasses.replace(bundle, train=train, mean=mean, std=std)


# ------------------------------------------------------------------------------------------ lightnets data stats


@dataclass
class DatasetStats:
    spec: str
    classes: list[str]
    counts: dict[str, list[int]]  # split name -> images per class
    readable: int  # images whose size was read (all splits)
    width: tuple[float, float, float]  # min, median, max
    height: tuple[float, float, float]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    channels: ChannelStats | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        from lightnets.tables import format_table

        splits = list(self.counts)
        totals = ", ".join(f"{name} {sum(self.counts[name])}" for name in splits)
        rows = [[name, *(self.counts[s][i] for s in splits)] for i, name in enumerate(self.classes)]
        rows.append(["total", *(sum(self.counts[s]) for s in splits)])
        lines = [f"{self.spec}: {len(self.classes)} classes; images: {totals}", format_table(["class", *splits], rows)]

        def spread(values: tuple[float, float, float]) -> str:
            return "min {:g}, median {:g}, max {:g}".format(*values)

        lines.append(f"image sizes ({self.readable} images): width {spread(self.width)}; height {spread(self.height)}")
        if self.unreadable:
            lines.append(f"unreadable files: {len(self.unreadable)}")
            lines += [f"  {path}: {reason}" for path, reason in self.unreadable]
        else:
            lines.append("unreadable files: none")
        if self.channels is not None:
            c = self.channels
            lines.append(f"mean/std per RGB channel, 0-1 scale, over the {c.images} training images ({c.scale}):")
            lines.append("  mean " + " ".join(f"{v:.4f}" for v in c.mean) + "   (lightnets train --normalize dataset)")
            lines.append("  std  " + " ".join(f"{v:.4f}" for v in c.std))
        lines.append(f"images read in {self.seconds:.1f} s")
        return "\n".join(lines)


def _spread(values: list[int]) -> tuple[float, float, float]:
    return (min(values), statistics.median(values), max(values)) if values else (0, 0, 0)


def _counts(labels: Sequence[int], classes: int) -> list[int]:
    return torch.bincount(torch.as_tensor(list(labels), dtype=torch.int64), minlength=classes).tolist()


def dataset_stats(
    spec: str,
    *,
    data_root: str | Path | None = None,
    input_size: int | None = None,
    val_split: float | None = None,
    seed: int = 0,
    workers: int = 0,
) -> DatasetStats:
    """Counts, sizes and unreadable files of every split of ``spec`` and the training split's mean/std, as
    ``lightnets train --data SPEC`` (with the same ``input_size``, ``val_split`` and ``seed``) would split it.

    Every image file is decoded once; CIFAR is read from its archive (never downloaded here).
    """
    from lightnets.data import load_dataset

    options = {"data_root": data_root, "input_size": input_size, "val_split": val_split, "seed": seed}
    bundle = load_dataset(spec, download=False, **options)
    start = time.perf_counter()  # the reading of the images (imports and the folder scan come before)
    splits = {"train": bundle.train, bundle.val_name: bundle.val}
    counts = {
        name: _counts(split.labels.tolist() if isinstance(split, TensorSplit) else split.targets, len(bundle.classes))
        for name, split in splits.items()
    }
    if isinstance(bundle.train, TensorSplit):
        widths = [s.images.shape[-1] for s in splits.values() for _ in range(len(s))]
        heights = [s.images.shape[-2] for s in splits.values() for _ in range(len(s))]
        channels, unreadable = channel_stats(bundle), []
    else:
        transform = eval_transform(bundle.input_size, bundle.eval_resize)
        moments, train_sizes, train_bad = _measure_images(bundle.train, transform, workers)
        _, held_out_sizes, held_out_bad = _measure_images(bundle.val, None, workers)  # sizes and decoding only
        widths, heights = zip(*(train_sizes + held_out_sizes)) if train_sizes or held_out_sizes else ((), ())
        mean, std = moments.mean_std()
        scale = _scale(bundle.train, bundle.input_size, bundle.eval_resize)
        channels = ChannelStats(mean, std, moments.images, scale, tuple(train_bad))
        unreadable = train_bad + held_out_bad
    return DatasetStats(
        spec,
        list(bundle.classes),
        counts,
        readable=len(widths),
        width=_spread(list(widths)),
        height=_spread(list(heights)),
        unreadable=list(unreadable),
        channels=channels,
        seconds=time.perf_counter() - start,
    )


def print_dataset_stats(spec: str, as_json: bool = False, **options: Any) -> DatasetStats:
    """``lightnets data stats``: the table, or JSON with ``as_json``."""
    stats = dataset_stats(spec, **options)
    print(json.dumps(stats.as_dict(), indent=2) if as_json else stats.format())
    return stats

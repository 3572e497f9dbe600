"""``--data`` specs and :func:`load_dataset`: CIFAR-10/100 held in memory, image folders decoded on the fly.

``load_dataset("cifar10")``, ``load_dataset("cifar100:PATH")`` or ``load_dataset("folder:PATH")`` returns a
:class:`DataBundle`: the train and held-out splits, class names, normalization constants and image sizes.
Every split yields uint8 images; normalization (and CIFAR's crop-and-flip, see :func:`random_crop_flip`)
happens on the device in the training loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightnets.data.augment import AugmentSpec
from lightnets.data.checks import check_class_images, report_scans
from lightnets.data.cifar import CIFAR_SOURCES, DatasetNotFoundError, TensorSplit, cifar_mean_std, load_cifar
from lightnets.data.folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderSplit,
    eval_resize_for,
    eval_transform,
    stratified_split,
    train_transform,
)
from lightnets.data.scan import Skipped, scan_class_folders

__all__ = [
    "DATA_KINDS",
    "DEFAULT_FOLDER_VAL_SPLIT",
    "DataBundle",
    "DataSpec",
    "default_data_root",
    "load_dataset",
    "parse_data_spec",
]


DATA_KINDS = ("cifar10", "cifar100", "folder")
_VALID_FORMS = "cifar10, cifar100, cifar10:PATH, cifar100:PATH or folder:PATH"
DEFAULT_FOLDER_VAL_SPLIT = 0.2


@dataclass
class DataSpec:
    """A parsed ``--data`` value: the dataset kind and, for folders (optionally for CIFAR), where it lives."""

    kind: str
    path: Path | None = None


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``cifar10``, ``cifar100``, ``cifar10:PATH``, ``cifar100:PATH`` or ``folder:PATH``."""
    kind, colon, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    if kind in ("cifar10", "cifar100") and not (colon and not rest):
        return DataSpec(kind, Path(rest).expanduser() if rest else None)
    if kind == "folder" and rest:
        return DataSpec(kind, Path(rest).expanduser())
    raise ValueError(f"invalid --data value {spec!r}: expected {_VALID_FORMS}")


@dataclass
class DataBundle:
    """Everything the training loop needs to know about a dataset."""

    kind: str
    classes: list[str]
    train: TensorSplit | ImageFolderSplit
    val: TensorSplit | ImageFolderSplit
    val_name: str  # "test" when the held-out split is the official test set, else "val"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int  # the size batches come out at (CIFAR tensors are 32 and get upsampled by the loop)
    eval_resize: int  # short-side resize before the center crop at eval and predict
    ignored_files: list[str] = field(default_factory=list)  # non-image files found in class folders
    skipped_entries: list[Skipped] = field(default_factory=list)  # links and entries the folder scan skipped
    empty_classes: list[tuple[str, str]] = field(default_factory=list)  # (split, class) without a readable image

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> dict[str, list[int]]:
        """Images per class of the train and held-out splits, keyed "train" and :attr:`val_name`."""

        def counts(split: TensorSplit | ImageFolderSplit) -> list[int]:
            if isinstance(split, TensorSplit):
                return torch.bincount(split.labels.cpu(), minlength=len(self.classes)).tolist()
            return split.counts()

        return {"train": counts(self.train), self.val_name: counts(self.val)}


def default_data_root() -> Path:
    """``$LIGHTNETS_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("LIGHTNETS_DATA") or "data").expanduser()


def _check_options(input_size: int | None, val_split: float | None) -> None:
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1):
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    if val_split is not None and (isinstance(val_split, bool) or not 0 < val_split < 1):
        raise ValueError(f"val_split must be a fraction strictly between 0 and 1, got {val_split!r}")


def _subset(split: TensorSplit, indices: torch.Tensor) -> TensorSplit:
    return TensorSplit(split.images[indices], split.labels[indices])


def _load_cifar_bundle(
    spec: DataSpec, root: Path, input_size: int | None, val_split: float | None, seed: int, download: bool
) -> DataBundle:
    train, test, classes = load_cifar(spec.kind, spec.path, data_root=root, download=download)
    val, val_name = test, "test"
    if val_split:
        train_idx, val_idx = stratified_split(train.labels.numpy(), val_split, seed)
        train, val = _subset(train, torch.from_numpy(train_idx)), _subset(train, torch.from_numpy(val_idx))
        val_name = "val"
    size = input_size or 32
    mean, std = cifar_mean_std(spec.kind)
    return DataBundle(spec.kind, classes, train, val, val_name, mean, std, input_size=size, eval_resize=size)


def _load_folder_bundle(
    spec: DataSpec,
    input_size: int | None,
    val_split: float | None,
    seed: int,
    strict: bool = False,
    augment: AugmentSpec | None = None,
    allow_empty_classes: bool = False,
) -> DataBundle:
    root = spec.path
    assert root is not None  # parse_data_spec guarantees a path for folders
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist; pass --data folder:PATH with class subfolders")
    size = input_size or 224
    resize = eval_resize_for(size)
    held_out = next(((root / name, name) for name in ("val", "test") if (root / name).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        scans = [scan_class_folders(root / "train"), scan_class_folders(held_out[0])]
        classes, train_samples, val_samples = scans[0].classes, scans[0].samples, scans[1].samples
        val_name, folders, totals = held_out[1], (root / "train", held_out[0]), None
    else:
        # A train/ folder with nothing held out beside it is split like a plain folder of classes.
        base = root / "train" if (root / "train").is_dir() else root
        scans = [scan_class_folders(base)]
        samples, classes = scans[0].samples, scans[0].classes
        fraction = DEFAULT_FOLDER_VAL_SPLIT if val_split is None else val_split
        train_idx, val_idx = stratified_split([label for _, label in samples], fraction, seed)
        train_samples = [samples[i] for i in train_idx]
        val_samples = [samples[i] for i in val_idx]
        val_name, folders, totals = "val", (base, base), scans[0].counts()
    ignored, skipped = report_scans(scans, strict)
    train = ImageFolderSplit(train_samples, classes, train_transform(size, augment, IMAGENET_MEAN, IMAGENET_STD))
    # The training classes first: an empty one there explains a val folder without it.
    empty = check_class_images([("train", train, folders[0])], allow_empty_classes, totals)
    if scans[-1].classes != classes:
        raise ValueError(
            f"{folders[1]} has classes {scans[-1].classes} but {folders[0]} has {classes}; they must match"
        )
    val = ImageFolderSplit(val_samples, classes, eval_transform(size, resize))
    empty += check_class_images([(val_name, val, folders[1])], allow_empty_classes, totals)
    return DataBundle(
        kind="folder",
        classes=classes,
        train=train,
        val=val,
        val_name=val_name,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=size,
        eval_resize=resize,
        ignored_files=ignored,
        skipped_entries=skipped,
        empty_classes=empty,
    )


def load_dataset(
    spec: str | DataSpec,
    *,
    data_root: str | Path | None = None,
    input_size: int | None = None,
    val_split: float | None = None,
    seed: int = 0,
    download: bool = True,
    strict: bool = False,
    augment: AugmentSpec | None = None,
    allow_empty_classes: bool = False,
) -> DataBundle:
    """Load a dataset described by a ``--data`` value into a :class:`DataBundle`.

    ``data_root`` (default ``$LIGHTNETS_DATA`` or ``./data``) is where CIFAR is looked for, and downloaded to
    when ``download`` is true. ``val_split`` holds out a stratified, ``seed``-determined fraction of the training
    images as val: for CIFAR only when given (the test set is used otherwise); for a plain folder of classes it
    defaults to 0.2; a folder with ``train/`` and ``val/`` (or ``test/``) subfolders uses those and ignores it.
    ``input_size`` defaults to 32 for CIFAR and 224 for folders. Non-image files in a folder dataset's class
    folders are ignored with one warning and listed in ``ignored_files``; with ``strict`` they are an error.
    Links in a folder dataset are followed by the rules of :mod:`lightnets.data.scan`; what they skip is warned
    about and listed in ``skipped_entries``. A class without a readable image in either split is an error, or
    with ``allow_empty_classes`` a warning (see :mod:`lightnets.data.checks`).
    ``augment`` extends a folder dataset's training transform; in-memory CIFAR splits stay uint8 and are augmented
    on the device by the training loop (:func:`batch_augmentation`).
    """
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    if spec.kind not in DATA_KINDS:
        raise ValueError(f"unknown dataset kind {spec.kind!r}: expected {_VALID_FORMS}")
    _check_options(input_size, val_split)
    if spec.kind in CIFAR_SOURCES:
        root = Path(data_root).expanduser() if data_root is not None else default_data_root()
        return _load_cifar_bundle(spec, root, input_size, val_split, seed, download)
    if spec.path is None:
        raise ValueError(f"folder data needs a path: expected {_VALID_FORMS}")
    return _load_folder_bundle(spec, input_size, val_split, seed, strict, augment, allow_empty_classes)

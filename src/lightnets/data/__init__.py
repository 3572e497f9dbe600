"""Datasets for training and evaluation, re-exported from their modules: ``--data`` specs and
:func:`load_dataset` (:mod:`~lightnets.data.datasets`), CIFAR held in memory (``cifar``), class folders decoded on
the fly (``folder``, found by ``scan``, checked by ``checks``), augmentation (``augment``), the two batch paths
(``batches``) and dataset statistics (``stats``)."""

from __future__ import annotations

from lightnets.data.augment import AUG_POLICIES, AugmentSpec, batch_augmentation, derive_seed, random_crop_flip
from lightnets.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR_MEAN,
    CIFAR_STD,
    DatasetNotFoundError,
    RestrictedUnpickler,
    TensorSplit,
    UnsafePickleError,
    load_cifar,
)
from lightnets.data.datasets import DATA_KINDS, DataBundle, DataSpec, default_data_root, load_dataset, parse_data_spec
from lightnets.data.folder import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadImage,
    BadImageLog,
    ImageFolderSplit,
    SeededSamples,
    UnreadableImageError,
    collate_skip_bad,
    collate_with_bad,
    eval_transform,
    load_image_rgb,
    stratified_split,
    train_transform,
)
from lightnets.data.scan import Skipped

__all__ = [
    "AUG_POLICIES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATA_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "AugmentSpec",
    "BadImage",
    "BadImageLog",
    "DataBundle",
    "DataSpec",
    "DatasetNotFoundError",
    "ImageFolderSplit",
    "RestrictedUnpickler",
    "SeededSamples",
    "Skipped",
    "TensorSplit",
    "UnreadableImageError",
    "UnsafePickleError",
    "batch_augmentation",
    "collate_skip_bad",
    "collate_with_bad",
    "default_data_root",
    "derive_seed",
    "eval_transform",
    "load_cifar",
    "load_dataset",
    "load_image_rgb",
    "parse_data_spec",
    "random_crop_flip",
    "stratified_split",
    "train_transform",
]

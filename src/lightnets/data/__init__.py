"""Datasets for training and evaluation: CIFAR-10/100 held in memory, image folders decoded on the fly.

``load_dataset("cifar10")``, ``load_dataset("cifar100:PATH")`` or ``load_dataset("folder:PATH")`` returns a
:class:`DataBundle`: the train and held-out splits, class names, normalization constants and image sizes.
Every split yields uint8 images; normalization (and CIFAR's crop-and-flip, see :func:`random_crop_flip`)
happens on the device in the training loop.
"""

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

"""Image-folder datasets: one subfolder per class, images of any size and PIL mode, decoded lazily.

Images come out as uint8 (3, S, S) tensors and are normalized later, on the device, by the training loop.
A file that cannot be decoded yields ``None`` (with one warning naming it) and :func:`collate_skip_bad`
drops it, so a single bad download never stops an epoch. The training loop goes through
:class:`SeededSamples` and :func:`collate_with_bad` instead, which hand the bad files back to the main
process so that they are counted (and, with ``--strict``, refused) there, whatever the number of workers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from lightnets.data.augment import COLOR_JITTER, AugmentSpec, cutout, derive_seed, random_erasing
from lightnets.data.scan import IMAGE_EXTENSIONS, find_images, scan_class_folders

# Declared once, beside the models' pretrained_cfg that records them (timm's IMAGENET_DEFAULT_MEAN / _STD).
from lightnets.models.model_cfg import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "BadImage",
    "BadImageLog",
    "ImageFolderSplit",
    "SeededSamples",
    "UnreadableImageError",
    "collate_skip_bad",
    "collate_with_bad",
    "decode_problem",
    "eval_resize_for",
    "eval_transform",
    "find_images",
    "load_image_rgb",
    "read_image_rgb",
    "scan_class_folders",
    "stratified_split",
    "to_rgb",
    "train_transform",
]

# Where an image is transparent it is shown over white, as a browser or viewer would show it.
_BACKGROUND = (255, 255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


# ----------------------------------------------------------------------------------------------- decoding


def _high_depth_to_gray(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale as 8-bit L; ``convert`` would clip instead of scaling."""
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        values = values / 257.0
    elif image.mode == "F" and values.size and np.nanmax(values) <= 1.0:
        values = values * 255.0  # float images in 0..1
    elif image.mode == "I" and values.size and values.max() > 255:
        values = values / 257.0  # 16-bit data widened to 32 bits (e.g. some PNG and TIFF readers)
    gray = np.clip(np.nan_to_num(np.rint(values)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: alpha (and palette transparency) is composited over white, deep grayscale is scaled."""
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        # Going through RGBA is what Pillow asks for with palette transparency (else it warns on every image).
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _BACKGROUND), rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        return _high_depth_to_gray(image).convert("RGB")
    return image.convert("RGB")


def load_image_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully, upright per its EXIF orientation, as an RGB PIL image."""
    with Image.open(path) as opened:
        opened.load()  # decode now, so a corrupt file fails here and not later inside a transform
        image = opened
        try:
            image = ImageOps.exif_transpose(opened)
        except Exception:  # malformed EXIF is common and must not cost the image
            image = opened
        return to_rgb(image)


# ----------------------------------------------------------------------------------------------- transforms


def eval_resize_for(input_size: int) -> int:
    """The resize before the center crop at evaluation: the standard 0.875 crop ratio (256 for 224)."""
    return round(input_size / 0.875)


def _plain_tensor(image: torch.Tensor) -> torch.Tensor:
    # v2 returns tv_tensors.Image; a plain tensor keeps collate, pickling and device moves free of subclass logic.
    return image.as_subclass(torch.Tensor).contiguous()


def _policy(augment: AugmentSpec) -> list[Callable]:
    from torchvision.transforms import v2

    if augment.policy == "colorjitter":
        return [v2.ColorJitter(COLOR_JITTER, COLOR_JITTER, COLOR_JITTER)]
    if augment.policy == "randaugment":
        return [v2.RandAugment(num_ops=augment.ops, magnitude=augment.magnitude)]
    if augment.policy == "trivialaugment":
        return [v2.TrivialAugmentWide()]
    if augment.policy == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]
    return []


class _ErasePerImage:
    """Random erasing and cutout on one uint8 image, drawing from the default generator (seeded per image)."""

    def __init__(self, augment: AugmentSpec, mean: Sequence[float], std: Sequence[float]) -> None:
        self.augment, self.mean, self.std = augment, tuple(mean), tuple(std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        batch = image[None]
        if self.augment.random_erasing:
            batch = random_erasing(batch, self.augment.random_erasing, self.mean, self.std)
        if self.augment.cutout:
            batch = cutout(batch, self.augment.cutout, self.mean)
        return batch[0]


def train_transform(
    input_size: int,
    augment: AugmentSpec | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """Random-resized crop, horizontal flip, then ``augment``'s policy, erasing and cutout: PIL image -> uint8
    tensor (3, S, S); no normalization (``mean``/``std`` set the erasing noise and cutout fill)."""
    from torchvision.transforms import v2  # deferred: torchvision adds seconds to every CIFAR-only start

    augment = augment or AugmentSpec()
    steps = [v2.ToImage(), v2.RandomResizedCrop(input_size, antialias=True), v2.RandomHorizontalFlip()]
    steps += [*_policy(augment), v2.ToDtype(torch.uint8, scale=True), _plain_tensor]
    if augment.random_erasing or augment.cutout:
        steps.append(_ErasePerImage(augment, mean, std))
    return v2.Compose(steps)


def eval_transform(input_size: int, eval_resize: int) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side to ``eval_resize`` then center-crop ``input_size``: PIL image -> uint8 (3, S, S)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(eval_resize, antialias=True),
            v2.CenterCrop(input_size),
            v2.ToDtype(torch.uint8, scale=True),
            _plain_tensor,
        ]
    )


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------------- dataset


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; ``path`` and a one-line ``reason`` name it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"unreadable image {path}: {reason}")
        self.path = path
        self.reason = reason


def _reason(error: BaseException, path: Path) -> str:
    """Why ``path`` could not be decoded, in words: Pillow's own text repeats the path or names internals."""
    if isinstance(error, OSError) and error.strerror:  # the file itself: missing, no permission
        return error.strerror
    if isinstance(error, Image.UnidentifiedImageError):
        empty = path.is_file() and path.stat().st_size == 0
        return "empty file (0 bytes)" if empty else "not an image in any format Pillow reads"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, OSError) and text:  # Pillow's own words, e.g. "image file is truncated (22 bytes ...)"
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_image_rgb(path: str | Path) -> Image.Image:
    """:func:`load_image_rgb`, failing with an :class:`UnreadableImageError` that says why in words."""
    try:
        return load_image_rgb(path)
    except Exception as error:  # PIL raises a zoo of types (OSError, SyntaxError, ...) on bad files
        raise UnreadableImageError(Path(path), _reason(error, Path(path))) from None


def decode_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be decoded, or None when it can: the cheap check of a class's first readable image.

    JPEGs are decoded at a reduced scale (``draft``), which still reads every byte, so a truncated file fails
    here as it would in training, at a fraction of the cost.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except Exception as error:  # PIL raises a zoo of types (OSError, SyntaxError, ...) on bad files
        return _reason(error, Path(path))
    return None


class ImageFolderSplit(Dataset):
    """Samples ``(path, label)`` decoded on access: ``dataset[i]`` is ``(uint8 (3, S, S), label)`` or ``None``.

    ``None`` means the file could not be decoded; it is warned about once and :func:`collate_skip_bad` drops it.
    Without a ``transform`` images keep their own size.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, int]],
        classes: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
    ) -> None:
        self.samples: list[tuple[Path, int]] = [(Path(path), int(label)) for path, label in samples]
        self.classes: list[str] = list(classes)
        self.transform = transform if transform is not None else _pil_to_tensor
        self._warned: set[Path] = set()

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def counts(self) -> list[int]:
        """Images per class, in class order."""
        labels = np.fromiter((label for _, label in self.samples), dtype=np.int64, count=len(self.samples))
        return np.bincount(labels, minlength=len(self.classes)).tolist()

    def unreadable_classes(self, bad: Collection[str]) -> list[int]:
        """The classes that have images here, every one of them in ``bad`` (paths that failed to decode)."""
        candidates = {label for label, count in enumerate(self.counts()) if 0 < count <= len(bad)}
        if not candidates:  # the usual case: fewer bad files than any class has images, nothing to look up
            return []
        readable = {label for path, label in self.samples if label in candidates and str(path) not in bad}
        return sorted(candidates - readable)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """``(image, label)`` of sample ``index``; an undecodable file raises :class:`UnreadableImageError`."""
        path, label = self.samples[index]
        return self.transform(read_image_rgb(path)), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        try:
            return self.load(index)
        except UnreadableImageError as error:
            if error.path not in self._warned:
                self._warned.add(error.path)
                warnings.warn(f"skipping unreadable image {error.path}: {error.reason}", stacklevel=1)
            return None


def collate_skip_bad(batch: Iterable[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack uint8 images and int64 labels, dropping the ``None`` of unreadable files.

    A batch with nothing readable gives ``(uint8 (0, 3, 0, 0), int64 (0,))``; skip batches of length 0.
    """
    good = [item for item in batch if item is not None]
    if not good:
        return torch.empty((0, 3, 0, 0), dtype=torch.uint8), torch.empty((0,), dtype=torch.int64)
    images = torch.stack([image for image, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return images, labels


class BadImage(NamedTuple):
    """A sample whose file could not be decoded, as :class:`SeededSamples` returns it."""

    path: str
    reason: str


class SeededSamples(Dataset):
    """``split`` with each sample's augmentation drawn from a generator seeded by ``(seed, epoch, index)``.

    A sample's crop and flip then depend on nothing else: not on the number of workers, not on which worker
    decoded it, not on what was decoded before it. That is what lets a run resumed in the middle of an epoch
    produce exactly the batches that the uninterrupted run produced. Undecodable files come back as
    :class:`BadImage` (not a warning inside a worker) so that the main process can count them.
    """

    def __init__(self, split: ImageFolderSplit, seed: int, epoch: int) -> None:
        self.split = split
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | BadImage:
        # torchvision's transforms draw from the global generator; forking keeps the caller's stream (dropout,
        # when there are no workers) untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.epoch, index))
            try:
                return self.split.load(index)
            except UnreadableImageError as error:
                return BadImage(str(error.path), error.reason)


def collate_with_bad(
    batch: Iterable[tuple[torch.Tensor, int] | BadImage],
) -> tuple[torch.Tensor, torch.Tensor, list[BadImage]]:
    """Like :func:`collate_skip_bad` for :class:`SeededSamples`, also returning the bad samples it dropped."""
    items = list(batch)
    bad = [item for item in items if isinstance(item, BadImage)]
    images, labels = collate_skip_bad([None if isinstance(item, BadImage) else item for item in items])
    return images, labels, bad


class BadImageLog:
    """The unreadable images a run met: each warned about once, all counted; with ``strict`` the first is an error.

    ``paths`` maps each bad file to its reason and survives a resume through the checkpoint;
    ``events`` counts every skip (a bad file is skipped again each epoch).
    """

    def __init__(self, strict: bool = False, paths: dict[str, str] | None = None) -> None:
        self.strict = strict
        self.paths: dict[str, str] = dict(paths or {})
        self.events = 0

    def record(self, bad: Iterable[BadImage]) -> None:
        for path, reason in bad:
            if self.strict:
                raise UnreadableImageError(Path(path), f"{reason} (--strict makes an unreadable image an error)")
            self.events += 1
            if path not in self.paths:
                self.paths[path] = reason
                warnings.warn(f"skipping unreadable image {path}: {reason}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.paths)


# ----------------------------------------------------------------------------------------------- splitting


def _val_count(size: int, fraction: float) -> int:
    if size < 2 or fraction <= 0:
        return 0
    # Round half up, and keep at least one image on each side so every class is seen and measured.
    return min(size - 1, max(1, math.floor(size * fraction + 0.5)))


def stratified_split(
    labels: Sequence[int] | np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class deterministic ``(train_indices, val_indices)``, both sorted.

    Each class is shuffled by its own ``numpy.random.default_rng(seed)``, so a class's split depends only on
    the seed and its size; ``round(n * val_fraction)`` of it goes to val, at least one when it has 2 or more.
    """
    labels = np.asarray(labels)
    train_parts, val_parts = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        shuffled = members[np.random.default_rng(seed).permutation(members.size)]
        n_val = _val_count(members.size, val_fraction)
        val_parts.append(shuffled[:n_val])
        train_parts.append(shuffled[n_val:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))

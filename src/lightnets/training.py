"""Training and evaluation: the practitioners' recipe, with the data path on the device.

Read top to bottom: the hyperparameters (:class:`TrainConfig`), how batches are produced, the optimizer
and schedule, then :func:`train` - one loop over epochs and steps - and :func:`evaluate`.

Recipe defaults: SGD with Nesterov momentum 0.9, lr 0.1 per 256 images scaled linearly with the batch,
weight decay 5e-4 on conv/linear weights only (not BN or biases), label smoothing 0.1, a linear warmup
then cosine decay stepped every iteration, batch 256, crop and flip (``aug`` adds the authors' augmentations),
bf16 autocast on CUDA and on CPUs with native bf16. In-memory datasets (CIFAR) live as one uint8
tensor on the training device and are cropped and flipped there in whole batches; folder datasets come
through a DataLoader with workers. Normalisation happens on the device for both.

Under torchrun the same code runs in every process: each trains its slice of every global batch with
DistributedDataParallel, metrics are all-reduced, and rank 0 alone writes (see :mod:`lightnets.distributed`).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lightnets.checkpoint import (
    CheckpointError,
    check_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    weights_fit_report,
)
from lightnets.data import (
    AUG_POLICIES,
    AugmentSpec,
    BadImageLog,
    DataBundle,
    ImageFolderSplit,
    SeededSamples,
    TensorSplit,
    batch_augmentation,
    collate_skip_bad,
    collate_with_bad,
    derive_seed,
    load_dataset,
    parse_data_spec,
    random_crop_flip,
)
from lightnets.distributed import (
    ControlChannel,
    DistContext,
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from lightnets.models import create_model
from lightnets.runtime import cpu_has_native_bf16

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "TrainingError",
    "TrainingInterrupted",
    "check_input_size",
    "evaluate",
    "train",
    "validate_config",
]


@dataclass
class TrainConfig:
    """Every training setting; ``args.yaml`` in the run directory is this, resolved."""

    model: str = "spgnet_s2p6_cifar"
    data: str = "cifar10"
    epochs: int = 30
    batch_size: int = 256
    lr: float | None = None  # None: lr_base * batch_size / 256
    lr_base: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    amp: bool | None = None  # None: on for CUDA and for CPUs with native bf16 (AVX512-BF16/AMX), where it is faster
    amp_dtype: str = "bfloat16"  # or float16 (CUDA only, with a GradScaler)
    channels_last: bool = False
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    input_size: int | None = None
    val_split: float | None = None
    data_root: str | None = None
    out: str | None = None
    quiet: bool = False
    log_every: int = 20
    max_steps_per_epoch: int | None = None  # for smoke tests and benchmarks
    checkpoint_every: int = 0  # steps between mid-epoch writes of last.pt; 0: at epoch ends only
    deterministic: bool = False  # bitwise-reproducible on CPU, however often the run is killed and resumed
    nan_policy: str = "stop"  # on a NaN/inf loss: "stop" the run, or "skip" that step's update
    strict: bool = False  # an unreadable or non-image file in a folder dataset is an error, not a warning
    sync_bn: bool = False  # under torchrun on CUDA: BN statistics over the global batch, not each rank's share
    aug: str = "none"  # added to crop + flip: colorjitter, randaugment, trivialaugment, autoaugment (folders)
    aug_ops: int = 2  # RandAugment's operations per image
    aug_magnitude: int = 9  # RandAugment's magnitude, torchvision's 0-30 scale
    random_erasing: float = 0.0  # probability of erasing one random box per image (filled with noise)
    cutout: int = 0  # side in pixels of one square per image set to the mean; 0: off
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)


NAN_POLICIES = ("stop", "skip")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# (setting, test, the valid range as the error states it). None passes for the settings that allow it.
_RULES: list[tuple[str, Any, str]] = [
    ("epochs", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("lr", lambda v: v is None or (_is_number(v) and v > 0), "a number > 0 (or unset: --lr-base x batch / 256)"),
    ("lr_base", lambda v: _is_number(v) and v > 0, "a number > 0"),
    ("momentum", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    ("label_smoothing", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("warmup_epochs", lambda v: _is_number(v) and v >= 0, "a number of epochs >= 0"),
    ("min_lr", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    ("ema_decay", lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    ("seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("workers", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("input_size", lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 (or unset: the default)"),
    ("val_split", lambda v: v is None or (_is_number(v) and 0 < v < 1), "a fraction strictly between 0 and 1"),
    ("log_every", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("max_steps_per_epoch", lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 (or unset)"),
    ("checkpoint_every", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: only at epoch ends)"),
    ("nan_policy", lambda v: v in NAN_POLICIES, " or ".join(NAN_POLICIES)),
    ("amp_dtype", lambda v: v in ("bfloat16", "float16"), "bfloat16 or float16"),
    ("amp", lambda v: v is None or isinstance(v, bool), "true or false (or unset: on for CUDA and native-bf16 CPUs)"),
    ("aug", lambda v: v in AUG_POLICIES, ", ".join(AUG_POLICIES)),
    ("aug_ops", lambda v: _is_int(v) and 1 <= v <= 14, "an integer from 1 to 14 (RandAugment has 14 operations)"),
    ("aug_magnitude", lambda v: _is_int(v) and 0 <= v <= 30, "an integer from 0 to 30"),
    ("random_erasing", lambda v: _is_number(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    ("cutout", lambda v: _is_int(v) and v >= 0, "a side in pixels >= 0 (0: off)"),
    ("model", lambda v: isinstance(v, str) and bool(v.strip()), "a model name (see `lightnets models`)"),
    ("data", lambda v: isinstance(v, str), "cifar10, cifar100, cifar10:PATH, cifar100:PATH or folder:PATH"),
    ("device", lambda v: isinstance(v, str), "auto, cpu, cuda or cuda:N"),
    ("model_kwargs", lambda v: isinstance(v, dict), "a mapping of builder keyword arguments"),
]
_BOOLEANS = ("nesterov", "channels_last", "compile", "ema", "quiet", "deterministic", "strict", "sync_bn")


def validate_config(config: TrainConfig) -> None:
    """Refuse an invalid setting with one line that gives its valid range; reads no data and builds no model."""
    for name, test, valid in _RULES:
        value = getattr(config, name)
        if not test(value):
            raise ValueError(f"invalid {_flag(name)} {value!r}: expected {valid}")
    for name in _BOOLEANS:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"invalid {_flag(name)} {getattr(config, name)!r}: expected true or false")
    if config.nesterov and config.momentum == 0:
        raise ValueError("--nesterov needs a --momentum > 0 (expected a number in (0, 1)); or pass --no-nesterov")
    if parse_data_spec(config.data).kind != "folder":  # its error lists the valid forms
        batch_augmentation(augment_spec(config), (0.5,) * 3, (0.5,) * 3)  # refuses what cannot run on batches
    if config.device != "auto":
        try:
            torch.device(config.device)
        except RuntimeError:
            raise ValueError(f"invalid --device {config.device!r}: expected auto, cpu, cuda or cuda:N") from None


def augment_spec(config: TrainConfig) -> AugmentSpec:
    return AugmentSpec(config.aug, config.aug_ops, config.aug_magnitude, config.random_erasing, config.cutout)


def _forward_error(model: nn.Module, size: int) -> str:
    """Why a (2, 3, size, size) batch cannot go through ``model``; empty if it can."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size, device=device))
    except NotImplementedError:
        if device.type == "meta":
            raise  # an operation without a meta kernel: the caller falls back to a real pass
        return "an operation is not implemented for this shape"
    except Exception as error:  # a shape error can be a RuntimeError, ValueError, AssertionError ...
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    return ""


def check_input_size(model: nn.Module, name: str, size: int, rebuild: Any = None) -> None:
    """Refuse an input size that ``model`` cannot take, naming the nearest sizes that it can.

    ``model`` is best built on the meta device: the forward pass then only propagates shapes, in milliseconds.
    ``rebuild()`` gives a real (CPU) model for when a meta pass is impossible.
    """
    model = model.eval()
    try:
        problem = _forward_error(model, size)
    except NotImplementedError:
        if rebuild is None:
            return
        model = rebuild().eval()
        problem = _forward_error(model, size)
    if not problem:
        return
    below = next((s for s in range(size - 1, max(0, size - 65), -1) if not _forward_error(model, s)), None)
    above = next((s for s in range(size + 1, size + 65) if not _forward_error(model, s)), None)
    nearest = " and ".join(str(s) for s in (below, above) if s is not None) or "none within 64 of it"
    default = getattr(model, "default_input_size", None)
    raise ValueError(
        f"invalid --input-size {size}: {name} cannot take {size}x{size} images ({problem}); "
        f"nearest sizes that work: {nearest}" + (f"; its own size is {default}" if default else "")
    )


# --------------------------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return device


def autocast_context(device: torch.device, enabled: bool, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype) if enabled else nullcontext()


def default_input_size(model_name: str) -> int:
    """The model's own input size, read from a parameter-free (meta-device) build."""
    with torch.device("meta"):
        model = create_model(model_name)
    return int(getattr(model, "default_input_size", 224))


def _meta_model(config: TrainConfig) -> nn.Module:
    """A parameter-free build of the configured model: checks the name and kwargs, sizes the checkpoints."""
    try:
        with torch.device("meta"):
            return create_model(config.model, **config.model_kwargs)
    except TypeError as error:  # an unknown builder keyword
        raise ValueError(f"invalid --model-arg for {config.model}: {error}") from None


# --------------------------------------------------------------------------------------------- batches


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
    config: TrainConfig,
    device: torch.device,
    *,
    train: bool,
    epoch: int = 0,
    batch_size: int | None = None,
    start_step: int = 0,
    num_steps: int | None = None,
    bad_images: BadImageLog | None = None,
    shard: tuple[int, int] = (0, 1),
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches are global batches of ``batch_size`` (sliced to this rank's share); evaluation batches
    are ``batch_size`` images of the rank's share of the split. ``augment`` applies to in-memory training batches
    (folder datasets augment in their transform)."""
    batch_size = batch_size or config.batch_size
    position = {"seed": config.seed, "epoch": epoch, "start_step": start_step, "num_steps": num_steps, "shard": shard}
    if isinstance(split, TensorSplit):
        return tensor_batches(split, batch_size, train=train, augment=augment, **position)
    return loader_batches(
        split, batch_size, train=train, workers=config.workers, device=device, bad_images=bad_images, **position
    )


def steps_per_epoch(split: TensorSplit | torch.utils.data.Dataset, config: TrainConfig) -> int:
    steps = max(1, len(split) // config.batch_size)
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


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


# --------------------------------------------------------------------------------------------- optimisation


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only; BN parameters and biases (1-D) are not decayed."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """Per-step multiplier: linear from ~0 to 1 over the warmup, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class ModelEma:
    """Exponential moving average of the weights, with timm's warm-up of the decay for short runs."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


# --------------------------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    confusion: torch.Tensor  # (C, C) int64, rows = true class
    images_per_second: float
    sample_images: torch.Tensor  # uint8, the first images, for the prediction grid
    sample_labels: torch.Tensor
    sample_predictions: torch.Tensor
    sample_probabilities: torch.Tensor

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (100.0 * self.confusion.diag() / totals).tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batch_iter: Iterator[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    num_classes: int,
    *,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
    label_smoothing: float = 0.0,
    keep: int = 32,
    context: DistContext | None = None,
) -> EvalResult:
    """Loss, top-1/top-5 and confusion over all batches; one host sync at the end.

    Under torchrun each rank evaluates its share and the sums are all-reduced, so every rank returns the
    figures of the whole split; the sample images are this rank's first ones.
    """
    model.eval()
    device = preprocess.mean.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct1 = torch.zeros((), device=device, dtype=torch.int64)
    correct5 = torch.zeros((), device=device, dtype=torch.int64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    count, samples = 0, []
    topk = min(5, num_classes)
    start = time.perf_counter()
    for images, labels in batch_iter:
        if labels.numel() == 0:  # every image of the batch was unreadable (and counted where it was read)
            continue
        with autocast_context(device, amp, amp_dtype):
            logits = model(preprocess(images))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")
        top = logits.topk(topk, dim=1).indices
        predictions = top[:, 0]
        correct1 += (predictions == labels).sum()
        correct5 += (top == labels[:, None]).any(1).sum()
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
        count += labels.numel()
        if sum(len(s[0]) for s in samples) < keep:
            probabilities = logits.softmax(1).gather(1, predictions[:, None])[:, 0]
            samples.append(
                (images[:keep].cpu(), labels[:keep].cpu(), predictions[:keep].cpu(), probabilities[:keep].cpu())
            )
    if context is not None and context.enabled:
        totals = torch.stack([loss_sum, correct1.double(), correct5.double(), loss_sum.new_tensor(count)])
        all_reduce_sum(totals, context)
        all_reduce_sum(confusion, context)
        loss_sum, correct1, correct5, count = totals[0], totals[1], totals[2], int(totals[3].item())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if count == 0:
        raise ValueError("evaluation saw no images: the evaluation split is empty")
    if not samples:  # a rank whose share of a tiny split is empty
        no_labels = torch.zeros(0, dtype=torch.int64)
        samples = [(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), no_labels, no_labels, torch.zeros(0))]
    sample_images, sample_labels, sample_predictions, sample_probabilities = (
        torch.cat([s[i] for s in samples])[:keep] for i in range(4)
    )
    return EvalResult(
        loss=loss_sum.item() / count,
        top1=100.0 * correct1.item() / count,
        top5=100.0 * correct5.item() / count,
        confusion=confusion.reshape(num_classes, num_classes).cpu(),
        images_per_second=count / seconds,
        sample_images=sample_images,
        sample_labels=sample_labels,
        sample_predictions=sample_predictions,
        sample_probabilities=sample_probabilities,
    )


# --------------------------------------------------------------------------------------------- run directory

SUMMARY_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_top1",
    "val_top5",
    "epoch_seconds",
    "images_per_second",
    "skipped_images",  # unreadable images skipped in the epoch (train and val); folder datasets only
]


def write_summary(history: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        # restval: rows of runs begun before a column existed (resumed by a newer version) read as 0 there.
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", restval=0)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def write_json(data: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def default_run_dir(config: TrainConfig) -> Path:
    data_name = config.data.split(":", 1)[0]
    model_name = config.model.replace(":", "-")
    return Path("runs") / f"{model_name}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"


class TensorBoard:
    """TensorBoard scalars when the ``tensorboard`` package is installed; nothing otherwise."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best_top1: float
    best_epoch: int
    model: nn.Module
    skipped_images: int = 0
    skipped_steps: int = 0


class TrainingError(RuntimeError):
    """A run that had to stop part-way; the message says why and which checkpoint on disk is still good."""

    exit_code = 1


class NonFiniteLossError(TrainingError):
    """A NaN or infinite loss under ``--nan-policy stop``."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the step in flight was finished and last.pt written. ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class _StopSignals:
    """Turns SIGINT/SIGTERM into a request that the loop honours between steps; restores the old handlers.

    A second signal while the first is being honoured stops at once (KeyboardInterrupt), as a second Ctrl-C
    is expected to.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class _Determinism:
    """``--deterministic``: deterministic kernels (and cuDNN/cuBLAS settings), undone on exit.

    On CPU every kernel PyTorch offers is then deterministic for a given thread count, so a run killed and
    resumed any number of times ends bitwise equal to an uninterrupted one. CUDA has backward kernels with no
    deterministic version (adaptive pooling among them), so there it only warns about those.
    """

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.device = device

    def __enter__(self) -> _Determinism:
        self.previous = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.get_num_threads(),
        )
        if self.enabled:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=self.device.type != "cpu")
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        return self

    def __exit__(self, *exc: Any) -> None:
        enabled, warn_only, cudnn_deterministic, cudnn_benchmark, threads = self.previous
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.set_num_threads(threads)


def default_amp(device: torch.device) -> bool:
    """bf16 autocast where it is faster: on CUDA, and on CPUs with native bf16. On AVX512-BF16,
    benchmarks/cpu_bf16_training.py measured training x1.15-1.72 faster in bf16 for ShuffleNet v1, SPGNet, ParNet and
    AsymmNet-Large, and slower only for AsymmNet-Small (x0.75-0.85); a CPU without native bf16 emulates it."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def resolve_config(
    config: TrainConfig, device: torch.device, bundle: DataBundle, context: DistContext | None = None
) -> dict[str, Any]:
    """Everything that was decided, for args.yaml."""
    world_size = context.world_size if context is not None else 1
    resolved = asdict(config)
    resolved.update(
        device=str(device),
        lr=config.lr if config.lr is not None else config.lr_base * config.batch_size / 256,
        amp=bool(config.amp if config.amp is not None else default_amp(device)),
        input_size=bundle.input_size,
        global_batch_size=config.batch_size,
        world_size=world_size,
        per_process_batch_size=config.batch_size // world_size,
    )
    return resolved


def _write_text(text: str, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _checkpoint_bytes(meta_model: nn.Module, ema: bool) -> int:
    """About how many bytes last.pt and best.pt take: weights, (EMA weights,) momentum; then best weights."""
    weights = sum(t.numel() * t.element_size() for t in meta_model.state_dict().values())
    return weights * ((4 if ema else 3) + 1)


def check_output_dir(run_dir: Path, need_bytes: int) -> None:
    """Fail now, not after an epoch, when checkpoints cannot be written to ``run_dir``.

    It must be creatable and writable, and its disk must hold the checkpoints twice over: an atomic replace
    keeps the old file until the new one is complete.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=run_dir)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)
    except OSError as error:
        raise ValueError(
            f"cannot write to the run directory {run_dir} ({error.strerror or error}); "
            "pick another --out or fix its permissions"
        ) from None
    present = sum((run_dir / name).stat().st_size for name in ("last.pt", "best.pt") if (run_dir / name).is_file())
    need = max(0, 2 * need_bytes - present) + (1 << 20)  # + plots, summary and args
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise ValueError(
            f"not enough free space for {run_dir}: {free / 1e6:.1f} MB free, its checkpoints need about "
            f"{need / 1e6:.1f} MB (old and new copy during each atomic replace); free some or pick another --out"
        )


def _open_resume(run_dir: Path, config: TrainConfig, clean: bool = True) -> dict[str, Any] | None:
    """last.pt of the run to continue (None when it was killed before its first checkpoint), checked.

    ``clean``: remove temporaries a killed checkpoint write left (rank 0 only, under torchrun).
    """
    for stale in remove_stale_temporaries(run_dir) if clean else ():
        print(f"removed {stale}, left by a checkpoint write that was killed", file=sys.stderr)
    last = run_dir / "last.pt"
    if not last.exists():
        return None
    state = load_checkpoint(last, map_location="cpu")
    check_checkpoint(state, model_name=config.model, what=f"{run_dir / 'args.yaml'}")
    missing = [key for key in ("train_model", "optimizer", "scheduler", "rng", "epoch") if key not in state]
    if missing:
        raise CheckpointError(f"{last} cannot be resumed: it lacks {', '.join(missing)} (is it a best.pt?)")
    return state


def _position(epoch: int, step: int) -> str:
    """A checkpoint position (completed epochs, steps into the next) as a person counts it."""
    return f"from the end of epoch {epoch}" if step == 0 else f"from epoch {epoch + 1} step {step}"


def _all_finite(tensors: Any) -> bool:
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).all())


def train(config: TrainConfig, resume: str | Path | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data``; with ``resume``, continue that run from its last checkpoint.

    Every setting is checked, and the output directory probed, before any data is read. SIGINT and SIGTERM
    finish the step in flight, write last.pt and raise :class:`TrainingInterrupted`; a NaN or infinite loss
    raises :class:`NonFiniteLossError` (``nan_policy="stop"``) or skips that step's update (``"skip"``).

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) this process joins the job's process group, trains
    its share of every global batch with DistributedDataParallel, and only rank 0 writes.
    """
    validate_config(config)
    device = resolve_device(config.device)
    context, device = init_distributed(device)
    try:
        result = _train(config, resume, device, context)
    except TrainingInterrupted:
        shutdown_distributed(context)
        raise
    # Other failures leave the group as it is: a peer may be gone, and torchrun ends the job anyway.
    shutdown_distributed(context)
    return result


def _check_distributed(config: TrainConfig, device: torch.device, context: DistContext) -> None:
    world = context.world_size
    if config.batch_size % world:
        multiple = max(world, round(config.batch_size / world) * world)
        raise ValueError(
            f"--batch-size {config.batch_size} is the global batch and must split evenly over {world} processes: "
            f"use a multiple of {world}, e.g. {multiple}"
        )
    if config.sync_bn and device.type != "cuda":
        raise ValueError(
            "--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel; drop it on CPU, where each process "
            "normalises over its own share of the batch"
        )


def _train(config: TrainConfig, resume: str | Path | None, device: torch.device, context: DistContext) -> TrainResult:
    _check_distributed(config, device, context)
    run_dir = Path(resume) if resume else Path(config.out) if config.out else default_run_dir(config)
    if not resume and (run_dir / "last.pt").exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out")
    if resume and not (run_dir / "args.yaml").is_file():
        raise ValueError(f"cannot resume {run_dir}: it has no args.yaml (is it a lightnets run directory?)")
    if context.enabled and config.out is None and not resume:
        # Each rank would stamp its own time into the default name.
        run_dir = Path(str(broadcast_object(str(run_dir), context)))
    resume_state = _open_resume(run_dir, config, clean=context.is_main) if resume else None
    meta_model = _meta_model(config)
    # CIFAR keeps its native 32 px unless asked; folder images are cropped to the model's own size.
    input_size = config.input_size
    if input_size is None:
        is_cifar = parse_data_spec(config.data).kind != "folder"
        input_size = 32 if is_cifar else int(getattr(meta_model, "default_input_size", 224))
    check_input_size(meta_model, config.model, input_size, lambda: create_model(config.model, **config.model_kwargs))
    created = context.is_main and not run_dir.exists()
    try:
        if context.is_main:
            check_output_dir(run_dir, _checkpoint_bytes(meta_model, config.ema))
        with _Determinism(config.deterministic, device):
            trainer = _Trainer(config, device, run_dir, input_size, resume, resume_state, context)
            # Only around the loop: during set-up there is nothing to save, and Ctrl-C should act at once.
            with _StopSignals() as trainer.stop:
                return trainer.run()
    except BaseException:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that never started leaves nothing behind
        raise


@dataclass
class _EpochSums:
    """This rank's running sums of the epoch in progress; a mid-epoch checkpoint saves them summed over the ranks
    (:meth:`_Trainer._running`) so the epoch's row comes out exact."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    start: float = 0.0  # perf_counter at which the epoch would have started, counting earlier processes' time
    skip_events_before: int = 0  # bad_images.events when the epoch started, in this process's count


class _Trainer:
    """One run: the set-up, then :meth:`run` over epochs and steps. Split from :func:`train` only for size."""

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        run_dir: Path,
        input_size: int,
        resume: str | Path | None,
        resume_state: dict[str, Any] | None,
        context: DistContext,
    ) -> None:
        self.config, self.device, self.run_dir, self.context = config, device, run_dir, context
        self.is_main, self.world_size = context.is_main, context.world_size
        self.shard = (context.rank, context.world_size)
        self.quiet = config.quiet or not self.is_main  # one rank reports for the job
        self.stop = _StopSignals()  # replaced by the installed one in train()
        self.control = ControlChannel(context)
        self.say = (lambda *a: None) if self.quiet else (lambda *a: print(*a, flush=True))
        torch.manual_seed(config.seed)
        with self.control.main_first():  # one download of a missing CIFAR archive, not one per rank
            bundle = load_dataset(
                config.data,
                data_root=config.data_root,
                input_size=input_size,
                val_split=config.val_split,
                seed=config.seed,
                strict=config.strict,
                augment=augment_spec(config),
            )
        if resume_state is not None:
            check_checkpoint(resume_state, classes=list(bundle.classes), what=f"--data {config.data}")
        self.bundle = bundle
        self.settings = settings = resolve_config(config, device, bundle, context)

        self.num_classes = len(bundle.classes)
        model_kwargs = {**config.model_kwargs, "num_classes": self.num_classes}
        model = create_model(config.model, **model_kwargs).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if context.enabled and config.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model  # unwrapped: checkpoints, EMA and evaluation use it, so they load in one process
        if context.rank > 0:
            # Same initial weights on every rank (DDP broadcasts rank 0's anyway), but each rank's own stream
            # from here on: otherwise every rank would draw the same dropout masks for its slice.
            torch.manual_seed(derive_seed(config.seed, context.rank))
        self.train_split, self.val_split = bundle.train, bundle.val
        if isinstance(bundle.train, TensorSplit):
            self.train_split = TensorSplit(bundle.train.images.to(device), bundle.train.labels.to(device))
            self.val_split = TensorSplit(bundle.val.images.to(device), bundle.val.labels.to(device))
        self.preprocess = Preprocess(bundle.mean, bundle.std, bundle.input_size, config.channels_last).to(device)
        self.augment = (
            batch_augmentation(augment_spec(config), bundle.mean, bundle.std) if bundle.kind != "folder" else None
        )

        self.amp_dtype = getattr(torch, config.amp_dtype)
        self.use_amp = settings["amp"]
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.amp_dtype == torch.float16 and device.type == "cuda"
        )
        self.optimizer = torch.optim.SGD(
            parameter_groups(model, config.weight_decay),
            lr=settings["lr"],
            momentum=config.momentum,
            nesterov=config.nesterov,
        )
        self.steps = steps = steps_per_epoch(self.train_split, config)
        total_steps = steps * config.epochs
        warmup_steps = min(total_steps, round(config.warmup_epochs * steps))
        min_ratio = config.min_lr / settings["lr"] if settings["lr"] else 0.0
        self.lr_factor = warmup_cosine(total_steps, warmup_steps, min_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.ema = ModelEma(model, config.ema_decay) if config.ema else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        trained: nn.Module = model
        if context.enabled:
            # Averages gradients over the ranks in backward, and starts every rank from rank 0's weights.
            trained = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        self.step_fn = torch.compile(trained) if config.compile else trained
        self.step_losses: dict[int, torch.Tensor] = {}  # epoch -> the loss of each step (all ranks), for steps.csv

        self.history: list[dict[str, Any]] = []
        self.best_top1, self.best_epoch, self.start_epoch, self.start_step = -1.0, 0, 0, 0
        self.running: dict[str, Any] | None = None  # the epoch in progress at a mid-epoch checkpoint
        self.bad_images = BadImageLog(config.strict)
        self.skipped_steps = 0
        self.last_saved = "none written yet"
        if resume_state is not None:
            self._restore(resume_state)
        else:
            if resume:
                self.say(f"{run_dir} has no checkpoint yet: starting it from the beginning")
            if self.is_main:
                _write_text(yaml.safe_dump(settings, sort_keys=False), run_dir / "args.yaml")
        self.checkpoint_meta = {
            "model_name": config.model,
            "model_kwargs": model_kwargs,
            "classes": list(bundle.classes),
            "input_size": bundle.input_size,
            "eval_resize": bundle.eval_resize,
            "mean": list(bundle.mean),
            "std": list(bundle.std),
            "data": config.data,
            "val_split": config.val_split,
            "seed": config.seed,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["train_model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as error:
            problem = weights_fit_report(self.model, state["train_model"]) or str(error).strip().splitlines()[0]
            raise CheckpointError(
                f"{state['path']} does not fit {self.config.model} as configured: {problem}"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        rng = state["rng"]
        per_rank = state.get("rng_per_rank") or []
        if len(per_rank) == self.world_size:
            rng = per_rank[self.context.rank]
        elif self.context.rank > 0:  # resumed with another process count: a fresh stream, still per rank
            rng = None
            torch.manual_seed(derive_seed(self.config.seed, self.context.rank, state["epoch"], state.get("step", 0)))
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.start_epoch, self.start_step, self.history = state["epoch"], state.get("step", 0), state["history"]
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        self.running = state.get("running")
        self.bad_images.paths = dict(state.get("skipped_images", {}))
        self.skipped_steps = state.get("skipped_steps", 0)
        self.step_losses = dict(state.get("step_losses") or {})
        self.last_saved = _position(self.start_epoch, self.start_step)
        threads = state.get("threads")
        if self.config.deterministic and threads and threads != torch.get_num_threads():
            # Reductions split their work by thread: the same count is part of bitwise reproducibility.
            self.say(f"using {threads} threads as this run did before (not {torch.get_num_threads()})")
            torch.set_num_threads(threads)
        self.say(f"resuming {self.run_dir} at epoch {self.start_epoch + 1}, step {self.start_step + 1} of {self.steps}")

    # ---- checkpoints

    def _save(self, state: dict[str, Any], name: str) -> None:
        if not self.is_main:
            return
        try:
            save_checkpoint(state, self.run_dir / name)
        except OSError as error:
            raise TrainingError(
                f"could not write {self.run_dir / name} ({error.strerror or error}); the {name} on disk is still "
                f"the previous complete one; free space or fix {self.run_dir}, then run: "
                f"lightnets train --resume {self.run_dir}"
            ) from None

    def _training_state(self, epoch: int, step: int, running: dict[str, Any] | None) -> dict[str, Any]:
        eval_model = self.ema.module if self.ema is not None else self.model
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        skipped_images = self._skipped_image_paths()  # on every rank: it gathers
        return {
            **self.checkpoint_meta,
            "model": eval_model.state_dict(),
            "train_model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng,
            # Under torchrun, every rank's (a collective: _training_state runs on all ranks at the same steps).
            "rng_per_rank": self.control.gather(rng) if self.context.enabled else None,
            "epoch": epoch,  # completed epochs
            "step": step,  # completed steps of the epoch after them
            "running": running,
            "history": self.history,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "skipped_images": skipped_images,
            "skipped_steps": self.skipped_steps,
            "threads": torch.get_num_threads(),
            "step_losses": self.step_losses,
        }

    def _skipped_image_paths(self) -> dict[str, Any]:
        """The unreadable files every rank has met (each reads only its share of the images)."""
        merged: dict[str, Any] = {}
        for paths in self.control.gather(dict(self.bad_images.paths)):
            merged.update(paths)  # type: ignore[arg-type]
        return merged

    def _interrupted(self, where: str, signum: int) -> TrainingInterrupted:
        name = signal.Signals(signum).name
        processes = (
            f" --nproc {self.world_size} (or your torchrun command with --resume)" if self.context.enabled else ""
        )
        message = (
            f"{name} received: stopped {where} and saved {self.run_dir / 'last.pt'}; "
            f"continue with: lightnets train --resume {self.run_dir}{processes}"
        )
        if self.is_main:
            print(message, file=sys.stderr, flush=True)
        return TrainingInterrupted(signum, message)

    def _check_finite(self, epoch: int, nonfinite: torch.Tensor, upto: int, weights: bool = False) -> None:
        """Under --nan-policy stop, raise if a step before ``upto`` had a non-finite loss (or, with ``weights``,
        if the weights are non-finite: a finite loss can still give infinite gradients)."""
        if self.config.nan_policy != "stop":
            return
        flags = nonfinite[:upto]
        if bool(flags.any()):
            bad = int(flags.nonzero()[0, 0])
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1} step {bad + 1} (of {self.steps}); stopped without saving, "
                f"so last.pt ({self.last_saved}) and best.pt are the last good checkpoints; lower --lr, or pass "
                "--nan-policy skip to skip such steps"
            )
        if weights and not _all_finite(self.model.parameters()):
            raise NonFiniteLossError(
                f"the weights became non-finite by epoch {epoch + 1} step {upto} (of {self.steps}) with a finite "
                f"loss; stopped without saving, so last.pt ({self.last_saved}) is the last good checkpoint"
            )

    # ---- the loop

    def run(self) -> TrainResult:
        config, bundle = self.config, self.bundle
        board = TensorBoard(self.run_dir) if self.is_main else None
        processes = f", {self.world_size} processes" if self.context.enabled else ""
        self.say(
            f"training {config.model} on {config.data} ({len(bundle.train)} train / {len(bundle.val)} "
            f"{bundle.val_name}, {self.num_classes} classes) on {self.device}{processes}, {config.epochs} epochs x "
            f"{self.steps} steps -> {self.run_dir}"
        )
        if bundle.ignored_files:
            self.say(f"ignored {len(bundle.ignored_files)} non-image file(s) in the class folders")
        signum = self.control.settle(self.stop.signum)
        if signum is not None:  # a signal before the first step: nothing new to save
            raise self._interrupted("before the first step", signum)
        for epoch in range(self.start_epoch, config.epochs):
            row, result, improved = self._epoch(epoch)
            if board is not None:
                board.log(row)
                if improved:
                    write_plots(self.run_dir, self.history, result, bundle)
                else:
                    _plots().plot_curves(self.history, self.run_dir / "curves.png", val_name=bundle.val_name)
            signum = self.control.settle(self.stop.signum)  # every epoch, on every rank: it is a collective
            if signum is not None and epoch + 1 < config.epochs:
                raise self._interrupted(f"at the end of epoch {epoch + 1}", signum)
        if board is not None:
            board.close()
            if self.start_epoch >= config.epochs:  # killed after the last checkpoint: finish what it did not get to
                write_summary(self.history, self.run_dir / "summary.csv")
                write_step_losses(self.step_losses, self.steps, self._lr_at, self.run_dir / "steps.csv")
        return self._finish()

    def _lr_at(self, global_step: int) -> float:
        return self.settings["lr"] * self.lr_factor(global_step)

    def _epoch(self, epoch: int) -> tuple[dict[str, Any], EvalResult, bool]:
        config, device, model, steps = self.config, self.device, self.model, self.steps
        model.train()
        first_step = self.start_step if epoch == self.start_epoch else 0
        sums = _EpochSums(
            torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.int64), 0, time.perf_counter()
        )
        sums.skip_events_before = self.bad_images.events
        # Per step: the loss and the gradient norm. Each rank adds its share (its loss / world size), so the
        # all-reduced sum is the global batch's loss; the gradients are already averaged, so each adds norm / world.
        step_loss = torch.zeros(steps, 2, device=device)
        if first_step and self.running is not None:
            sums.start -= self.running["seconds"]
            if self.is_main:  # the saved sums are the job's; the other ranks add to them from zero
                sums.loss_sum = self.running["loss_sum"].to(device)
                sums.correct = self.running["correct"].to(device)
                sums.seen = self.running["seen"]
                sums.skip_events_before -= self.running["skip_events"]
                saved = self.running.get("step_losses")
                if saved is not None:
                    step_loss[: len(saved)] = _loss_and_norm(saved).to(device)
        # One flag per step, set on the device: the NaN check costs no host sync until it is read.
        nonfinite = torch.zeros(steps, dtype=torch.bool, device=device)
        progress = _progress(steps, f"epoch {epoch + 1}/{config.epochs}", self.quiet)
        if progress is not None and first_step:
            progress.update(first_step)
        train_iter = batches(
            self.train_split,
            config,
            device,
            train=True,
            epoch=epoch,
            start_step=first_step,
            num_steps=steps,
            bad_images=self.bad_images,
            shard=self.shard,
            augment=self.augment,
        )
        try:
            for step, (images, labels) in enumerate(train_iter, start=first_step):
                self._step(step, images, labels, sums, nonfinite, step_loss)
                done = step + 1
                # On CPU reading the flag costs nothing (nothing runs ahead of Python), so a NaN stops the run
                # at once; on CUDA it is read only where the loop syncs anyway, and always before a checkpoint.
                log_point = done % config.log_every == 0 or done == steps
                if device.type == "cpu" or log_point:
                    self._check_finite(epoch, nonfinite, done)
                if progress is not None and log_point:
                    # The only host sync in the loop, once every log_every steps. Loss and accuracy are this
                    # rank's share; the speed is the job's.
                    elapsed = time.perf_counter() - sums.start
                    progress.set_postfix(
                        loss=f"{sums.loss_sum.item() / max(sums.seen, 1):.3f}",
                        acc=f"{100 * sums.correct.item() / max(sums.seen, 1):.1f}",
                        img_s=f"{sums.seen * self.world_size / max(elapsed, 1e-9):.0f}",
                        refresh=False,  # the update below redraws once
                    )
                    progress.update(done - progress.n)
                # Every rank must stop after the same step: a signal is acted on once all ranks know of it.
                signum = self.control.poll(self.stop.signum)
                every = config.checkpoint_every
                # The epoch end writes last.pt anyway, after evaluating; a signal does not wait for that.
                due = every and (epoch * steps + done) % every == 0 and done < steps
                if due or signum is not None:
                    self._check_finite(epoch, nonfinite, done, weights=True)
                    running = self._running(sums, step_loss, done)
                    self._save(self._training_state(epoch, done, running), "last.pt")
                    self.last_saved = _position(epoch, done)
                if signum is not None:
                    raise self._interrupted(f"after epoch {epoch + 1} step {done} of {steps}", signum)
        finally:
            if progress is not None:
                progress.close()
        self._check_finite(epoch, nonfinite, steps, weights=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - sums.start
        loss_sum, correct, seen, _ = self._reduce_sums(sums)
        self.step_losses[epoch + 1] = all_reduce_sum(step_loss, self.context).cpu()

        eval_model = self.ema.module if self.ema is not None else model
        val_batches = batches(
            self.val_split,
            config,
            device,
            train=False,
            epoch=epoch,
            batch_size=config.batch_size // self.world_size,
            bad_images=self.bad_images,
            shard=self.shard,
        )
        result = evaluate(
            eval_model,
            val_batches,
            self.preprocess,
            self.num_classes,
            amp=self.use_amp,
            amp_dtype=self.amp_dtype,
            label_smoothing=config.label_smoothing,
            context=self.context,
        )
        # Train and evaluation skips of the epoch, all ranks.
        skipped = torch.tensor(self.bad_images.events - sums.skip_events_before, device=device)
        skip_events = int(all_reduce_sum(skipped, self.context).item())
        row = {
            "epoch": epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": 100.0 * correct / max(seen, 1),
            "val_loss": result.loss,
            "val_top1": result.top1,
            "val_top5": result.top5,
            "epoch_seconds": time.perf_counter() - sums.start,
            "images_per_second": seen / max(train_seconds, 1e-9),
            "skipped_images": skip_events,
        }
        self.history.append(row)
        self.say(
            f"epoch {epoch + 1}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.2f}% | "
            f"{self.bundle.val_name} loss {row['val_loss']:.3f} top-1 {row['val_top1']:.2f}% "
            f"top-5 {row['val_top5']:.2f}% | {row['images_per_second']:.0f} img/s, {row['epoch_seconds']:.1f} s"
        )
        improved = result.top1 > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = result.top1, epoch + 1
            # best.pt before last.pt: a kill between the two then redoes this epoch (rewriting best.pt) instead
            # of resuming past it with best.pt one improvement behind.
            best = {**self.checkpoint_meta, "model": eval_model.state_dict(), "epoch": epoch + 1}
            self._save({**best, "val_top1": result.top1}, "best.pt")
        self._save(self._training_state(epoch + 1, 0, None), "last.pt")
        self.last_saved = _position(epoch + 1, 0)
        if self.is_main:
            try:
                write_summary(self.history, self.run_dir / "summary.csv")
                write_step_losses(self.step_losses, steps, self._lr_at, self.run_dir / "steps.csv")
            except OSError as error:
                raise TrainingError(
                    f"could not write to {self.run_dir} ({error.strerror or error}); last.pt is complete: "
                    f"free space, then run: lightnets train --resume {self.run_dir}"
                ) from None
        return row, result, improved

    def _reduce_sums(self, sums: _EpochSums) -> tuple[float, float, int, int]:
        """The epoch's loss sum, correct count, images seen and train-side skipped images, over all ranks."""
        skip_events = self.bad_images.events - sums.skip_events_before
        totals = torch.stack(
            [
                sums.loss_sum.double(),
                sums.correct.double(),
                sums.loss_sum.new_tensor(sums.seen, dtype=torch.float64),
                sums.loss_sum.new_tensor(skip_events, dtype=torch.float64),
            ]
        )
        loss_sum, correct, seen, skipped = all_reduce_sum(totals, self.context).tolist()
        return loss_sum, correct, int(seen), int(skipped)

    def _running(self, sums: _EpochSums, step_loss: torch.Tensor, done: int) -> dict[str, Any]:
        """The epoch in progress, summed over ranks, for a mid-epoch checkpoint (a collective: all ranks call it)."""
        loss_sum, correct, seen, skip_events = self._reduce_sums(sums)
        return {
            "loss_sum": torch.tensor(loss_sum, dtype=torch.float32),
            "correct": torch.tensor(int(correct), dtype=torch.int64),
            "seen": seen,
            "seconds": time.perf_counter() - sums.start,
            "skip_events": skip_events,
            "step_losses": all_reduce_sum(step_loss[:done].clone(), self.context).cpu(),
        }

    def _step(
        self,
        step: int,
        images: torch.Tensor,
        labels: torch.Tensor,
        sums: _EpochSums,
        nonfinite: torch.Tensor,
        step_loss: torch.Tensor,
    ) -> None:
        """One optimisation step; the schedule advances even when the update is skipped (it follows position)."""
        config, model = self.config, self.model
        update = labels.numel() > 0  # a batch is empty when all its images failed to decode
        if not update and self.context.enabled:
            # The other ranks are about to wait for this one's gradients. Two blank images at weight 0 take part
            # in the all-reduce without moving the weights (two: BN in training mode refuses one).
            size = self.bundle.input_size
            images, labels, weight = images.new_zeros(2, 3, size, size), labels.new_zeros(2), 0.0
            update = True
        else:
            weight = 1.0
        if update:
            if config.nan_policy == "skip":
                buffers = [b.detach().clone() for b in model.buffers()]  # BN statistics a bad step would poison
            with autocast_context(self.device, self.use_amp, self.amp_dtype):
                logits = self.step_fn(self.preprocess(images))
                loss = self.criterion(logits.float(), labels) * weight
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            finite = torch.isfinite(loss.detach())
            if config.nan_policy == "skip":
                # Whether to update must be known before updating, so this policy reads the flag every step
                # (GradScaler makes the same host sync). Masking the update on the device instead would need a
                # copy of every weight and momentum buffer per step. Under torchrun a non-finite loss on any
                # rank has already poisoned every rank's averaged gradients, so all ranks skip together.
                if self.context.enabled:
                    finite = all_reduce_sum((~finite).int(), self.context) == 0
                if not bool(finite):
                    update = False
                    self.skipped_steps += 1
                    with torch.no_grad():
                        for buffer, saved in zip(model.buffers(), buffers):
                            buffer.copy_(saved)
                    self.say(f"skipped the update of step {step + 1}: non-finite loss")
            else:
                nonfinite[step] = ~finite
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
            if self.scaler.is_enabled():  # float16: the norm of the true gradients (scaler.step syncs anyway)
                grad_norm = grad_norm / self.scaler.get_scale()
            step_loss[step] = torch.stack([loss.detach(), grad_norm.to(loss.dtype)]) / self.world_size
        else:
            step_loss[step] = float("nan")
        if update:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(model)
            if weight:
                sums.loss_sum += loss.detach() * labels.numel()
                sums.correct += (logits.detach().argmax(1) == labels).sum()
                sums.seen += labels.numel()
        if self.scheduler._step_count == 1:
            with warnings.catch_warnings():
                # PyTorch warns when the very first scheduler step has no optimizer.step() before it, which
                # is what a skipped first update is.
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        else:
            self.scheduler.step()

    def _finish(self) -> TrainResult:
        config, bundle = self.config, self.bundle
        skipped_paths = self._skipped_image_paths()  # on every rank: it gathers
        result = TrainResult(
            self.run_dir,
            self.history,
            self.best_top1,
            self.best_epoch,
            self.ema.module if self.ema is not None else self.model,
            skipped_images=len(skipped_paths),
            skipped_steps=self.skipped_steps,
        )
        if not self.is_main:
            return result
        selected_on_test = bundle.val_name == "test"
        summary = {
            "model": config.model,
            "data": config.data,
            "epochs": config.epochs,
            "best_epoch": self.best_epoch,
            "best_top1": self.best_top1,
            "best_selected_on": bundle.val_name,
            "final": self.history[-1] if self.history else None,
            "skipped_images": len(skipped_paths),
            "skipped_image_files": sorted(skipped_paths)[:100],
            "ignored_files": len(bundle.ignored_files),
            "skipped_steps": self.skipped_steps,
            "world_size": self.world_size,
        }
        if selected_on_test:
            summary["warning"] = (
                "best.pt was chosen on the test set, so its test accuracy is optimistically biased; "
                "use --val-split to select on a held-out part of the training set"
            )
        write_json(summary, self.run_dir / "results.json")
        notes = []
        if skipped_paths:
            notes.append(f"{len(skipped_paths)} unreadable image(s) skipped")
        if bundle.ignored_files:
            notes.append(f"{len(bundle.ignored_files)} non-image file(s) ignored")
        if self.skipped_steps:
            notes.append(f"{self.skipped_steps} step(s) with a non-finite loss skipped")
        flagged = "; flagged: model selection on the test set" if selected_on_test else ""
        self.say(
            f"best {bundle.val_name} top-1 {self.best_top1:.2f}% at epoch {self.best_epoch} (best.pt chosen on the "
            f"{bundle.val_name} split{flagged})" + (f"; {', '.join(notes)}" if notes else "")
        )
        return result


def _loss_and_norm(saved: torch.Tensor) -> torch.Tensor:
    """A checkpoint's per-step record as (steps, 2); runs saved before the gradient norm was kept have NaN there."""
    if saved.ndim == 2:
        return saved
    return torch.stack([saved, torch.full_like(saved, float("nan"))], dim=1)


def write_step_losses(step_losses: dict[int, torch.Tensor], steps: int, lr_at: Any, path: Path) -> None:
    """steps.csv: the loss of every step (over the whole global batch), the lr it trained at, and the gradient
    norm (of the averaged gradients, before the update) that diagnoses an unstable start."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "global_step", "lr", "loss", "grad_norm"])
        for epoch in sorted(step_losses):
            for step, (loss, norm) in enumerate(_loss_and_norm(step_losses[epoch]).tolist()):
                global_step = (epoch - 1) * steps + step
                lr = f"{lr_at(global_step):.6g}"
                writer.writerow([epoch, step + 1, global_step + 1, lr, f"{loss:.6f}", f"{norm:.6f}"])
    os.replace(tmp, path)


def write_plots(run_dir: Path, history: list[dict[str, Any]], result: EvalResult, bundle: DataBundle) -> None:
    plots = _plots()
    plots.plot_curves(history, run_dir / "curves.png", val_name=bundle.val_name)
    plots.plot_predictions(
        result.sample_images,
        result.sample_labels,
        result.sample_predictions,
        bundle.classes,
        run_dir / "predictions.png",
        probabilities=result.sample_probabilities,
    )
    plots.plot_confusion(result.confusion, bundle.classes, run_dir / "confusion.png")


def _plots():
    from lightnets import plots

    return plots


def _progress(total: int, description: str, quiet: bool):
    if quiet:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr)


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run was started with, from its args.yaml (resolved extras are dropped)."""
    path = Path(run_dir) / "args.yaml"
    if not path.is_file():
        raise ValueError(f"cannot resume {run_dir}: {path} is missing (is it a lightnets run directory?)")
    values = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig.from_dict({k: v for k, v in values.items() if k in known})
    config.out = str(run_dir)
    return config

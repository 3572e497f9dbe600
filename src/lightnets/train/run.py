"""The few named things a training run shares, each set up once by :func:`lightnets.train.loop.train`.

- :class:`Job`: the processes of the run and how they agree (device, torchrun's group, signals, who speaks);
- :class:`Schedule`: how long the run is and when things happen (steps, the lr of each global step, logging,
  mid-epoch checkpoints);
- :class:`StepRecipe`: how one optimisation step runs (the model as trained, loss, preprocessing, precision);
- :class:`RunData`: what it trains and evaluates on (the splits, their per-rank batches, unreadable images);
- :class:`RunFiles`: where it writes and what every checkpoint carries.

Beside them, the set-up steps the loop calls once: the batch-size check, the run's first line, the normalisation,
the speed settings (:func:`run_speed`), and the checks after each pass over the data.

The loop passes each helper only the ones it uses. Functions that all-reduce or gather are collectives: under
torchrun every rank calls them at the same point.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.data import IMAGENET_MEAN, IMAGENET_STD, BadImageLog, DataBundle, ImageFolderSplit
from lightnets.data.batches import Preprocess, batches
from lightnets.distributed import ControlChannel, DistContext
from lightnets.models import create_model
from lightnets.train.config import TrainConfig, augment_spec, speed_mode
from lightnets.train.signals import StopSignals
from lightnets.train.speed import SpeedChoice, choose_speed

__all__ = [
    "Job",
    "RunData",
    "RunFiles",
    "Schedule",
    "StepRecipe",
    "check_batch_size",
    "check_classes_read",
    "describe_run",
    "normalized_bundle",
    "run_speed",
    "skipped_image_paths",
]


@dataclass
class Job:
    """The processes of a run: this one's device, torchrun's group (one process without it), and how they agree."""

    device: torch.device
    context: DistContext
    control: ControlChannel  # agrees on signals across ranks and gathers small objects
    say: Callable[..., None]  # prints on the rank that reports for the job, unless quiet
    stop: StopSignals | None = None  # set around the loop only: during set-up Ctrl-C acts at once

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def shard(self) -> tuple[int, int]:
        return self.context.rank, self.context.world_size


@dataclass
class Schedule:
    """How long the run is and when things happen, in global steps."""

    epochs: int
    steps: int  # per epoch
    lr_at: Callable[[int], float]  # of the global step: warmup then cosine
    log_every: int
    checkpoint_every: int  # steps between mid-epoch checkpoints; 0: at epoch ends only


@dataclass
class StepRecipe:
    """How one optimisation step runs."""

    forward: nn.Module  # the model as trained: DDP-wrapped and/or compiled (the state holds the plain model)
    criterion: nn.Module
    preprocess: Preprocess  # uint8 batch -> normalised input at the model's size, on the device
    amp: bool
    amp_dtype: torch.dtype
    nan_policy: str  # "stop" or "skip"


@dataclass
class RunData:
    """What the run trains and evaluates on, and the images that failed to decode on the way."""

    bundle: DataBundle
    train: Any  # TensorSplit on the device, or ImageFolderSplit decoded by DataLoader workers
    val: Any
    augment: Callable | None  # batched on-device augmentation of in-memory splits
    bad_images: BadImageLog
    batch_size: int  # global
    seed: int
    workers: int
    allow_empty_classes: bool
    empty_classes_warned: set[tuple[str, str]] = field(default_factory=set)  # (split, class) said once

    def batches(self, job: Job, epoch: int, *, train: bool, steps: int | None = None, first_step: int = 0) -> Any:
        """This rank's batches of the epoch: training from ``first_step`` on (augmented), or the held-out split."""
        return batches(
            self.train if train else self.val,
            self.batch_size if train else self.batch_size // job.context.world_size,
            job.device,
            train=train,
            seed=self.seed,
            epoch=epoch,
            workers=self.workers,
            start_step=first_step,
            num_steps=steps if train else None,
            bad_images=self.bad_images,
            shard=job.shard,
            augment=self.augment if train else None,
        )


@dataclass
class RunFiles:
    """Where the run writes, and what every checkpoint carries for eval and predict."""

    run_dir: Path
    meta: dict[str, Any]  # model name and kwargs, classes, preprocessing
    last_saved: str = "none written yet"  # for error messages: which checkpoint on disk is still good


def check_batch_size(config: TrainConfig, train_images: int) -> None:
    """A global batch larger than the training set would be one ragged step an epoch: refuse it, naming both."""
    if config.batch_size > train_images:
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than the training set of {config.data} ({train_images} "
            f"images); pass --batch-size {train_images} or less"
        )


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _per_class(classes: list[str], counts: dict[str, list[int]]) -> str:
    """Each class's train/val image counts, or their ranges when there are too many classes to list."""
    (train_name, train), (val_name, val) = counts.items()
    if len(classes) <= 10:
        return ", ".join(f"{name} {a}/{b}" for name, a, b in zip(classes, train, val))
    return f"{_span(train)} {train_name} / {_span(val)} {val_name} images each"


def describe_run(model: str, data: str, bundle: DataBundle, job: Job, schedule: Schedule, run_dir: Path) -> str:
    """A run's first line: what it trains on what, where, for how long, into which directory; images per class."""
    processes = f", {job.context.world_size} processes" if job.context.enabled else ""
    per_class = _per_class(bundle.classes, bundle.class_counts())
    return (
        f"training {model} on {data} ({len(bundle.train)} train / {len(bundle.val)} {bundle.val_name}, "
        f"{len(bundle.classes)} classes: {per_class}) on {job.device}{processes}, {schedule.epochs} epochs x "
        f"{schedule.steps} steps -> {run_dir}"
    )


def skipped_image_paths(job: Job, bad_images: BadImageLog) -> dict[str, Any]:
    """The unreadable files every rank has met (each reads only its share of the images; a collective)."""
    merged: dict[str, Any] = {}
    for paths in job.control.gather(dict(bad_images.paths)):
        merged.update(paths)  # type: ignore[arg-type]
    return merged


def check_classes_read(data: RunData, job: Job, epoch: int) -> None:
    """After a pass over the data: a class whose every image failed to decode is an error, or with
    --allow-empty-classes a warning, once (a collective: the files each rank met are gathered)."""
    bundle = data.bundle
    if not isinstance(bundle.train, ImageFolderSplit):  # in-memory data has no unreadable files
        return
    bad = skipped_image_paths(job, data.bad_images)
    for split_name, split in (("train", bundle.train), (bundle.val_name, bundle.val)):
        for label in split.unreadable_classes(bad):
            name = split.classes[label]
            problem = (
                f"class {name} has no readable {split_name} image: all {split.counts()[label]} of its files failed "
                f"to decode by the end of epoch {epoch + 1}"
            )
            if not data.allow_empty_classes:
                raise ValueError(
                    f"{problem}; replace them or remove the folder, or pass --allow-empty-classes to keep {name} "
                    f"as a class without {split_name} images"
                )
            if (split_name, name) not in data.empty_classes_warned:
                data.empty_classes_warned.add((split_name, name))
                warnings.warn(
                    f"{problem}; kept as a class without {split_name} images (--allow-empty-classes)", stacklevel=2
                )


def normalized_bundle(
    config: TrainConfig,
    bundle: DataBundle,
    checkpoint: dict[str, Any] | None,
    control: ControlChannel,
    say: Callable,
    weights_cfg: dict[str, Any] | None = None,
) -> DataBundle:
    """``bundle`` with the mean and std ``--normalize`` chose: auto keeps the dataset kind's defaults, or the
    ``--weights``' own (``weights_cfg``, their ``pretrained_cfg``); imagenet sets ImageNet's; dataset measures the
    training images (:func:`lightnets.data.stats.channel_stats`) once, on rank 0, which hands its numbers to every
    rank. A resumed run reuses its checkpoint's numbers rather than measuring again.
    """
    from lightnets.data.stats import channel_stats, with_normalization

    if config.normalize == "auto":
        if weights_cfg and weights_cfg.get("preprocessing_from") == "weights":
            return with_normalization(bundle, weights_cfg["mean"], weights_cfg["std"], augment_spec(config))
        return bundle
    if config.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif checkpoint is not None:
        mean, std = tuple(checkpoint["mean"]), tuple(checkpoint["std"])
    else:
        stats = channel_stats(bundle, config.workers, config.strict) if control.context.is_main else None
        stats = control.gather(stats)[0]
        mean, std = stats.mean, stats.std
        say(
            f"--normalize dataset: mean {', '.join(f'{v:.4f}' for v in mean)}, std {', '.join(f'{v:.4f}' for v in std)}"
            f" over {stats.images} training images ({stats.scale}) in {stats.seconds:.1f} s"
        )
    return with_normalization(bundle, mean, std, augment_spec(config))


def run_speed(
    config: TrainConfig, job: Job, model_kwargs: dict[str, Any], input_size: int, planned_steps: int
) -> SpeedChoice:
    """The channels-last, compile and bf16 settings this run uses (:mod:`lightnets.train.speed`): the explicit ones
    as given, the rest probed, cached or plain as --speed says. Under torchrun every rank probes at once, sharing the
    machine as they will in training, and all take rank 0's choice."""
    fixed = {"channels_last": config.channels_last, "compile": config.compile, "amp": config.amp}
    choice = choose_speed(
        speed_mode(config),
        fixed,
        job.device,
        model=config.model,
        model_kwargs=model_kwargs,
        model_factory=lambda: create_model(config.model, **model_kwargs),
        batch=config.batch_size // job.context.world_size,
        input_size=input_size,
        num_classes=model_kwargs["num_classes"],
        planned_steps=planned_steps,
        world_size=job.context.world_size,
        write_cache=job.is_main,
    )
    if job.context.enabled:
        choice = job.control.gather(choice)[0]
    if choice.message:
        job.say(choice.message)
    return choice

"""The small pieces the training loop calls: its fixed context, the epoch's sums, NaN checks, signal stops, progress.

Each is a named step of :mod:`lightnets.train.loop`'s loop, kept here so the loop itself reads top to bottom.
Functions that all-reduce or gather are collectives: under torchrun every rank calls them at the same point.
"""

from __future__ import annotations

import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.data import IMAGENET_MEAN, IMAGENET_STD, BadImageLog, DataBundle, ImageFolderSplit
from lightnets.data.batches import Preprocess, batches
from lightnets.distributed import ControlChannel, DistContext, all_reduce_sum
from lightnets.train.config import TrainConfig, augment_spec
from lightnets.train.rundir import loss_and_norm
from lightnets.train.signals import NonFiniteLossError, StopSignals, TrainingInterrupted
from lightnets.train.state import TrainState, rng_state, training_checkpoint

__all__ = [
    "EpochSums",
    "Run",
    "begin_sums",
    "check_batch_size",
    "check_classes_read",
    "check_finite",
    "checkpoint_now",
    "epoch_row",
    "first_line",
    "interrupted",
    "normalized_bundle",
    "position",
    "reduce_sums",
    "run_batches",
    "running_sums",
    "show_progress",
    "skipped_image_paths",
    "stop_if_signalled",
]


@dataclass
class Run:
    """What stays fixed while a run trains: its settings, where it writes, its data, and how a step runs."""

    config: TrainConfig
    settings: dict[str, Any]  # the resolved settings of args.yaml
    device: torch.device
    context: DistContext
    control: ControlChannel  # agrees on signals across ranks
    run_dir: Path
    bundle: DataBundle
    train_split: Any
    val_split: Any
    preprocess: Preprocess
    augment: Callable | None  # batched on-device augmentation of in-memory splits
    step_fn: nn.Module  # the model as trained: DDP-wrapped and/or compiled
    criterion: nn.Module
    steps: int  # per epoch
    lr_at: Callable[[int], float]  # of the global step
    use_amp: bool
    meta: dict[str, Any]  # what eval and predict need, in every checkpoint
    bad_images: BadImageLog
    say: Callable[..., None]
    stop: StopSignals | None = None
    last_saved: str = "none written yet"  # for error messages: which checkpoint on disk is still good
    empty_classes_warned: set[tuple[str, str]] = field(default_factory=set)  # (split, class) said once

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def shard(self) -> tuple[int, int]:
        return self.context.rank, self.context.world_size


@dataclass
class EpochSums:
    """This rank's running sums of the epoch in progress (a mid-epoch checkpoint saves them summed over ranks)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    step_loss: torch.Tensor  # (steps, 2): each step's loss and gradient norm, this rank's share
    nonfinite: torch.Tensor  # (steps,) bool, set on the device: the NaN check costs no host sync until read
    seen: int = 0
    start: float = 0.0  # perf_counter at which the epoch would have started, counting earlier processes' time
    skip_events_before: int = 0  # bad_images.events when the epoch started, in this process's count
    seconds: float = 0.0  # training time, set at the epoch's end


def run_batches(run: Run, epoch: int, train: bool, first_step: int = 0) -> Any:
    """This rank's batches of the epoch: training from ``first_step`` on (augmented), or the held-out split."""
    config = run.config
    return batches(
        run.train_split if train else run.val_split,
        config.batch_size if train else config.batch_size // run.context.world_size,
        run.device,
        train=train,
        seed=config.seed,
        epoch=epoch,
        workers=config.workers,
        start_step=first_step,
        num_steps=run.steps if train else None,
        bad_images=run.bad_images,
        shard=run.shard,
        augment=run.augment if train else None,
    )


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


def first_line(run: Run) -> str:
    """What a run trains on what, where, for how long, and into which directory; with the images per class."""
    config, bundle = run.config, run.bundle
    processes = f", {run.context.world_size} processes" if run.context.enabled else ""
    per_class = _per_class(bundle.classes, bundle.class_counts())
    return (
        f"training {config.model} on {config.data} ({len(bundle.train)} train / {len(bundle.val)} {bundle.val_name}, "
        f"{len(bundle.classes)} classes: {per_class}) on {run.device}{processes}, {config.epochs} epochs x "
        f"{run.steps} steps -> {run.run_dir}"
    )


def check_classes_read(run: Run, epoch: int) -> None:
    """After a pass over the data: a class whose every image failed to decode is an error, or with
    --allow-empty-classes a warning, once (a collective: the files each rank met are gathered)."""
    bundle = run.bundle
    if not isinstance(bundle.train, ImageFolderSplit):  # in-memory data has no unreadable files
        return
    bad = skipped_image_paths(run)
    for split_name, split in (("train", bundle.train), (bundle.val_name, bundle.val)):
        for label in split.unreadable_classes(bad):
            name = split.classes[label]
            problem = (
                f"class {name} has no readable {split_name} image: all {split.counts()[label]} of its files failed "
                f"to decode by the end of epoch {epoch + 1}"
            )
            if not run.config.allow_empty_classes:
                raise ValueError(
                    f"{problem}; replace them or remove the folder, or pass --allow-empty-classes to keep {name} "
                    f"as a class without {split_name} images"
                )
            if (split_name, name) not in run.empty_classes_warned:
                run.empty_classes_warned.add((split_name, name))
                warnings.warn(
                    f"{problem}; kept as a class without {split_name} images (--allow-empty-classes)", stacklevel=2
                )


def begin_sums(run: Run, state: TrainState, first_step: int) -> EpochSums:
    """Zero sums, or after a mid-epoch resume the job's saved ones (on rank 0; the others add to them from zero)."""
    device = run.device
    sums = EpochSums(
        loss_sum=torch.zeros((), device=device),
        correct=torch.zeros((), device=device, dtype=torch.int64),
        step_loss=torch.zeros(run.steps, 2, device=device),
        nonfinite=torch.zeros(run.steps, dtype=torch.bool, device=device),
        start=time.perf_counter(),
        skip_events_before=run.bad_images.events,
    )
    saved = state.running
    if first_step and saved is not None:
        sums.start -= saved["seconds"]
        if run.is_main:
            sums.loss_sum = saved["loss_sum"].to(device)
            sums.correct = saved["correct"].to(device)
            sums.seen = saved["seen"]
            sums.skip_events_before -= saved["skip_events"]
            if saved.get("step_losses") is not None:
                losses = loss_and_norm(saved["step_losses"])
                sums.step_loss[: len(losses)] = losses.to(device)
    return sums


def reduce_sums(run: Run, sums: EpochSums) -> tuple[float, float, int, int]:
    """The epoch's loss sum, correct count, images seen and train-side skipped images, over all ranks."""
    skip_events = run.bad_images.events - sums.skip_events_before
    totals = torch.stack(
        [
            sums.loss_sum.double(),
            sums.correct.double(),
            sums.loss_sum.new_tensor(sums.seen, dtype=torch.float64),
            sums.loss_sum.new_tensor(skip_events, dtype=torch.float64),
        ]
    )
    loss_sum, correct, seen, skipped = all_reduce_sum(totals, run.context).tolist()
    return loss_sum, correct, int(seen), int(skipped)


def running_sums(run: Run, sums: EpochSums, done: int) -> dict[str, Any]:
    """The epoch in progress, summed over ranks, for a mid-epoch checkpoint (a collective)."""
    loss_sum, correct, seen, skip_events = reduce_sums(run, sums)
    return {
        "loss_sum": torch.tensor(loss_sum, dtype=torch.float32),
        "correct": torch.tensor(int(correct), dtype=torch.int64),
        "seen": seen,
        "seconds": time.perf_counter() - sums.start,
        "skip_events": skip_events,
        "step_losses": all_reduce_sum(sums.step_loss[:done].clone(), run.context).cpu(),
    }


def epoch_row(run: Run, epoch: int, sums: EpochSums, result: Any) -> dict[str, Any]:
    """The epoch's row of summary.csv, over all ranks (a collective), also printed as the epoch's line."""
    loss_sum, correct, seen, _ = reduce_sums(run, sums)
    skipped = torch.tensor(run.bad_images.events - sums.skip_events_before, device=run.device)  # train and eval
    row = {
        "epoch": epoch + 1,
        "lr": run.lr_at((epoch + 1) * run.steps),  # where the schedule stands at the epoch's end
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": 100.0 * correct / max(seen, 1),
        "val_loss": result.loss,
        "val_top1": result.top1,
        "val_top5": result.top5,
        "epoch_seconds": time.perf_counter() - sums.start,
        "images_per_second": seen / max(sums.seconds, 1e-9),
        "skipped_images": int(all_reduce_sum(skipped, run.context).item()),
    }
    run.say(
        f"epoch {epoch + 1}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.2f}% | "
        f"{run.bundle.val_name} loss {row['val_loss']:.3f} top-1 {row['val_top1']:.2f}% "
        f"top-5 {row['val_top5']:.2f}% | {row['images_per_second']:.0f} img/s, {row['epoch_seconds']:.1f} s"
    )
    return row


def checkpoint_now(run: Run, state: TrainState) -> dict[str, Any]:
    """last.pt at the state's position (a collective under torchrun: it gathers every rank's stream and files)."""
    state.skipped_images = skipped_image_paths(run)
    rng = rng_state(run.device)
    per_rank = run.control.gather(rng) if run.context.enabled else None
    return training_checkpoint(state, run.meta, rng, per_rank, torch.get_num_threads())


def skipped_image_paths(run: Run) -> dict[str, Any]:
    """The unreadable files every rank has met (each reads only its share of the images; a collective)."""
    merged: dict[str, Any] = {}
    for paths in run.control.gather(dict(run.bad_images.paths)):
        merged.update(paths)  # type: ignore[arg-type]
    return merged


def _all_finite(tensors: Any) -> bool:
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).all())


def check_finite(run: Run, epoch: int, nonfinite: torch.Tensor, upto: int, model: nn.Module | None = None) -> None:
    """Under --nan-policy stop, raise if a step before ``upto`` had a non-finite loss (or, given ``model``, if its
    weights are non-finite: a finite loss can still give infinite gradients)."""
    if run.config.nan_policy != "stop":
        return
    flags = nonfinite[:upto]
    if bool(flags.any()):
        bad = int(flags.nonzero()[0, 0])
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1} step {bad + 1} (of {run.steps}); stopped without saving, so "
            f"last.pt ({run.last_saved}) and best.pt are the last good checkpoints; lower --lr, or pass "
            "--nan-policy skip to skip such steps"
        )
    if model is not None and not _all_finite(model.parameters()):
        raise NonFiniteLossError(
            f"the weights became non-finite by epoch {epoch + 1} step {upto} (of {run.steps}) with a finite loss; "
            f"stopped without saving, so last.pt ({run.last_saved}) is the last good checkpoint"
        )


def interrupted(run: Run, where: str, signum: int) -> TrainingInterrupted:
    """The error that ends a run stopped by a signal, after saying on rank 0 where it saved and how to resume."""
    name = signal.Signals(signum).name
    world = run.context.world_size
    processes = f" --nproc {world} (or your torchrun command with --resume)" if run.context.enabled else ""
    message = (
        f"{name} received: stopped {where} and saved {run.run_dir / 'last.pt'}; "
        f"continue with: lightnets train --resume {run.run_dir}{processes}"
    )
    if run.is_main:
        print(message, file=sys.stderr, flush=True)
    return TrainingInterrupted(signum, message)


def stop_if_signalled(run: Run, where: str) -> None:
    """Between epochs (and before the first step): stop, on every rank, if any rank got SIGINT or SIGTERM."""
    signum = run.control.settle(run.stop.signum if run.stop is not None else None)
    if signum is not None:
        raise interrupted(run, where, signum)


def show_progress(progress: Any, run: Run, sums: EpochSums, done: int) -> None:
    # The only host sync in the loop, once every log_every steps. Loss and accuracy are this rank's share; the
    # speed is the job's.
    elapsed = time.perf_counter() - sums.start
    progress.set_postfix(
        loss=f"{sums.loss_sum.item() / max(sums.seen, 1):.3f}",
        acc=f"{100 * sums.correct.item() / max(sums.seen, 1):.1f}",
        img_s=f"{sums.seen * run.context.world_size / max(elapsed, 1e-9):.0f}",
        refresh=False,  # the update below redraws once
    )
    progress.update(done - progress.n)


def position(epoch: int, step: int) -> str:
    """A checkpoint position (completed epochs, steps into the next) as a person counts it."""
    return f"from the end of epoch {epoch}" if step == 0 else f"from epoch {epoch + 1} step {step}"


def normalized_bundle(
    config: TrainConfig, bundle: DataBundle, checkpoint: dict[str, Any] | None, control: ControlChannel, say: Callable
) -> DataBundle:
    """``bundle`` with the mean and std ``--normalize`` chose: auto keeps the dataset kind's defaults, imagenet sets
    ImageNet's, dataset measures the training images (:func:`lightnets.data.stats.channel_stats`) once, on rank 0,
    which hands its numbers to every rank. A resumed run reuses its checkpoint's numbers rather than measuring again.
    """
    from lightnets.data.stats import channel_stats, with_normalization

    if config.normalize == "auto":
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

"""The figures of the epoch in progress: summed on the device without host syncs, reduced over ranks at its end
(summary.csv's row and the printed line), saved mid-epoch so that a resumed epoch reports as if never stopped."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from lightnets.data import BadImageLog
from lightnets.distributed import DistContext, all_reduce_sum
from lightnets.train.run import Job, Schedule
from lightnets.train.rundir import loss_and_norm

__all__ = ["EpochSums", "begin_sums", "epoch_row", "reduce_sums", "running_sums", "show_progress"]


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


def begin_sums(
    job: Job, steps: int, bad_images: BadImageLog, saved: dict[str, Any] | None, first_step: int
) -> EpochSums:
    """Zero sums, or after a mid-epoch resume the job's ``saved`` ones (on rank 0; the others add to them from 0)."""
    device = job.device
    sums = EpochSums(
        loss_sum=torch.zeros((), device=device),
        correct=torch.zeros((), device=device, dtype=torch.int64),
        step_loss=torch.zeros(steps, 2, device=device),
        nonfinite=torch.zeros(steps, dtype=torch.bool, device=device),
        start=time.perf_counter(),
        skip_events_before=bad_images.events,
    )
    if first_step and saved is not None:
        sums.start -= saved["seconds"]
        if job.is_main:
            sums.loss_sum = saved["loss_sum"].to(device)
            sums.correct = saved["correct"].to(device)
            sums.seen = saved["seen"]
            sums.skip_events_before -= saved["skip_events"]
            if saved.get("step_losses") is not None:
                losses = loss_and_norm(saved["step_losses"])
                sums.step_loss[: len(losses)] = losses.to(device)
    return sums


def reduce_sums(sums: EpochSums, bad_images: BadImageLog, context: DistContext) -> tuple[float, float, int, int]:
    """The epoch's loss sum, correct count, images seen and train-side skipped images, over all ranks."""
    skip_events = bad_images.events - sums.skip_events_before
    totals = torch.stack(
        [
            sums.loss_sum.double(),
            sums.correct.double(),
            sums.loss_sum.new_tensor(sums.seen, dtype=torch.float64),
            sums.loss_sum.new_tensor(skip_events, dtype=torch.float64),
        ]
    )
    loss_sum, correct, seen, skipped = all_reduce_sum(totals, context).tolist()
    return loss_sum, correct, int(seen), int(skipped)


def running_sums(sums: EpochSums, bad_images: BadImageLog, context: DistContext, done: int) -> dict[str, Any]:
    """The epoch in progress, summed over ranks, for a mid-epoch checkpoint (a collective)."""
    loss_sum, correct, seen, skip_events = reduce_sums(sums, bad_images, context)
    return {
        "loss_sum": torch.tensor(loss_sum, dtype=torch.float32),
        "correct": torch.tensor(int(correct), dtype=torch.int64),
        "seen": seen,
        "seconds": time.perf_counter() - sums.start,
        "skip_events": skip_events,
        "step_losses": all_reduce_sum(sums.step_loss[:done].clone(), context).cpu(),
    }


def epoch_row(
    job: Job, schedule: Schedule, bad_images: BadImageLog, val_name: str, epoch: int, sums: EpochSums, result: Any
) -> dict[str, Any]:
    """The epoch's row of summary.csv, over all ranks (a collective), also printed as the epoch's line."""
    loss_sum, correct, seen, _ = reduce_sums(sums, bad_images, job.context)
    skipped = torch.tensor(bad_images.events - sums.skip_events_before, device=job.device)  # train and eval
    row = {
        "epoch": epoch + 1,
        "lr": schedule.lr_at((epoch + 1) * schedule.steps),  # where the schedule stands at the epoch's end
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": 100.0 * correct / max(seen, 1),
        "val_loss": result.loss,
        "val_top1": result.top1,
        "val_top5": result.top5,
        "epoch_seconds": time.perf_counter() - sums.start,
        "images_per_second": seen / max(sums.seconds, 1e-9),
        "skipped_images": int(all_reduce_sum(skipped, job.context).item()),
    }
    job.say(
        f"epoch {epoch + 1}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.2f}% | "
        f"{val_name} loss {row['val_loss']:.3f} top-1 {row['val_top1']:.2f}% "
        f"top-5 {row['val_top5']:.2f}% | {row['images_per_second']:.0f} img/s, {row['epoch_seconds']:.1f} s"
    )
    return row


def show_progress(progress: Any, sums: EpochSums, done: int, world_size: int) -> None:
    # The only host sync in the loop, once every log_every steps. Loss and accuracy are this rank's share; the
    # speed is the job's.
    elapsed = time.perf_counter() - sums.start
    progress.set_postfix(
        loss=f"{sums.loss_sum.item() / max(sums.seen, 1):.3f}",
        acc=f"{100 * sums.correct.item() / max(sums.seen, 1):.1f}",
        img_s=f"{sums.seen * world_size / max(elapsed, 1e-9):.0f}",
        refresh=False,  # the update below redraws once
    )
    progress.update(done - progress.n)

"""The run directory: checked before training, then every artifact a run writes to it, each written atomically.

args.yaml (the resolved settings), summary.csv (a row per epoch), steps.csv (a row per step), results.json (the
outcome), curves.png / predictions.png / confusion.png, TensorBoard events when tensorboard is installed.
Checkpoints (last.pt, best.pt) are written here too (:func:`save_checkpoint`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lightnets.files import atomic_path, atomic_write, remove_stale_temporaries

__all__ = [
    "PREVIOUS_NAME",
    "SUMMARY_COLUMNS",
    "TensorBoard",
    "check_output_dir",
    "check_run_dir",
    "checkpoint_bytes",
    "choose_run_dir",
    "clean_temporaries",
    "default_run_dir",
    "keep_previous",
    "progress_bar",
    "save_checkpoint",
    "write_args",
    "write_json",
    "write_plots",
    "write_results",
    "write_step_losses",
    "write_summary",
]

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


def default_run_dir(model: str, data: str) -> Path:
    return Path("runs") / f"{model.replace(':', '-')}-{data.split(':', 1)[0]}-{time.strftime('%Y%m%d-%H%M%S')}"


def choose_run_dir(out: str | None, resume: str | Path | None, model: str, data: str, context: Any) -> Path:
    """The run directory: --resume's, --out, or a new timestamped one (rank 0's name under torchrun)."""
    run_dir = Path(resume) if resume else Path(out) if out else default_run_dir(model, data)
    if context.enabled and out is None and not resume:
        from lightnets.distributed import broadcast_object

        run_dir = Path(str(broadcast_object(str(run_dir), context)))  # each rank would stamp its own time
    return run_dir


def check_run_dir(run_dir: Path, resume: str | Path | None) -> None:
    """A new run does not overwrite a run; a resumed one is a lightnets run directory."""
    if not resume and (run_dir / "last.pt").exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out")
    if resume and not (run_dir / "args.yaml").is_file():
        raise ValueError(f"cannot resume {run_dir}: it has no args.yaml (is it a lightnets run directory?)")


PREVIOUS_NAME = "previous.pt"  # the last.pt before the current one, kept in case last.pt is damaged


def checkpoint_bytes(meta_model: nn.Module, ema: bool) -> int:
    """About how many bytes the checkpoints take: last.pt and previous.pt (weights, (EMA weights,) momentum each),
    then best.pt's weights."""
    weights = sum(t.numel() * t.element_size() for t in meta_model.state_dict().values())
    return weights * (2 * (4 if ema else 3) + 1)


def keep_previous(last: Path) -> None:
    """Before ``last`` is replaced: keep the current one as previous.pt beside it, so that a last.pt damaged later
    (a disk error, a copy cut short) still leaves a good checkpoint to resume from. A hard link, renamed into place:
    no copy, and previous.pt is always a complete file."""
    if not last.is_file():
        return
    previous = last.with_name(PREVIOUS_NAME)
    with atomic_path(previous) as tmp:
        try:
            tmp.unlink(missing_ok=True)
            os.link(last, tmp)
        except OSError:  # a filesystem without hard links: copy
            shutil.copyfile(last, tmp)


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
            os.fsync(fd)  # a full disk can accept the write into the cache and fail only here
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


def clean_temporaries(run_dir: Path) -> None:
    """Remove what writes killed part-way left behind (a SIGKILL during a checkpoint, a plot, a table)."""
    for stale in remove_stale_temporaries(run_dir):
        print(f"removed {stale}, left by a write that was killed", file=sys.stderr)


def write_args(settings: dict[str, Any], run_dir: Path) -> None:
    atomic_write(run_dir / "args.yaml", yaml.safe_dump(settings, sort_keys=False))


def write_json(data: Any, path: Path) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def write_summary(history: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        # restval: rows of runs begun before a column existed (resumed by a newer version) read as 0 there.
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", restval=0)
        writer.writeheader()
        writer.writerows(history)


def loss_and_norm(saved: torch.Tensor) -> torch.Tensor:
    """A checkpoint's per-step record as (steps, 2); runs saved before the gradient norm was kept have NaN there."""
    if saved.ndim == 2:
        return saved
    return torch.stack([saved, torch.full_like(saved, float("nan"))], dim=1)


def write_step_losses(step_losses: dict[int, torch.Tensor], steps: int, lr_at: Any, path: Path) -> None:
    """steps.csv: the loss of every step (over the whole global batch), the lr it trained at, and the gradient
    norm (of the averaged gradients, before the update) that diagnoses an unstable start."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "global_step", "lr", "loss", "grad_norm"])
        for epoch in sorted(step_losses):
            for step, (loss, norm) in enumerate(loss_and_norm(step_losses[epoch]).tolist()):
                global_step = (epoch - 1) * steps + step
                lr = f"{lr_at(global_step):.6g}"
                writer.writerow([epoch, step + 1, global_step + 1, lr, f"{loss:.6f}", f"{norm:.6f}"])


def write_plots(run_dir: Path, history: list[dict[str, Any]], result: Any, classes: list[str], val_name: str) -> None:
    """curves.png, and from an evaluation ``result`` the prediction grid and the confusion matrix."""
    from lightnets import plots  # matplotlib: only when a run gets this far

    plots.plot_curves(history, run_dir / "curves.png", val_name=val_name)
    if result is None:
        return
    plots.plot_predictions(
        result.sample_images,
        result.sample_labels,
        result.sample_predictions,
        classes,
        run_dir / "predictions.png",
        probabilities=result.sample_probabilities,
    )
    plots.plot_confusion(result.confusion, classes, run_dir / "confusion.png")


def write_results(
    run_dir: Path,
    config: Any,
    bundle: Any,
    history: list[dict[str, Any]],
    best_top1: float,
    best_epoch: int,
    skipped_images: dict[str, str],
    skipped_steps: int,
    world_size: int,
) -> str:
    """results.json: the outcome, which split chose best.pt (flagged when it was the test set), the images per
    class of each split and what was skipped; returns the run's last line to print."""
    selected_on_test = bundle.val_name == "test"
    summary: dict[str, Any] = {
        "model": config.model,
        "data": config.data,
        "epochs": config.epochs,
        "best_epoch": best_epoch,
        "best_top1": best_top1,
        "best_selected_on": bundle.val_name,
        "final": history[-1] if history else None,
        "skipped_images": len(skipped_images),
        "skipped_image_files": sorted(skipped_images)[:100],
        "ignored_files": len(bundle.ignored_files),
        "images_per_class": {
            split: dict(zip(bundle.classes, counts)) for split, counts in bundle.class_counts().items()
        },
        "scan_skipped": len(bundle.skipped_entries),
        "scan_skipped_entries": [{"path": e.path, "reason": e.reason} for e in bundle.skipped_entries[:100]],
        "skipped_steps": skipped_steps,
        "world_size": world_size,
    }
    if selected_on_test:
        summary["warning"] = (
            "best.pt was chosen on the test set, so its test accuracy is optimistically biased; "
            "use --val-split to select on a held-out part of the training set"
        )
    write_json(summary, run_dir / "results.json")
    notes = []
    if skipped_images:
        notes.append(f"{len(skipped_images)} unreadable image(s) skipped")
    if bundle.ignored_files:
        notes.append(f"{len(bundle.ignored_files)} non-image file(s) ignored")
    if bundle.skipped_entries:
        notes.append(f"{len(bundle.skipped_entries)} folder entries skipped by the scan (results.json lists them)")
    if skipped_steps:
        notes.append(f"{skipped_steps} step(s) with a non-finite loss skipped")
    flagged = "; flagged: model selection on the test set" if selected_on_test else ""
    return (
        f"best {bundle.val_name} top-1 {best_top1:.2f}% at epoch {best_epoch} (best.pt chosen on the "
        f"{bundle.val_name} split{flagged})" + (f"; {', '.join(notes)}" if notes else "")
    )


def progress_bar(total: int, description: str, quiet: bool) -> Any:
    if quiet:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr)


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


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always either the old file or the complete new one.

    Through :func:`lightnets.files.atomic_path`: any failure (a full disk, an interrupt) leaves ``path`` as it
    was; a SIGKILL can leave the temporary behind, which :func:`lightnets.files.remove_stale_temporaries` clears.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)

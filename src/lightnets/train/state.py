"""What a run must keep to continue: built at the start, written to last.pt, restored by ``--resume``.

:class:`TrainState` holds the model (unwrapped: checkpoints, EMA and evaluation use it, so they load in one
process), its optimizer, gradient scaler and EMA, and the position and record of the run. :func:`build_state`
makes a fresh one, :func:`training_checkpoint` turns it into last.pt's dict, :func:`restore_state` reads one back.
The learning rate is not state: it is a function of the global step (:func:`lightnets.train.optim.warmup_cosine`).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.data import derive_seed
from lightnets.distributed import DistContext
from lightnets.files import atomic_path
from lightnets.models import create_model
from lightnets.models.checkpoint import CheckpointError, check_checkpoint, load_checkpoint, weights_fit_report
from lightnets.train.config import TrainConfig
from lightnets.train.finetune import freeze
from lightnets.train.optim import ModelEma, parameter_groups
from lightnets.train.rundir import PREVIOUS_NAME, clean_temporaries

__all__ = [
    "TrainResult",
    "TrainState",
    "build_state",
    "check_input_size",
    "checkpoint_meta",
    "meta_model",
    "open_resume",
    "restore_state",
    "rng_state",
    "training_checkpoint",
]


def meta_model(config: TrainConfig) -> nn.Module:
    """A parameter-free build of the configured model: checks the name and kwargs, sizes the checkpoints."""
    try:
        with torch.device("meta"):
            return create_model(config.model, **config.model_kwargs)
    except TypeError as error:  # an unknown builder keyword
        raise ValueError(f"invalid --model-arg for {config.model}: {error}") from None


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


@dataclass
class TrainResult:
    """What :func:`lightnets.train.loop.train` returns: where the run is, its record and its (EMA) model."""

    run_dir: Path
    history: list[dict[str, Any]]
    best_top1: float
    best_epoch: int
    model: nn.Module
    skipped_images: int = 0
    skipped_steps: int = 0


@dataclass
class TrainState:
    """The model and its optimisation state, and where the run is: everything last.pt restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of the epoch after them
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float = -1.0
    best_epoch: int = 0
    running: dict[str, Any] | None = None  # the epoch in progress at a mid-epoch checkpoint
    skipped_images: dict[str, str] = field(default_factory=dict)  # unreadable file -> reason, as saved
    skipped_steps: int = 0
    step_losses: dict[int, torch.Tensor] = field(default_factory=dict)  # epoch -> (steps, 2) loss and grad norm

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def build_state(
    config: TrainConfig,
    model_kwargs: dict[str, Any],
    lr: float,
    device: torch.device,
    context: Any,
    start: nn.Module | None = None,
) -> TrainState:
    """A fresh model (or ``start``, the model --weights built), optimizer, scaler and EMA, with --freeze applied.
    The caller has seeded torch: fresh weights follow from the seed."""
    model = (start if start is not None else create_model(config.model, **model_kwargs)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if context.enabled and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if context.rank > 0:
        # Same initial weights on every rank (DDP broadcasts rank 0's anyway), but each rank's own stream from
        # here on: otherwise every rank would draw the same dropout masks for its slice.
        torch.manual_seed(derive_seed(config.seed, context.rank))
    freeze(model, config.freeze)
    float16 = config.amp and config.amp_dtype == "float16" and device.type == "cuda"
    optimizer = torch.optim.SGD(
        parameter_groups(model, config.weight_decay, config.backbone_lr),
        lr=lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    ema = ModelEma(model, config.ema_decay) if config.ema else None
    return TrainState(model, optimizer, torch.amp.GradScaler("cuda", enabled=float16), ema)


def checkpoint_meta(
    config: TrainConfig, model_kwargs: dict[str, Any], bundle: Any, channel_order: str = "RGB"
) -> dict[str, Any]:
    """What eval and predict need, in every checkpoint: the model, its classes and its preprocessing."""
    return {
        "channel_order": channel_order,
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


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def training_checkpoint(
    state: TrainState, meta: dict[str, Any], rng: dict[str, Any], rng_per_rank: list | None, threads: int
) -> dict[str, Any]:
    """last.pt: ``meta`` (what eval and predict need), the weights (EMA's under "model"), everything to resume."""
    return {
        **meta,
        "model": state.eval_model.state_dict(),
        "train_model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "rng": rng,
        "rng_per_rank": rng_per_rank,  # under torchrun, every rank's stream
        "epoch": state.epoch,
        "step": state.step,
        "running": state.running,
        "history": state.history,
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
        "skipped_images": state.skipped_images,
        "skipped_steps": state.skipped_steps,
        "threads": threads,
        "step_losses": state.step_losses,
    }


def open_resume(run_dir: Path, config: TrainConfig, clean: bool = True) -> dict[str, Any] | None:
    """last.pt of the run to continue (None when it was killed before its first checkpoint), checked.

    ``clean``: remove temporaries a killed write left (rank 0 only, under torchrun).
    """
    if clean:
        clean_temporaries(run_dir)
    last = run_dir / "last.pt"
    if not last.exists():
        return None
    try:
        checkpoint = load_checkpoint(last, map_location="cpu")
    except CheckpointError as damage:
        previous = run_dir / PREVIOUS_NAME
        if not previous.is_file():
            raise
        checkpoint = load_checkpoint(previous, map_location="cpu")  # damaged too: that error, naming the file
        if clean:  # rank 0: the damaged file is kept for a look, and previous.pt takes its place
            kept = last.with_name("last.pt.damaged")
            os.replace(last, kept)
            with atomic_path(last) as tmp:
                shutil.copyfile(previous, tmp)
            print(
                f"{damage}; resuming from {previous} instead (epoch {checkpoint['epoch'] + 1}, step "
                f"{checkpoint.get('step', 0) + 1}), the checkpoint before it; the damaged file is now {kept}",
                file=sys.stderr,
            )
        checkpoint["path"] = str(last)
    check_checkpoint(checkpoint, model_name=config.model, what=f"{run_dir / 'args.yaml'}")
    # Checkpoints before the lr was a function of the step also hold a "scheduler"; it is not needed.
    missing = [key for key in ("train_model", "optimizer", "rng", "epoch") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{last} cannot be resumed: it lacks {', '.join(missing)} (is it a best.pt?)")
    return checkpoint


def restore_state(
    state: TrainState, checkpoint: dict[str, Any], config: TrainConfig, device: torch.device, context: DistContext
) -> None:
    """Load last.pt into ``state`` and the random streams, so the run continues exactly where it stopped."""
    try:
        state.model.load_state_dict(checkpoint["train_model"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError) as error:
        problem = weights_fit_report(state.model, checkpoint["train_model"]) or str(error).strip().splitlines()[0]
        raise CheckpointError(f"{checkpoint['path']} does not fit {config.model} as configured: {problem}") from None
    state.scaler.load_state_dict(checkpoint["scaler"])
    if state.ema is not None:
        state.ema.load_state_dict(checkpoint["ema"])
    rng = checkpoint["rng"]
    per_rank = checkpoint.get("rng_per_rank") or []
    if len(per_rank) == context.world_size:
        rng = per_rank[context.rank]
    elif context.rank > 0:  # resumed with another process count: a fresh stream, still per rank
        rng = None
        torch.manual_seed(derive_seed(config.seed, context.rank, checkpoint["epoch"], checkpoint.get("step", 0)))
    if rng is not None:
        torch.set_rng_state(rng["cpu"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)
    state.epoch, state.step, state.history = checkpoint["epoch"], checkpoint.get("step", 0), checkpoint["history"]
    state.best_top1, state.best_epoch = checkpoint["best_top1"], checkpoint["best_epoch"]
    state.running = checkpoint.get("running")
    state.skipped_images = dict(checkpoint.get("skipped_images", {}))
    state.skipped_steps = checkpoint.get("skipped_steps", 0)
    state.step_losses = dict(checkpoint.get("step_losses") or {})

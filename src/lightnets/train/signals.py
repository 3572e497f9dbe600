"""How a training run ends early: its errors, the signals that stop it cleanly (and the message saying how to
resume), the non-finite loss check; and the determinism that lets a resumed run continue bitwise."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.distributed import ControlChannel, DistContext

__all__ = [
    "Determinism",
    "NonFiniteLossError",
    "StopSignals",
    "TrainingError",
    "TrainingInterrupted",
    "check_finite",
    "interrupted",
    "position",
    "stop_if_signalled",
]


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


# ---------------------------------------------------------------------------------------------- signals and determinism


class StopSignals:
    """Turns SIGINT/SIGTERM into a request that the loop honours between steps; restores the old handlers.

    A second signal while the first is being honoured stops at once (KeyboardInterrupt), as a second Ctrl-C
    is expected to.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
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


class Determinism:
    """``--deterministic``: deterministic kernels (and cuDNN/cuBLAS settings), undone on exit.

    On CPU every kernel PyTorch offers is then deterministic for a given thread count, so a run killed and
    resumed any number of times ends bitwise equal to an uninterrupted one. CUDA has backward kernels with no
    deterministic version (adaptive pooling among them), so there it only warns about those.
    """

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.device = device

    def __enter__(self) -> Determinism:
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


# ---------------------------------------------------------------------------------------------- stopping a run


def position(epoch: int, step: int) -> str:
    """A checkpoint position (completed epochs, steps into the next) as a person counts it."""
    return f"from the end of epoch {epoch}" if step == 0 else f"from epoch {epoch + 1} step {step}"


def _all_finite(tensors: Any) -> bool:
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).all())


def check_finite(
    nan_policy: str,
    nonfinite: torch.Tensor,
    upto: int,
    *,
    epoch: int,
    steps: int,
    last_saved: str,
    model: nn.Module | None = None,
) -> None:
    """Under --nan-policy stop, raise if a step before ``upto`` had a non-finite loss (or, given ``model``, if its
    weights are non-finite: a finite loss can still give infinite gradients). ``last_saved`` says which last.pt is
    still good."""
    if nan_policy != "stop":
        return
    flags = nonfinite[:upto]
    if bool(flags.any()):
        bad = int(flags.nonzero()[0, 0])
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1} step {bad + 1} (of {steps}); stopped without saving, so "
            f"last.pt ({last_saved}) and best.pt are the last good checkpoints; lower --lr, or pass "
            "--nan-policy skip to skip such steps"
        )
    if model is not None and not _all_finite(model.parameters()):
        raise NonFiniteLossError(
            f"the weights became non-finite by epoch {epoch + 1} step {upto} (of {steps}) with a finite loss; "
            f"stopped without saving, so last.pt ({last_saved}) is the last good checkpoint"
        )


def interrupted(run_dir: Path, where: str, signum: int, context: DistContext) -> TrainingInterrupted:
    """The error that ends a run stopped by a signal, after saying on rank 0 where it saved and how to resume."""
    name = signal.Signals(signum).name
    processes = f" --nproc {context.world_size} (or your torchrun command with --resume)" if context.enabled else ""
    message = (
        f"{name} received: stopped {where} and saved {run_dir / 'last.pt'}; "
        f"continue with: lightnets train --resume {run_dir}{processes}"
    )
    if context.is_main:
        print(message, file=sys.stderr, flush=True)
    return TrainingInterrupted(signum, message)


def stop_if_signalled(control: ControlChannel, stop: StopSignals | None, run_dir: Path, where: str) -> None:
    """Between epochs (and before the first step): stop, on every rank, if any rank got SIGINT or SIGTERM."""
    signum = control.settle(stop.signum if stop is not None else None)
    if signum is not None:
        raise interrupted(run_dir, where, signum, control.context)

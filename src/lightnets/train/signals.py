"""How a training run ends early: its errors, the signals that stop it cleanly, and bitwise determinism."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import torch

__all__ = ["Determinism", "NonFiniteLossError", "StopSignals", "TrainingError", "TrainingInterrupted"]


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

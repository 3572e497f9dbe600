"""Checkpoints: written atomically, read with ``weights_only=True``, rebuilt into models with no other input.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` can read it and nothing in it can run code. It carries the model name, its kwargs,
the class names and the preprocessing, so ``lightnets eval`` and ``lightnets predict`` need nothing else.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CheckpointError", "build_model_from_checkpoint", "load_checkpoint", "save_checkpoint"]

REQUIRED_KEYS = ("model_name", "model_kwargs", "classes", "model")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a one-line reason."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a lightnets checkpoint safely; every failure is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file or a run directory with best.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects that are not plain tensors or data ({first_line})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a checkpoint): {reason}") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(
            f"checkpoint {path} is not a lightnets checkpoint (it lacks {', '.join(REQUIRED_KEYS)}); "
            "use one written by `lightnets train`"
        )
    state["path"] = str(path)
    return state


def build_model_from_checkpoint(state: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """Create the checkpoint's model and load its weights, in eval mode on ``device``."""
    from lightnets.models import create_model

    model = create_model(state["model_name"], **state["model_kwargs"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {state.get('path', '')} does not fit model {state['model_name']!r}: {detail}"
        ) from None
    return model.to(device).eval()

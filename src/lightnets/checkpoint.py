"""Checkpoints: written atomically, read with ``weights_only=True``, rebuilt into models with no other input.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` can read it and nothing in it can run code. It carries the model name, its kwargs,
the class names and the preprocessing, so ``lightnets eval`` and ``lightnets predict`` need nothing else.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.files import atomic_path, remove_stale_temporaries

__all__ = [
    "CheckpointError",
    "build_model_from_checkpoint",
    "check_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
    "weights_fit_report",
]

REQUIRED_KEYS = ("model_name", "model_kwargs", "classes", "model")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a one-line reason."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always either the old file or the complete new one.

    Through :func:`lightnets.files.atomic_path`: any failure (a full disk, an interrupt) leaves ``path`` as it
    was; a SIGKILL can leave the temporary behind, which :func:`remove_stale_temporaries` clears.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def _informative_line(error: BaseException) -> str:
    """The line of a (often multi-paragraph) loading error that says what was wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = next((x for x in lines if "GLOBAL" in x or "Unsupported" in x), lines[0] if lines else "")
    # PyTorch's messages run on with advice for its own developers; the first sentence is the diagnosis.
    first_sentence = line.split(". ")[0].rstrip(".")
    return first_sentence or type(error).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a lightnets checkpoint safely; every failure is a one-line :class:`CheckpointError` naming the file.

    ``torch.load(weights_only=True)`` builds only tensors and plain containers: a pickle that names any other
    callable (``os.system`` in a ``__reduce__``, say) is refused before anything it names is called.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file or a run directory with best.pt")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it was never written completely")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        line = _informative_line(error)
        if "GLOBAL" in line or "global" in line:
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds a pickled object that could run code ({line}); "
                "only tensors and plain data are loaded"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is unreadable (corrupt or not a checkpoint, {size} bytes): {line}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as error:
        # A truncated zip says "failed finding central directory"; random bytes fail in the unpickler
        # with whatever opcode they happen to start with.
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or not a checkpoint, {size} bytes): {_informative_line(error)}"
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(
            f"checkpoint {path} is not a lightnets checkpoint (it lacks {', '.join(REQUIRED_KEYS)}); "
            "use one written by `lightnets train`"
        )
    state["path"] = str(path)
    return state


def weights_fit_report(model: nn.Module, weights: dict[str, torch.Tensor]) -> str:
    """Why ``weights`` do not fit ``model``, in one line; empty when they do."""
    own = model.state_dict()
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    mismatched = [
        f"{key} {tuple(weights[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in weights and getattr(weights[key], "shape", None) != own[key].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        parts.append(f"{len(mismatched)} with other shapes (file vs model: {'; '.join(mismatched[:2])})")
    return ", ".join(parts)


def check_checkpoint(
    state: dict[str, Any],
    *,
    model_name: str | None = None,
    classes: list[str] | None = None,
    what: str = "",
) -> None:
    """Refuse, in one line, a checkpoint of another model or of another set of classes than expected.

    ``what`` says what the expectation comes from (e.g. "args.yaml", "the dataset").
    """
    path = state.get("path", "checkpoint")
    source = f" {what}" if what else ""
    if model_name is not None and state["model_name"] != model_name:
        raise CheckpointError(
            f"{path} holds model {state['model_name']!r} but{source or ' the caller'} names model {model_name!r}; "
            "use the checkpoint with the model it was trained as"
        )
    if classes is not None and list(state["classes"]) != list(classes):
        saved = state["classes"]
        if len(saved) != len(classes):
            problem = f"{len(saved)} classes but{source or ' the data'} has {len(classes)}"
        else:
            differ = [(a, b) for a, b in zip(saved, classes) if a != b]
            problem = f"other classes than{source or ' the data'} (e.g. {differ[0][0]!r} where it has {differ[0][1]!r})"
        raise CheckpointError(f"{path} was trained on {problem}; use it with the data it was trained on")


def build_model_from_checkpoint(state: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """Create the checkpoint's model and load its weights, in eval mode on ``device``."""
    from lightnets.models import create_model

    path = state.get("path", "checkpoint")
    num_classes = state["model_kwargs"].get("num_classes")
    if num_classes is not None and num_classes != len(state["classes"]):
        raise CheckpointError(
            f"{path} is inconsistent: its model has {num_classes} outputs but it names {len(state['classes'])} classes"
        )
    try:
        model = create_model(state["model_name"], **state["model_kwargs"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} names a model that cannot be built here: {_informative_line(error)}") from None
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"{path} holds no weights dict under 'model'")
    problem = weights_fit_report(model, state["model"])
    if problem:
        raise CheckpointError(
            f"weights in {path} do not fit model {state['model_name']!r} ({problem}); "
            "they were written for another model, or another version of this one"
        )
    model.load_state_dict(state["model"])
    return model.to(device).eval()

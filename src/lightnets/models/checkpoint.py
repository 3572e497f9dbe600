"""lightnets checkpoints: read with ``weights_only=True``, checked, and rebuilt into models with no other input.

Writing them (atomically) is the training run's: :func:`lightnets.train.rundir.save_checkpoint`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` can read it and nothing in it can run code. It carries the model name, its kwargs,
the class names and the preprocessing, so ``lightnets eval`` and ``lightnets predict`` need nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.models.errors import CheckpointError, informative_line
from lightnets.models.loading import resolve_checkpoint_path, torch_load_safely
from lightnets.models.weights import LIGHTNETS_CHECKPOINT_KEYS as REQUIRED_KEYS
from lightnets.models.weights import weights_fit_report

__all__ = [
    "CheckpointError",
    "build_model_from_checkpoint",
    "check_checkpoint",
    "load_checkpoint",
    "weights_fit_report",
]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a lightnets checkpoint safely; every failure is a one-line :class:`CheckpointError` naming the file.

    ``torch.load(weights_only=True)`` builds only tensors and plain containers: a pickle that names any other
    callable (``os.system`` in a ``__reduce__``, say) is refused before anything it names is called. The reading
    is ``lightnets.models.weights.torch_load_safely``, shared with ``create_model(checkpoint=)``.
    """
    path = resolve_checkpoint_path(path)
    state = torch_load_safely(path, map_location)
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(
            f"checkpoint {path} is not a lightnets checkpoint (it lacks {', '.join(REQUIRED_KEYS)}); "
            "use one written by `lightnets train`, or name the model for other weights (--model NAME)"
        )
    state["path"] = str(path)
    return state


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
        raise CheckpointError(f"{path} names a model that cannot be built here: {informative_line(error)}") from None
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

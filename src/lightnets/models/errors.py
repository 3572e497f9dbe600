"""Errors that name the user's file, and their one-line texts; the check for an optional dependency.

Shared by every layer (models/ is the lowest, so they live here): a weights file that cannot be used is a
:class:`CheckpointError`; a library's long message is cut to the line that says what went wrong.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CheckpointError", "first_line", "informative_line", "require_module"]


class CheckpointError(ValueError):
    """A weights file that cannot be used, with a one-line reason naming the file."""


def informative_line(error: BaseException) -> str:
    """The line of a (often multi-paragraph) loading error that says what was wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = next((x for x in lines if "GLOBAL" in x or "Unsupported" in x), lines[0] if lines else "")
    # PyTorch's messages run on with advice for its own developers; the first sentence is the diagnosis.
    first_sentence = line.split(". ")[0].rstrip(".")
    return first_sentence or type(error).__name__


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def require_module(module: str) -> Any:
    """Import an optional export dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{module.split('.')[0]} is needed for export but is not installed; run `pip install 'lightnets[export]'`"
        ) from None

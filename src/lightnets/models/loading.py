"""Reading a ``torch.save`` file safely, with every failure one line that names the file and says what it is.

``torch.load(weights_only=True)`` builds only tensors and plain containers, so a pickle that names any callable is
refused before it runs; the one class allowed beyond that is ``argparse.Namespace``, which timm's
``CheckpointSaver`` pickles as ``args`` (ParNet's released files) and which runs no code of its own.

Before loading, the first bytes tell what the file is: ``torch.save`` writes a zip archive (or, before PyTorch
1.6, a pickle, or long ago a tar archive). Anything else (a text file, an image, ``/etc/passwd``) is said to be
no checkpoint, instead of whatever the unpickler stumbles over first (``list index out of range``).
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from lightnets.models.errors import CheckpointError, informative_line

__all__ = ["resolve_checkpoint_path", "torch_load_safely"]


def _namespace_allowed() -> contextlib.AbstractContextManager:
    # torch < 2.5 has no safe_globals: a file with a pickled Namespace is then refused like any other class.
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run directory stands for its ``best.pt`` (else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
    return path


def _format(path: Path) -> str | None:
    """The file's format by its first bytes: zip, pickle or tar; None for anything ``torch.save`` never wrote."""
    with open(path, "rb") as handle:
        head = handle.read(262)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x80"):  # pickle protocol 2 and later, what torch.save used before zip
        return "pickle"
    return "tar" if head[257:262] == b"ustar" else None


def _what_went_wrong(path: Path, kind: str | None, error: BaseException) -> str:
    size = path.stat().st_size
    if kind == "zip" and not zipfile.is_zipfile(path):
        return f"a zip archive cut short ({size} bytes): it was not written completely"
    if isinstance(error, (EOFError, IndexError, KeyError, TypeError)) or "pickle data was truncated" in str(error):
        # The unpickler's own words (an opcode, "list index out of range") would mean nothing to the reader.
        return f"a truncated or damaged pickle ({size} bytes), not a readable checkpoint"
    return f"damaged or not a checkpoint ({size} bytes): {informative_line(error)}"


def torch_load_safely(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with ``argparse.Namespace`` allowed; every failure is one line."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder without best.pt or last.pt; pass a .pt file or a run")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file or a run directory with best.pt")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it was never written completely")
    try:
        kind = _format(path)
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {error.strerror or error}") from None
    if kind is None:
        raise CheckpointError(
            f"checkpoint {path} is unreadable: it is not a PyTorch checkpoint ({size} bytes that are neither the zip "
            "archive nor the pickle torch.save writes)"
        )
    try:
        with _namespace_allowed():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        line = informative_line(error)
        if "GLOBAL" in line or "global" in line:
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds a pickled object that could run code ({line}); "
                "only tensors and plain data are loaded"
            ) from None
        raise CheckpointError(f"checkpoint {path} is unreadable: {_what_went_wrong(path, kind, error)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable: {_what_went_wrong(path, kind, error)}") from None

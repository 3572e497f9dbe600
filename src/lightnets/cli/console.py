"""What the ``lightnets`` commands print besides their results: one line per warning, and no irrelevant notices.

Python prints a warning as two lines, the second being the source line that raised it (``log.record(batch[2])``),
which means nothing to someone training a model. :func:`command_output` prints each as
``lightnets CMD: warning: ...`` instead, the way errors are printed, by replacing ``warnings.formatwarning`` (so
``warnings.catch_warnings(record=True)`` and pytest still see every warning). It also drops torch's "No CUDA
runtime is found, using CUDA_HOME=..." notice, which ``import torch.utils.benchmark`` logs on any machine with
a CUDA toolkit but no GPU, although nothing lightnets does builds CUDA extensions.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

from lightnets.device import quiet_cuda_home_notice

__all__ = ["command_output", "os_error_text"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # lightnets/, above cli/


def _one_line(command: str, message, category, filename: str, lineno: int, line: str | None = None) -> str:
    text = " ".join(str(message).split())
    if not os.path.abspath(filename).startswith(_PACKAGE_DIR):  # another library's: say where it comes from
        text += f" ({category.__name__} from {os.path.basename(filename)}:{lineno})"
    return f"lightnets {command}: warning: {text}\n"


@contextlib.contextmanager
def command_output(command: str) -> Iterator[None]:
    """While ``command`` runs: warnings as one line each, torch's CUDA_HOME notice dropped."""
    quiet_cuda_home_notice()
    previous = warnings.formatwarning
    warnings.formatwarning = lambda *args, **kwargs: _one_line(command, *args, **kwargs)
    try:
        yield
    finally:
        warnings.formatwarning = previous


def os_error_text(error: OSError) -> str:
    """An operating-system error as "PATH: what went wrong", without Python's ``[Errno N]``."""
    if error.strerror is None:  # raised by lightnets with its own message
        return str(error)
    paths = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    return f"{paths}: {error.strerror}" if paths else error.strerror

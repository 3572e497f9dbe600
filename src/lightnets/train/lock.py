"""One training process per run directory: an OS file lock on RUN_DIR/.lock, held while a run trains there.

Two processes writing one run directory would interleave their checkpoints, so a second ``train --out DIR`` or
``--resume DIR`` is refused while the first runs, with one line naming its pid and host. The lock is
``fcntl.flock``: the kernel releases it when its holder dies, so a lock file left by a SIGKILLed run is simply
taken over by the next one (its pid is only what the refusal prints). The file is removed when the run ends.
Under torchrun rank 0 takes it for the job.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_NAME", "RunDirLock", "RunDirectoryInUse"]

LOCK_NAME = ".lock"


class RunDirectoryInUse(ValueError):
    """Another live process trains in the run directory."""


class RunDirLock:
    """``acquire()`` takes the lock of ``run_dir`` (once; again is a no-op) or raises :class:`RunDirectoryInUse`;
    ``release()`` (or leaving the ``with`` block) drops it and removes the lock file."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.fd is not None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 256).decode(errors="replace").split()
                os.close(fd)
                pid, host = [*owner, "?", "?"][:2]
                raise RunDirectoryInUse(
                    f"{self.path.parent} is in use by another training run (pid {pid} on {host}); wait for it to "
                    "end or stop it, or pick another --out"
                ) from None
            # The holder before us may have removed the file between our open and our lock: then we hold a lock
            # on a file nobody else can find, and must lock the one at the path instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        # Removed while still held, so no other process can lock this file after we let go of it.
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

"""The one way lightnets writes a file: atomically, so a reader only ever sees the old file or the whole new one.

Every writer (checkpoints, exports, plots, run-directory tables, downloads) goes through :func:`atomic_path`:
the bytes go to a uniquely named temporary file in the same directory, are flushed to disk, get their final
permissions, and only then replace the target by a rename, which is itself made durable by syncing the
directory. A failure removes the temporary and leaves the target as it was; a SIGKILL can leave the temporary
behind, and :func:`remove_stale_temporaries` clears those on the next run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "check_writable", "remove_stale_temporaries"]

TEMP_SUFFIX = ".tmp"


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows directories) cannot fsync; the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it becomes ``path``, on failure it is removed.

    ``mode`` is the file's permission (0644: readable by others, like any file a program writes; pass 0o600 for
    a secret). An OSError names ``path``, never the temporary.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    tmp = Path(name)
    try:
        try:
            yield tmp
        except OSError as error:
            if name not in (error.filename, error.filename2):  # the writer's own error (a download's, say)
                raise
            raise OSError(error.errno, error.strerror, str(path)) from None
        try:
            _fsync(tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent, directory=True)


def atomic_write(path: str | Path, data: str | bytes, mode: int = 0o644) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; return ``path``."""
    path = Path(path)
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporaries that writes killed part-way left in ``directory`` (``.NAME.XXXX.tmp``); return them."""
    removed = []
    for path in sorted(Path(directory).glob(f".*.*{TEMP_SUFFIX}")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _cannot_write(path: Path, error: OSError, flag: str) -> str:
    folder = path.parent
    causes = {
        errno.EACCES: f"no permission to create files in {folder}",
        errno.EPERM: f"no permission to create files in {folder}",
        errno.EROFS: f"{folder} is on a read-only file system",
        errno.ENOSPC: f"no space left on the device of {folder}",
        errno.ENOTDIR: "a file stands where its path needs a folder",
        errno.EEXIST: "a file stands where its path needs a folder",
    }
    if error.errno == errno.ENOENT:  # /proc, /sys: folders that take no new files
        cause = f"{folder} does not accept new files" if folder.is_dir() else f"its folder {folder} cannot be made"
    else:
        cause = causes.get(error.errno, error.strerror or str(error))
    return f"cannot write {flag}{path}: {cause}"


def check_writable(path: str | Path, what: str = "") -> None:
    """Raise a one-line ValueError naming ``path`` (and the flag ``what`` that gave it) when it cannot be written,
    before the work that would produce it; creates its missing folders, as writing it would."""
    path = Path(path)
    flag = f"{what} " if what else ""
    if path.is_dir():
        raise ValueError(f"cannot write {flag}{path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(_cannot_write(path, error, flag)) from None

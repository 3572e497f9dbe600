"""CIFAR-10 and CIFAR-100 from the official "python version" release, read straight into uint8 tensors.

A source may be the ``.tar.gz`` archive (read member by member from the compressed stream, nothing is
extracted to disk), the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder, or a folder holding
either. The batches are pickles, so they are read with :class:`RestrictedUnpickler`, which resolves only the
handful of NumPy globals that array reconstruction needs: a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightnets.files import atomic_path
from lightnets.models.model_cfg import CIFAR10_MEAN, CIFAR10_STD

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_MEAN",
    "CIFAR_SOURCES",
    "CIFAR_STD",
    "CifarSource",
    "DatasetNotFoundError",
    "RestrictedUnpickler",
    "TensorSplit",
    "UnsafePickleError",
    "cifar_mean_std",
    "load_cifar",
    "locate_cifar",
    "restricted_loads",
]

# Per-channel statistics of the training images on the 0-1 scale (CIFAR-10's are declared with the models' cfg).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)
CIFAR_MEAN = CIFAR10_MEAN
CIFAR_STD = CIFAR10_STD


class DatasetNotFoundError(FileNotFoundError, ValueError):
    """Data that is not on disk and could not be fetched; also a ValueError so callers can catch bad input once."""


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle that references something other than the NumPy array machinery the CIFAR files need."""


@dataclass
class TensorSplit:
    """An in-memory split: ``images`` uint8 (N, 3, H, W), contiguous; ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"TensorSplit images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"TensorSplit has {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )
        self.images = self.images.contiguous()
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class CifarSource:
    """Where one CIFAR variant lives and how its files are laid out."""

    kind: str
    folder: str
    archive: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str


CIFAR_SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
        kind="cifar10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": CifarSource(
        kind="cifar100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}


def cifar_mean_std(kind: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The normalization constants for ``cifar10`` or ``cifar100``."""
    return (CIFAR100_MEAN, CIFAR100_STD) if kind == "cifar100" else (CIFAR10_MEAN, CIFAR10_STD)


# ----------------------------------------------------------------------------------------------- unpickling


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # NumPy 2 moved numpy.core to numpy._core and left a shim that warns on import; the 2009 CIFAR files name
    # numpy.core, newer re-saves name numpy._core, so both spellings map to whatever this NumPy really has.
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import _codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes at protocol 2 as _codecs.encode(str, "latin1"): pure data, no side effects.
        ("_codecs", "encode"): _codecs.encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and NumPy arrays; any other global is refused.

    ``source`` names the file in error messages. Bytes in Python-2 pickles stay bytes (``encoding="bytes"``).
    """

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed_globals()
        try:
            return RestrictedUnpickler._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle {module}.{name}; a CIFAR batch only holds lists and NumPy "
                "arrays, so this file is not a genuine CIFAR file (replace it with the official download)"
            ) from None


def restricted_loads(data: bytes, source: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; anything malformed is a one-line ValueError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # a damaged pickle raises almost anything (EOFError, KeyError, struct.error ...)
        raise ValueError(f"{source} is not a readable CIFAR pickle ({type(error).__name__}: {error})") from None


def _get(record: dict, key: str, source: str) -> Any:
    # The official files have bytes keys under encoding="bytes"; re-saved copies often have str keys.
    for candidate in (key, key.encode()):
        if candidate in record:
            return record[candidate]
    found = ", ".join(repr(k.decode() if isinstance(k, bytes) else k) for k in record)
    raise ValueError(f"{source} has no {key!r} entry (found: {found}); is this the right CIFAR variant?")


# ----------------------------------------------------------------------------------------------- reading


def _wanted_members(info: CifarSource) -> tuple[str, ...]:
    return (info.meta_file, *info.train_files, *info.test_files)


def _read_archive(archive: Path, info: CifarSource) -> dict[str, Any]:
    """Unpickle the wanted members of a tar archive, streaming it once (gzip cannot seek cheaply)."""
    wanted = set(_wanted_members(info))
    records: dict[str, Any] = {}
    try:
        # Stream mode ("r|*") reads the compressed file front to back exactly once.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) < 2 or parts[-2] != info.folder or parts[-1] not in wanted:
                    continue
                handle = tar.extractfile(member)
                assert handle is not None  # regular files always have a payload
                data = handle.read()
                if len(data) != member.size:
                    raise EOFError(f"{member.name} is cut short")
                records[parts[-1]] = restricted_loads(data, f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise ValueError(
            f"{archive} is truncated or corrupt ({type(error).__name__}: {error}); download it again"
        ) from None
    missing = [name for name in _wanted_members(info) if name not in records]
    if missing:
        listed = ", ".join(f"{info.folder}/{name}" for name in missing)
        raise ValueError(f"{archive} is not a complete {info.kind} archive: it lacks {listed}")
    return records


def _read_folder(folder: Path, info: CifarSource) -> dict[str, Any]:
    missing = [name for name in _wanted_members(info) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a complete {info.kind} folder: it lacks {', '.join(missing)}")
    return {name: restricted_loads((folder / name).read_bytes(), str(folder / name)) for name in _wanted_members(info)}


def _to_split(records: Iterable[tuple[str, Any]], info: CifarSource, num_classes: int) -> TensorSplit:
    images, labels = [], []
    for source, record in records:
        if not isinstance(record, dict):
            raise ValueError(f"{source} holds a {type(record).__name__}, not a CIFAR batch dict")
        data = np.asarray(_get(record, "data", source))
        label = np.asarray(_get(record, info.label_key, source), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{source}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
        if label.shape != (data.shape[0],):
            raise ValueError(f"{source}: {data.shape[0]} images but {label.size} labels")
        if label.size and (label.min() < 0 or label.max() >= num_classes):
            raise ValueError(f"{source}: labels span {label.min()}..{label.max()}, outside 0..{num_classes - 1}")
        images.append(data)
        labels.append(label)
    # Each row is 1024 red, 1024 green, 1024 blue values, each plane row-major: exactly (3, 32, 32).
    stacked = np.concatenate(images).reshape(-1, 3, 32, 32)
    return TensorSplit(torch.from_numpy(stacked), torch.from_numpy(np.concatenate(labels)))


def _class_names(meta: Any, info: CifarSource, source: str) -> list[str]:
    if not isinstance(meta, dict):
        raise ValueError(f"{source} holds a {type(meta).__name__}, not the CIFAR metadata dict")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, info.names_key, source)]


def _parse_records(
    records: dict[str, Any], info: CifarSource, where: Path
) -> tuple[TensorSplit, TensorSplit, list[str]]:
    classes = _class_names(records[info.meta_file], info, f"{where}/{info.meta_file}")
    train = _to_split(((f"{where}/{n}", records[n]) for n in info.train_files), info, len(classes))
    test = _to_split(((f"{where}/{n}", records[n]) for n in info.test_files), info, len(classes))
    return train, test, classes


# ----------------------------------------------------------------------------------------------- locating


def _resolve(path: Path, info: CifarSource) -> Path:
    """The archive or batch folder that ``path`` points at, accepting the folder's parent too."""
    if path.is_file():
        return path
    if path.is_dir():
        if (path / info.meta_file).is_file():
            return path
        for candidate in (path / info.folder, path / info.archive):
            if candidate.exists():
                return candidate
        raise DatasetNotFoundError(
            f"{path} holds no {info.kind} data: expected {info.meta_file} and the batches in it, "
            f"or {path / info.folder}/, or {path / info.archive}"
        )
    raise DatasetNotFoundError(
        f"{info.kind} path {path} does not exist; point --data {info.kind}:PATH at the archive or folder"
    )


def _download(info: CifarSource, root: Path) -> Path:
    """Fetch the official archive into ``root`` via a temporary file, checking its md5 before it takes the name."""
    target = root / info.archive
    with atomic_path(target) as temp:
        digest = hashlib.md5()
        with open(temp, "wb") as out, urllib.request.urlopen(info.url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != info.md5:
            raise ValueError(
                f"downloaded {info.url} has md5 {digest.hexdigest()}, expected {info.md5}; fetch it by hand to {target}"
            )
    return target


def _not_found(info: CifarSource, root: Path, reason: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{info.kind} not found ({reason}): put {info.archive} at {root / info.archive} or extract it to "
        f"{root / info.folder}/, or pass --data {info.kind}:PATH"
    )


def locate_cifar(kind: str, path: str | Path | None, data_root: Path, download: bool) -> Path:
    """The archive or folder to read for ``kind``: ``path`` if given, else data_root, else a fresh download."""
    info = CIFAR_SOURCES[kind]
    if path is not None:
        return _resolve(Path(path).expanduser(), info)
    for candidate in (data_root / info.folder, data_root / info.archive):
        if candidate.exists():
            return candidate
    if not download:
        raise _not_found(info, data_root, "downloading is off")
    try:
        return _download(info, data_root)
    # Offline, DNS failure, refused, timed out, cut off mid-transfer, or a read-only data root.
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise _not_found(info, data_root, f"download of {info.url} failed: {reason}") from None


def load_cifar(
    kind: str,
    path: str | Path | None = None,
    *,
    data_root: str | Path = "data",
    download: bool = True,
) -> tuple[TensorSplit, TensorSplit, list[str]]:
    """Read ``cifar10`` or ``cifar100`` into ``(train, test, classes)``; images are uint8 (N, 3, 32, 32)."""
    if kind not in CIFAR_SOURCES:
        raise ValueError(f"unknown CIFAR variant {kind!r}; expected one of {', '.join(CIFAR_SOURCES)}")
    info = CIFAR_SOURCES[kind]
    source = locate_cifar(kind, path, Path(data_root).expanduser(), download)
    records = _read_folder(source, info) if source.is_dir() else _read_archive(source, info)
    return _parse_records(records, info, source)

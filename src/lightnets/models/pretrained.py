"""Weights that come with lightnets: ``create_model(name, pretrained=True)``, nothing downloaded.

Each shipped weight is a safetensors export (with its JSON sidecar: model, classes, preprocessing) in the package's
``lightnets/weights/`` folder, described by ``manifest.json`` there: one timm-style ``pretrained_cfg`` per model
name with the file, its sha256, the dataset, the top-1 measured on that dataset's test split, the recipe and
epochs, and the hardware it was trained on. Every file is checked against its sha256 before it is read.

An entry may instead (or also) give a ``url`` with its ``sha256``, for weights published elsewhere: the file is
fetched once into ``$LIGHTNETS_CACHE/weights`` (default ``~/.cache/lightnets/weights``), checked, and read from
there afterwards. ``file://`` URLs work as any other.

Like the rest of ``lightnets.models`` this imports only torch (and the standard library).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["WEIGHTS_DIR", "cache_root", "list_pretrained", "pretrained_cfg", "pretrained_path", "sha256_of"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# The pretrained_cfg keys a manifest entry carries (besides file/url/sha256), as lightnets records them.
DESCRIPTION_KEYS = ("dataset", "top1", "top1_split", "recipe", "epochs", "hardware", "command", "trained")


@functools.cache
def _manifest(directory: Path) -> dict[str, dict[str, Any]]:
    path = directory / "manifest.json"
    if not path.is_file():
        return {}
    entries = json.loads(path.read_text())
    return {name: dict(entry) for name, entry in entries.items()}


def list_pretrained(pattern: str = "*") -> list[str]:
    """The model names that have weights (shipped, or published at a recorded URL), sorted."""
    import fnmatch

    return sorted(name for name in _manifest(WEIGHTS_DIR) if fnmatch.fnmatch(name, pattern))


def pretrained_cfg(name: str) -> dict[str, Any]:
    """The manifest entry of ``name``; a ValueError names the models that have weights when it has none."""
    entries = _manifest(WEIGHTS_DIR)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none yet"
        raise ValueError(
            f"{name} has no pretrained weights in lightnets (models with weights: {known}; `lightnets models "
            "--pretrained` lists them); load weights of your own as a checkpoint instead"
        )
    return dict(entries[name])


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """Where lightnets caches what it fetched or measured: ``$LIGHTNETS_CACHE``, else ``$XDG_CACHE_HOME/lightnets``
    (``~/.cache/lightnets`` by default)."""
    root = os.environ.get("LIGHTNETS_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "lightnets"
    )
    return Path(root).expanduser()


def _checked(path: Path, expected: str, name: str, origin: str) -> Path:
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(
            f"the weights of {name} at {origin} have sha256 {actual[:16]}..., not the {expected[:16]}... their "
            "pretrained_cfg records: the file is damaged or another one; reinstall lightnets (or delete it, for a "
            "cached download) and try again"
        )
    return path


def _download(url: str, target: Path) -> None:
    """Fetch ``url`` into ``target`` through a temporary beside it, so an interrupted fetch leaves no file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        os.replace(temporary, target)
    except OSError as error:
        raise ValueError(f"could not fetch {url} ({getattr(error, 'reason', None) or error})") from None
    finally:
        Path(temporary).unlink(missing_ok=True)


def pretrained_path(name: str) -> Path:
    """The checked local file of ``name``'s weights: the shipped file, else its cached download (fetched now if
    not there yet). A sha256 that differs from the manifest's is an error naming the file."""
    cfg = pretrained_cfg(name)
    expected = cfg["sha256"]
    if cfg.get("file"):
        shipped = WEIGHTS_DIR / cfg["file"]
        if shipped.is_file():
            return _checked(shipped, expected, name, str(shipped))
        if not cfg.get("url"):
            raise ValueError(f"the weights of {name} should be at {shipped} but are not; reinstall lightnets")
    url = cfg["url"]
    cached = cache_root() / "weights" / f"{expected[:16]}-{Path(urllib.request.url2pathname(url.split('/')[-1])).name}"
    if not cached.is_file():
        _download(url, cached)
        try:
            _checked(cached, expected, name, url)
        except ValueError:
            cached.unlink(missing_ok=True)  # never keep a file that failed its check
            raise
        # The sidecar (model, classes, preprocessing) travels beside a safetensors file.
        if cached.suffix == ".safetensors":
            _download(url[: -len(".safetensors")] + ".json", cached.with_suffix(".json"))
        return cached
    return _checked(cached, expected, name, str(cached))


def describe(name: str) -> dict[str, Any]:
    """What ``model.pretrained_cfg`` records of shipped weights: the manifest's fields."""
    cfg = pretrained_cfg(name)
    return {key: cfg[key] for key in ("file", "url", "sha256", *DESCRIPTION_KEYS) if key in cfg}

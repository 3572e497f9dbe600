"""A folder dataset's checks before training: what its scan passed over, said once, and no class without images.

A class with no readable image in a split would be trained (or measured) as a class with no examples, which
nothing else would reveal, so it is an error unless ``--allow-empty-classes`` makes it a warning. The check here
is cheap: per class and split it decodes files (JPEGs at a reduced scale) until one succeeds, about one decode a
class. The training loop repeats it after each pass over the data, for files whose decoding fails only in full.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

from lightnets.data.folder import ImageFolderSplit, decode_problem
from lightnets.data.scan import IMAGE_EXTENSIONS, SKIP_KINDS, FolderScan, Skipped

__all__ = ["check_class_images", "report_scans"]

# Kinds of skipped entry that are unreadable things, which --strict refuses (the others are handled by the rules).
_STRICT_KINDS = ("broken", "unreadable", "special")
_ALLOW = "--allow-empty-classes"


def report_scans(
    scans: list[FolderScan], strict: bool, where: str = "the class folders"
) -> tuple[list[str], list[Skipped]]:
    """One warning for the non-image files (found in ``where``) and one per kind of skipped entry; with ``strict``,
    unreadable entries are errors. Returns the non-image files and the skipped entries of all ``scans``."""
    ignored = [str(path) for scan in scans for path in scan.non_images]
    skipped = [entry for scan in scans for entry in scan.skipped]
    if ignored and strict:
        raise ValueError(f"{ignored[0]} is not an image file (--strict refuses non-image files in class folders)")
    bad = next((entry for entry in skipped if entry.kind in _STRICT_KINDS), None)
    if bad is not None and strict:
        raise ValueError(f"{bad.path} {bad.reason} (--strict refuses unreadable entries in class folders)")
    if ignored:
        more = f" and {len(ignored) - 1} more" if len(ignored) > 1 else ""
        warnings.warn(f"ignoring non-image file {ignored[0]}{more} in {where}", stacklevel=4)
    counts = Counter(entry.kind for entry in skipped)
    for kind, count in counts.items():
        first = next(entry for entry in skipped if entry.kind == kind)
        more = f"; {count - 1} more like it" if count > 1 else ""
        warnings.warn(f"skipped {count} {SKIP_KINDS[kind]}: {first.path} {first.reason}{more}", stacklevel=4)
    return ignored, skipped


def _by_class(split: ImageFolderSplit) -> list[list[Path]]:
    paths: list[list[Path]] = [[] for _ in split.classes]
    for path, label in split.samples:
        paths[label].append(path)
    return paths


def _problem(name: str, split_name: str, paths: list[Path], folder: Path, total: int | None) -> str | None:
    """Why class ``name`` has no readable image in this split, or None. ``total`` is the class's image count
    when the split was cut from one folder (None for a split of its own)."""
    if not paths and total:  # a one-image class cut into train and val: nothing left for val
        return f"class {name} has {total} image, so none is held out for {split_name} ({folder / name}); add images"
    if not paths:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        return f"class folder {folder / name} holds no images ({extensions}); add some or remove it"
    reasons = []
    for path in paths:
        reason = decode_problem(path)
        if reason is None:
            return None
        reasons.append((path, reason))
    example = f"{reasons[0][0]}: {reasons[0][1]}"
    return (
        f"class {name} has no readable {split_name} image: all {len(paths)} of its files fail to decode "
        f"(e.g. {example}); replace them or remove the folder"
    )


def check_class_images(
    splits: list[tuple[str, ImageFolderSplit, Path]], allow_empty: bool, totals: list[int] | None = None
) -> list[tuple[str, str]]:
    """Refuse (or with ``allow_empty`` warn about) a class without a readable image in any of ``splits``
    (name, split, the folder holding its class folders); returns the (split, class) pairs warned about.

    ``totals`` are the images per class of the one folder the splits were cut from (None: each split has its own).
    """
    given = []
    for split_name, split, folder in splits:
        for label, paths in enumerate(_by_class(split)):
            name = split.classes[label]
            if totals is not None and not totals[label] and split_name != "train":
                continue  # an empty folder: said once, for train
            problem = _problem(name, split_name, paths, folder, totals[label] if totals is not None else None)
            if problem is None:
                continue
            if not allow_empty:
                raise ValueError(f"{problem}, or pass {_ALLOW} to keep {name} as a class without {split_name} images")
            given.append((split_name, name))
            warnings.warn(f"{problem}; kept as a class without {split_name} images ({_ALLOW})", stacklevel=3)
    return given

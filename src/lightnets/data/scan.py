"""Finding the images of a class-folder dataset: links followed, no folder read twice, no file counted twice.

People link datasets together, so links to files and folders are followed, under these rules:

- Each folder is read once per class, by its resolved path: a link back up (``loop -> ..``) or a second link to
  a folder already read is skipped, and so is a link to a folder that holds the class folders themselves.
- A file whose resolved path lies inside a class folder belongs to that class only. Reached from another class
  through a link, it is skipped there; reached twice within its own class, it counts once (under its real
  name when that was read).
- A file outside every class folder (an outside folder linked in) counts for the class that links to it, once;
  reached from two classes it counts for neither, since its label is ambiguous.
- Hidden names (starting with ".") are passed over; files without an image extension are listed as non-images;
  broken links, folders that cannot be read and special files (FIFOs, sockets) are skipped.

Everything skipped is returned as a :class:`Skipped` with its reason. The cost is one ``os.scandir`` per folder
and a ``realpath`` per link; no image is opened (ImageNet's 1.3M files scan in one walk).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from lightnets.data.cifar import DatasetNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "FolderScan", "Skipped", "find_images", "scan_class_folders", "scan_folder"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# What each kind of skipped entry is, for the one-line summary of a scan: "skipped 2 {kind}: PATH REASON".
SKIP_KINDS = {
    "loop": "link(s) to a folder already read (loops, second links)",
    "other-class": "link(s) into another class (counted there only)",
    "shared": "outside file(s) reached from two classes (counted for neither)",
    "duplicate": "second name(s) of a file already counted (counted once)",
    "broken": "broken link(s)",
    "unreadable": "folder(s) that cannot be read",
    "special": "special file(s) (not regular files)",
}
# The reason of an entry, as a clause that follows its path.
_REASONS = {
    "loop": "leads to a folder already read for this class (a loop or a second link)",
    "broken": "is a broken link",
    "special": "is not a regular file (a FIFO, socket or device)",
}


class Skipped(NamedTuple):
    """An entry of a class folder that was not counted: the path as found, why, and the :data:`SKIP_KINDS` key."""

    path: str
    reason: str
    kind: str


@dataclass
class FolderScan:
    """What a scan found: ``samples`` (path, label) sorted per class, the non-image files and what was skipped."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]] = field(default_factory=list)
    non_images: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def counts(self) -> list[int]:
        """Images per class, in class order."""
        counts = [0] * len(self.classes)
        for _, label in self.samples:
            counts[label] += 1
        return counts


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _ancestors(path: str) -> set[str]:
    found = set()
    while (parent := os.path.dirname(path)) != path:
        found.add(parent)
        path = parent
    return found


class _Walker:
    """One scan: the class folders by resolved path, and what has been read and counted so far."""

    def __init__(self, class_roots: dict[str, int], names: list[str]) -> None:
        self.class_roots = class_roots  # resolved class folder -> label
        self.names = names
        # A folder that holds class folders, reached through a link, would bring every class in again.
        self.above = set().union(*(_ancestors(root) for root in class_roots))
        self.visited: set[tuple[str, int]] = set()  # (resolved folder, class) read so far
        self.samples: list[tuple[Path, int]] = []
        self.outside: dict[str, dict[int, Path]] = defaultdict(dict)  # resolved file outside all classes
        self.non_images: list[Path] = []
        self.skipped: list[Skipped] = []

    def owner(self, resolved: str) -> int | None:
        """The class whose folder holds ``resolved`` (the deepest, should class folders nest), else None."""
        path = resolved
        while True:
            if path in self.class_roots:
                return self.class_roots[path]
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent

    def skip(self, path: str, kind: str, detail: str = "") -> None:
        self.skipped.append(Skipped(path, detail or _REASONS[kind], kind))

    def walk(self, folder: Path, label: int) -> None:
        """Count the images of class ``label``: its own folders first, then the folders its links lead to."""
        start = os.path.realpath(folder)
        real: list[tuple[str, str, int | None]] = [(str(folder), start, label)]  # (path, resolved, owner)
        linked: list[tuple[str, str, int | None]] = []
        files_linked: list[tuple[str, str]] = []
        found: list[Path] = []
        while real or linked:
            # Every real folder of the class is read before any link is followed, so that a file reached both
            # ways counts under its real name and a link into the class's own tree is recognised as a repeat.
            path, resolved, owner = real.pop() if real else linked.pop()
            if (resolved, label) in self.visited:
                self.skip(path, "loop")
                continue
            self.visited.add((resolved, label))
            try:
                with os.scandir(path) as entries:
                    listing = sorted(entries, key=lambda entry: entry.name)
            except OSError as error:
                self.skip(path, "unreadable", f"cannot be read ({error.strerror or error})")
                continue
            subfolders: list[tuple[str, str, int | None]] = []
            links: list[tuple[str, str, int | None]] = []
            for entry in listing:
                if _is_hidden(entry.name):
                    continue
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.isdir(target):
                        self._follow(entry.path, target, label, links)
                    elif os.path.isfile(target):
                        files_linked.append((entry.path, target))
                    elif os.path.exists(target):
                        self.skip(entry.path, "special")
                    else:
                        self.skip(entry.path, "broken")
                elif entry.is_dir(follow_symlinks=False):
                    sub = os.path.join(resolved, entry.name)
                    sub_owner = self.class_roots.get(sub, owner)
                    if sub_owner is not None and sub_owner != label:  # a class folder nested in this one
                        self.skip(entry.path, "other-class", f"is the folder of class {self.names[sub_owner]}")
                    else:
                        subfolders.append((entry.path, sub, sub_owner))
                elif not entry.is_file(follow_symlinks=False):
                    self.skip(entry.path, "special")
                elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                    self.non_images.append(Path(entry.path))
                elif owner is None:
                    self.outside[os.path.join(resolved, entry.name)].setdefault(label, Path(entry.path))
                else:
                    found.append(Path(entry.path))
            real += reversed(subfolders)  # stacks: the alphabetically first is read first
            linked += reversed(links)
        found += self._linked_files(files_linked, label)
        self.samples += [(path, label) for path in sorted(found)]

    def _follow(self, path: str, target: str, label: int, linked: list) -> None:
        owner = self.owner(target)
        if target in self.above:
            self.skip(path, "loop", "leads to a folder that holds the class folders (a loop)")
        elif owner is not None and owner != label:
            self.skip(path, "other-class", f"links into the folder of class {self.names[owner]}")
        else:
            linked.append((path, target, owner))

    def _linked_files(self, files: list[tuple[str, str]], label: int) -> list[Path]:
        """The image links of class ``label`` that count: after its walk, when every real name is known."""
        counted, kept = set(), []
        for path, target in sorted(files):
            if os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
                self.non_images.append(Path(path))
                continue
            owner = self.owner(target)
            if owner is None and label in self.outside[target]:
                self.skip(path, "duplicate", f"is another name for {target}, counted once")
            elif owner is None:
                self.outside[target][label] = Path(path)
            elif owner != label:
                self.skip(path, "other-class", f"links to {target}, an image of class {self.names[owner]}")
            elif target in counted or self._read_as_itself(target, label):
                self.skip(path, "duplicate", f"is another name for {target}, counted once")
            else:
                counted.add(target)
                kept.append(Path(path))
        return kept

    def _read_as_itself(self, target: str, label: int) -> bool:
        name = os.path.basename(target)
        image = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not _is_hidden(name)
        return image and (os.path.dirname(target), label) in self.visited

    def finish(self, root: Path, classes: list[str]) -> FolderScan:
        """Settle the outside files (each counts for its one class, or for none) and sort the samples by class."""
        for target, reached in sorted(self.outside.items()):
            if len(reached) == 1:
                ((label, path),) = reached.items()
                self.samples.append((path, label))
            else:
                names = " and ".join(self.names[label] for label in sorted(reached))
                for label in sorted(reached):
                    self.skip(str(reached[label]), "shared", f"leads to {target}, reached from classes {names}")
        self.samples.sort(key=lambda sample: (sample[1], sample[0]))
        return FolderScan(root, classes, self.samples, sorted(self.non_images), self.skipped)


def _class_dirs(root: Path) -> list[str]:
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not _is_hidden(entry.name))


def scan_class_folders(root: str | Path) -> FolderScan:
    """Scan a folder holding one subfolder per class (the sorted folder names); see the module's rules.

    An empty class is not an error here: it has no samples, and the caller decides (``--allow-empty-classes``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist; pass --data folder:PATH with class subfolders")
    classes = _class_dirs(root)
    if len(classes) < 2:
        found = f" (only {classes[0]!r})" if classes else ""
        raise ValueError(
            f"{root} has {len(classes)} class folder(s){found}; it needs one subfolder per class, at least 2"
        )
    class_roots: dict[str, int] = {}
    for label, name in enumerate(classes):
        resolved = os.path.realpath(root / name)
        if resolved in class_roots:
            other = classes[class_roots[resolved]]
            raise ValueError(
                f"class folders {root / other} and {root / name} are the same folder (one links to the other), so "
                "every image would be trained under two labels; remove one"
            )
        class_roots[resolved] = label
    walker = _Walker(class_roots, classes)
    for label, name in enumerate(classes):
        walker.walk(root / name, label)
    return walker.finish(root, classes)


def scan_folder(folder: str | Path) -> FolderScan:
    """Scan one folder as a single class (``predict`` on a folder): its images, recursively, under the same rules."""
    folder = Path(folder)
    walker = _Walker({os.path.realpath(folder): 0}, [folder.name])
    walker.walk(folder, 0)
    return walker.finish(folder, [folder.name])


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, links followed, each folder once), hidden ones skipped, sorted."""
    return [path for path, _ in scan_folder(folder).samples]

"""Carry CIFAR-10 to a machine that cannot download it, in a third of the size: JPEG mosaics.

The full CIFAR-10 in the python layout is 167 MB, more than a remote GPU run may take along. ``pack`` tiles each
batch of 10,000 images into one 3,200 x 3,200 JPEG (quality 75, 4:2:0), 17 MB for all six batches, because one
large JPEG shares its headers and Huffman tables where 60,000 small ones each carry their own (53 MB). Each 32 x
32 image covers whole 16 x 16 coding units, so its DCT blocks are its own; only the decoder's chroma smoothing
reaches across a tile's edge. ``unpack`` writes the standard ``cifar-10-batches-py/`` folder that
``--data cifar10:FOLDER`` reads. On ``cifar-10-jpeg-python.tar.gz`` (itself decoded from quality-75 JPEGs), the
round trip changes a pixel channel by 0.71 on average (0-255 scale), against 5.78 between that copy and the
original CIFAR-10: the data stays what the shared copy is, give or take a re-encoding.

    python benchmarks/cifar_mosaic.py pack ../shared/data/cifar-10-jpeg-python.tar.gz .gpu/cifar10-mosaic.npz
    python benchmarks/cifar_mosaic.py unpack .gpu/cifar10-mosaic.npz /tmp/data   # -> /tmp/data/cifar-10-batches-py
"""

from __future__ import annotations

import argparse
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from lightnets.data.cifar import restricted_loads

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
GRID = 100  # 100 x 100 tiles of 32 x 32: one batch of 10,000 images per JPEG


def _tile(rows: np.ndarray) -> np.ndarray:
    """(10000, 3072) CIFAR rows (planar RGB) -> one (3200, 3200, 3) mosaic, image i at tile (i // 100, i % 100)."""
    images = rows.reshape(GRID, GRID, 3, 32, 32).transpose(0, 3, 1, 4, 2)  # grid row, y, grid col, x, channel
    return np.ascontiguousarray(images.reshape(GRID * 32, GRID * 32, 3))


def _untile(mosaic: np.ndarray) -> np.ndarray:
    images = mosaic.reshape(GRID, 32, GRID, 32, 3).transpose(0, 2, 4, 1, 3)  # grid row, grid col, channel, y, x
    return np.ascontiguousarray(images.reshape(GRID * GRID, 3 * 32 * 32))


def pack(archive: Path, out: Path, quality: int) -> None:
    arrays: dict[str, np.ndarray] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name not in BATCHES and name != "batches.meta":
                continue
            record = restricted_loads(tar.extractfile(member).read(), f"{archive}:{member.name}")
            if name == "batches.meta":
                arrays["label_names"] = np.array([label.decode() for label in record[b"label_names"]])
                continue
            data = np.asarray(record[b"data"], dtype=np.uint8)
            if data.shape != (GRID * GRID, 3072):
                raise SystemExit(f"{archive}: {name} holds {data.shape[0]} images; a mosaic takes exactly 10,000")
            buffer = io.BytesIO()
            Image.fromarray(_tile(data)).save(buffer, "JPEG", quality=quality, subsampling=2, optimize=True)
            arrays[f"jpeg_{name}"] = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
            arrays[f"labels_{name}"] = np.asarray(record[b"labels"], dtype=np.uint8)
    missing = [name for name in BATCHES if f"jpeg_{name}" not in arrays]
    if missing or "label_names" not in arrays:
        raise SystemExit(f"{archive}: not a CIFAR-10 python archive (missing {missing or 'batches.meta'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"wrote {out}: {out.stat().st_size / 2**20:.1f} MiB")


def unpack(mosaics: Path, root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(mosaics) as arrays:
        for name in BATCHES:
            mosaic = np.asarray(Image.open(io.BytesIO(arrays[f"jpeg_{name}"].tobytes())).convert("RGB"))
            record = {b"data": _untile(mosaic), b"labels": arrays[f"labels_{name}"].astype(int).tolist()}
            (folder / name).write_bytes(pickle.dumps(record, protocol=2))
        names = [str(label).encode() for label in arrays["label_names"]]
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    print(f"wrote {folder}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="CIFAR-10 python archive -> mosaics .npz")
    packing.add_argument("archive", type=Path)
    packing.add_argument("out", type=Path)
    packing.add_argument("--quality", type=int, default=75)
    unpacking = commands.add_parser("unpack", help="mosaics .npz -> ROOT/cifar-10-batches-py")
    unpacking.add_argument("mosaics", type=Path)
    unpacking.add_argument("root", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.archive, args.out, args.quality)
    else:
        unpack(args.mosaics, args.root)


if __name__ == "__main__":
    main()

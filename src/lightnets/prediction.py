"""``lightnets predict``: the top-k classes of image files, or of every image in a folder, with a checkpoint.

The checkpoint (or, for the authors' files, ``--model``) gives the model, its classes and its preprocessing, as
for ``lightnets eval`` (:func:`lightnets.evaluation.load_inference_model`). A folder is read like a class folder
(:mod:`lightnets.data.scan`: recursively, links followed, each folder once) and its images are predicted in
sorted order; an unreadable one among them is skipped with a warning, while a file named on the command line
that cannot be read is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from lightnets.checkpoint import build_model_from_checkpoint
from lightnets.data import IMAGE_EXTENSIONS, UnreadableImageError, eval_transform
from lightnets.data.checks import report_scans
from lightnets.data.folder import read_image_rgb
from lightnets.data.scan import scan_folder
from lightnets.evaluation import InferenceModel, _device_of, _from_state, _load_from_args

__all__ = ["predict_images", "run_predict"]


def _image_inputs(inputs: list[str]) -> tuple[list[Path], set[Path]]:
    """The files to predict: each IMAGE as given, a folder as its images (recursively, sorted); and which of them
    came from folders (an unreadable one of those is skipped, not an error)."""
    paths, found = [], set()
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            paths.append(path)
            continue
        scan = scan_folder(path)
        report_scans([scan], strict=False, where=f"folder {path}")
        if not scan.samples:
            raise ValueError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths += [image for image, _ in scan.samples]
        found.update(image for image, _ in scan.samples)
    return paths, found


@torch.no_grad()
def predict_images(
    state: dict[str, Any] | InferenceModel,
    paths: list[str | Path],
    topk: int = 5,
    device: str | torch.device = "cpu",
    skip_unreadable: Collection[Path] = (),
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Top-k (class, probability) for each image file, preprocessed as the checkpoint's eval split was.

    ``state`` is a lightnets checkpoint (:func:`lightnets.checkpoint.load_checkpoint`) or a loaded
    :class:`InferenceModel`; where the weights name no classes, ``class`` is the output index. An unreadable file
    is an error, unless it is in ``skip_unreadable`` (files found in a folder): then it is warned about and left out.
    """
    device = torch.device(device)
    loaded = (
        state if isinstance(state, InferenceModel) else _from_state(state, build_model_from_checkpoint(state, device))
    )
    transform = eval_transform(loaded.input_size, loaded.eval_resize)
    paths = [Path(path) for path in paths]
    missing = next((path for path in paths if not path.is_file()), None)
    if missing is not None:  # before any work: a mistyped name should not cost the images before it
        raise FileNotFoundError(f"image {missing} does not exist")
    preprocess, results = loaded.preprocess(device), []
    for start in range(0, len(paths), batch_size):  # in batches: a folder can hold any number of images
        read = []
        for path in paths[start : start + batch_size]:
            try:
                read.append((path, transform(read_image_rgb(path))))
            except UnreadableImageError as error:
                if path not in skip_unreadable:
                    raise ValueError(f"cannot read image {path}: {error.reason}") from None
                warnings.warn(f"skipping unreadable image {path}: {error.reason}", stacklevel=1)
        if not read:
            continue
        probabilities = loaded.model(preprocess(torch.stack([image for _, image in read]).to(device))).float()
        values, indices = probabilities.softmax(1).topk(min(topk, probabilities.shape[1]), dim=1)
        for (path, _), vals, idxs in zip(read, values.tolist(), indices.tolist()):
            top = [{"class": loaded.classes[i] if loaded.classes else i, "probability": p} for p, i in zip(vals, idxs)]
            results.append({"image": str(path), "top": top})
    if not results:
        raise ValueError(f"none of the {len(paths)} images could be read (each is named in a warning above)")
    return results


def run_predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = _device_of(args)
    loaded = _load_from_args(args, device)
    if loaded.classes is None:
        print(
            f"loaded {loaded.loaded} from {loaded.path}; it names no classes: printing class indices", file=sys.stderr
        )
    paths, found = _image_inputs(args.images)
    predictions = predict_images(loaded, paths, args.topk, device, skip_unreadable=found)
    if args.json:
        print(json.dumps(predictions, indent=2))
    else:
        for item in predictions:
            print(item["image"])
            for rank, entry in enumerate(item["top"], 1):
                print(f"  {rank}. {entry['class']!s:<20} {100 * entry['probability']:6.2f}%")
    return predictions

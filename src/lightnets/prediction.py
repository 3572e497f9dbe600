"""``lightnets predict``: the top-k classes of image files, or of every image in a folder, with a checkpoint.

The checkpoint (or, for the authors' files, ``--model``) gives the model, its classes and its preprocessing, as
for ``lightnets eval`` (:func:`lightnets.evaluation.load_inference_model`). A folder is read like a class folder
(:mod:`lightnets.data.scan`: recursively, links followed, each folder once) and its images are predicted in
sorted order; an unreadable one among them is skipped with a warning, while a file named on the command line
that cannot be read is an error.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch

from lightnets.data import IMAGE_EXTENSIONS, UnreadableImageError, eval_transform
from lightnets.data.checks import report_scans
from lightnets.data.folder import read_image_rgb
from lightnets.data.scan import scan_folder
from lightnets.evaluation import (
    InferenceModel,
    inference_device,
    inference_model_from_checkpoint,
    load_inference_model,
)
from lightnets.models.checkpoint import build_model_from_checkpoint

__all__ = ["predict", "predict_images"]


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

    ``state`` is a lightnets checkpoint (:func:`lightnets.models.checkpoint.load_checkpoint`) or a loaded
    :class:`InferenceModel`; where the weights name no classes, ``class`` is the output index. An unreadable file
    is an error, unless it is in ``skip_unreadable`` (files found in a folder): then it is warned about and left out.
    """
    device = torch.device(device)
    loaded = (
        state
        if isinstance(state, InferenceModel)
        else inference_model_from_checkpoint(state, build_model_from_checkpoint(state, device))
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


def predict(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    *,
    topk: int = 5,
    device: str = "auto",
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    ema: bool = False,
    as_json: bool = False,
) -> list[dict[str, Any]]:
    """The top-``topk`` classes of each image with ``checkpoint``, printed as ``lightnets predict`` prints them (as
    JSON with ``as_json``); returns ``[{"image": path, "top": [{"class": name, "probability": p}, ...]}, ...]``.

    ``images`` are files or folders (a folder is read recursively, sorted, and an unreadable image in it is skipped
    with a warning). ``checkpoint`` is read as by :func:`lightnets.evaluate`: a lightnets checkpoint or run
    directory, an exported file, or other weights with ``model_name``; weights that name no classes give indices.
    """
    if topk < 1:
        raise ValueError(f"invalid --topk {topk}: expected an integer >= 1")
    run_on = inference_device(checkpoint, device)
    loaded = load_inference_model(checkpoint, run_on, model_name=model_name, model_kwargs=model_kwargs, ema=ema)
    if loaded.classes is None:
        print(
            f"loaded {loaded.loaded} from {loaded.path}; it names no classes: printing class indices", file=sys.stderr
        )
    paths, found = _image_inputs([str(item) for item in images])
    predictions = predict_images(loaded, paths, topk, run_on, skip_unreadable=found)
    if as_json:
        print(json.dumps(predictions, indent=2))
    else:
        for item in predictions:
            print(item["image"])
            for rank, entry in enumerate(item["top"], 1):
                print(f"  {rank}. {entry['class']!s:<20} {100 * entry['probability']:6.2f}%")
    return predictions

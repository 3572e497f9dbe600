"""``lightnets eval`` and ``lightnets predict``: a checkpoint is all they need besides the data.

A lightnets checkpoint names its model, classes and preprocessing. Any other weights file (the authors'
training checkpoints) needs ``--model NAME``; its preprocessing then comes from the model's ``pretrained_cfg``
(the authors' mean, std and channel order), its classes from the dataset (eval) or as indices (predict).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
from lightnets.data import IMAGENET_MEAN, IMAGENET_STD, TensorSplit, eval_transform, load_dataset, load_image_rgb
from lightnets.training import Preprocess, TrainConfig, batches, evaluate, resolve_device

__all__ = ["InferenceModel", "load_inference_model", "predict_images", "run_eval", "run_predict"]


@dataclass
class InferenceModel:
    """A model in eval mode with what inference needs to know: its classes and how to preprocess its inputs."""

    model: nn.Module
    name: str
    path: str
    classes: list[str] | None  # None: the file names no classes (the authors' files)
    input_size: int
    eval_resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bgr: bool
    loaded: str  # which weights of which file
    val_split: float | None = None
    seed: int = 0

    def preprocess(self, device: torch.device) -> Preprocess:
        return Preprocess(self.mean, self.std, self.input_size, channels_last=False, bgr=self.bgr).to(device)


def _from_state(state: dict[str, Any], model: nn.Module) -> InferenceModel:
    return InferenceModel(
        model,
        state["model_name"],
        state["path"],
        list(state["classes"]),
        state["input_size"],
        state["eval_resize"],
        tuple(state["mean"]),
        tuple(state["std"]),
        bgr=False,
        loaded="a lightnets checkpoint",
        val_split=state.get("val_split"),
        seed=state.get("seed", 0),
    )


def load_inference_model(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    ema: bool = False,
) -> InferenceModel:
    """Load ``checkpoint`` for inference: a lightnets checkpoint by itself, any other weights with ``model_name``.

    ``model_kwargs`` go to the builder (e.g. ``act_layer="relu"`` for the authors' ParNet weights) and ``ema``
    picks a file's EMA weights. Preprocessing without a record in the file is lightnets' ImageNet default.
    """
    if model_name is None:
        if model_kwargs or ema:
            raise ValueError("--model-arg and --ema need --model NAME")
        state = load_checkpoint(checkpoint, map_location="cpu")
        return _from_state(state, build_model_from_checkpoint(state, device))
    from lightnets.models import create_model

    model = create_model(model_name, checkpoint=str(checkpoint), ema=ema, **(model_kwargs or {}))
    model = model.to(device).eval()
    cfg = getattr(model, "pretrained_cfg", {})
    size = int(cfg.get("input_size") or getattr(model, "default_input_size", 224))
    return InferenceModel(
        model,
        model_name,
        cfg.get("checkpoint", str(checkpoint)),
        getattr(model, "classes", None),
        size,
        int(cfg.get("eval_resize") or round(size / cfg.get("crop_pct", 0.875))),
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        bgr=cfg.get("channel_order") == "BGR",
        loaded=cfg.get("loaded", "weights"),
    )


def _load_from_args(args: argparse.Namespace, device: torch.device) -> InferenceModel:
    # getattr: callers may build the Namespace themselves, without the flags for foreign weights.
    return load_inference_model(
        args.checkpoint,
        device,
        model_name=getattr(args, "model", None),
        model_kwargs=getattr(args, "model_kwargs", None),
        ema=bool(getattr(args, "ema", False)),
    )


def _check_classes(loaded: InferenceModel, data: str, classes: list[str]) -> None:
    if loaded.classes is not None:
        if list(classes) != list(loaded.classes):
            raise CheckpointError(
                f"checkpoint {loaded.path} was trained on classes {loaded.classes} but {data} has "
                f"{classes}; evaluate it on the dataset it was trained for"
            )
        return
    # The file names no classes: the dataset's sorted folder names give the order (ImageNet's synset folders
    # give the standard index order), and only the count can be checked.
    outputs = getattr(loaded.model, "num_classes", None)
    if outputs is not None and outputs != len(classes):
        raise CheckpointError(
            f"{loaded.path} gives {loaded.name!r} {outputs} outputs but {data} has {len(classes)} classes; "
            "evaluate it on the dataset it was trained for (or pass --model-arg num_classes=N if that is right)"
        )


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    loaded = _load_from_args(args, device)
    model = loaded.model
    if getattr(args, "model", None):
        print(f"loaded {loaded.loaded} from {loaded.path}", file=sys.stderr)
    bundle = load_dataset(
        args.data,
        data_root=args.data_root,
        input_size=loaded.input_size,
        val_split=loaded.val_split,
        seed=loaded.seed,
    )
    _check_classes(loaded, args.data, bundle.classes)
    split = bundle.train if args.split == "train" else bundle.val
    if isinstance(split, TensorSplit):
        split = TensorSplit(split.images.to(device), split.labels.to(device))
    config = TrainConfig(batch_size=args.batch_size, workers=args.workers)
    amp = bool(args.amp if args.amp is not None else device.type == "cuda")
    result = evaluate(
        model, batches(split, config, device, train=False), loaded.preprocess(device), len(bundle.classes), amp=amp
    )
    split_name = "train" if args.split == "train" else bundle.val_name
    report = {
        "checkpoint": loaded.path,
        "model": loaded.name,
        "weights": loaded.loaded,
        "data": args.data,
        "split": split_name,
        "images": int(result.confusion.sum()),
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "images_per_second": result.images_per_second,
        "per_class_accuracy": dict(zip(bundle.classes, result.per_class_accuracy)),
        "confusion": result.confusion.tolist(),
    }
    print(f"{loaded.name} on {args.data} [{split_name}], {report['images']} images, {device}")
    print(
        f"top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  loss {result.loss:.4f}  "
        f"{result.images_per_second:.0f} images/s"
    )
    width = max(len(c) for c in bundle.classes)
    print("per-class accuracy:")
    for name, accuracy in report["per_class_accuracy"].items():
        print(f"  {name.ljust(width)}  {accuracy:6.2f}%")
    if len(bundle.classes) <= 20:
        print("confusion (rows: true, columns: predicted):")
        cell = max(5, len(str(int(result.confusion.max()))) + 1)
        print("  " + " " * width + "".join(str(i).rjust(cell) for i in range(len(bundle.classes))))
        for index, (name, row) in enumerate(zip(bundle.classes, result.confusion.tolist())):
            print(f"  {name.ljust(width)}" + "".join(str(v).rjust(cell) for v in row) + f"   ({index})")
    if args.out:
        from lightnets.plots import plot_confusion

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_confusion(result.confusion, bundle.classes, out / "confusion.png")
        print(f"wrote {out / 'eval.json'} and {out / 'confusion.png'}")
    return report


@torch.no_grad()
def predict_images(
    state: dict[str, Any] | InferenceModel, paths: list[str | Path], topk: int = 5, device: str | torch.device = "cpu"
) -> list[dict[str, Any]]:
    """Top-k (class, probability) for each image file, preprocessed as the checkpoint's eval split was.

    ``state`` is a lightnets checkpoint (:func:`lightnets.checkpoint.load_checkpoint`) or a loaded
    :class:`InferenceModel`; where the weights name no classes, ``class`` is the output index.
    """
    device = torch.device(device)
    loaded = (
        state if isinstance(state, InferenceModel) else _from_state(state, build_model_from_checkpoint(state, device))
    )
    transform = eval_transform(loaded.input_size, loaded.eval_resize)
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        try:
            images.append(transform(load_image_rgb(path)))
        except Exception as error:  # PIL raises many types for unreadable files
            raise ValueError(f"cannot read image {path}: {error}") from None
    batch = loaded.preprocess(device)(torch.stack(images).to(device))
    probabilities = loaded.model(batch).float().softmax(1)
    k = min(topk, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    classes = loaded.classes
    return [
        {
            "image": str(path),
            "top": [{"class": classes[i] if classes else i, "probability": p} for p, i in zip(vals, idxs)],
        }
        for path, vals, idxs in zip(paths, values.tolist(), indices.tolist())
    ]


def run_predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = resolve_device(args.device)
    loaded = _load_from_args(args, device)
    if loaded.classes is None:
        print(
            f"loaded {loaded.loaded} from {loaded.path}; it names no classes: printing class indices", file=sys.stderr
        )
    predictions = predict_images(loaded, args.images, args.topk, device)
    if args.json:
        print(json.dumps(predictions, indent=2))
    else:
        for item in predictions:
            print(item["image"])
            for rank, entry in enumerate(item["top"], 1):
                print(f"  {rank}. {entry['class']!s:<20} {100 * entry['probability']:6.2f}%")
    return predictions

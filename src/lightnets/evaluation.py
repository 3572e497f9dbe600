"""``lightnets eval`` and ``lightnets predict``: a checkpoint is all they need besides the data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from lightnets.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
from lightnets.data import TensorSplit, eval_transform, load_dataset, load_image_rgb
from lightnets.training import Preprocess, TrainConfig, batches, evaluate, resolve_device

__all__ = ["predict_images", "run_eval", "run_predict"]


def _preprocess_for(state: dict[str, Any], device: torch.device) -> Preprocess:
    return Preprocess(state["mean"], state["std"], state["input_size"], channels_last=False).to(device)


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    state = load_checkpoint(args.checkpoint, map_location="cpu")
    model = build_model_from_checkpoint(state, device)
    bundle = load_dataset(
        args.data,
        data_root=args.data_root,
        input_size=state["input_size"],
        val_split=state.get("val_split"),
        seed=state.get("seed", 0),
    )
    if list(bundle.classes) != list(state["classes"]):
        raise CheckpointError(
            f"checkpoint {state['path']} was trained on classes {state['classes']} but {args.data} has "
            f"{bundle.classes}; evaluate it on the dataset it was trained for"
        )
    split = bundle.train if args.split == "train" else bundle.val
    if isinstance(split, TensorSplit):
        split = TensorSplit(split.images.to(device), split.labels.to(device))
    config = TrainConfig(batch_size=args.batch_size, workers=args.workers)
    amp = bool(args.amp if args.amp is not None else device.type == "cuda")
    result = evaluate(
        model,
        batches(split, config, device, train=False),
        _preprocess_for(state, device),
        len(bundle.classes),
        amp=amp,
    )
    split_name = "train" if args.split == "train" else bundle.val_name
    report = {
        "checkpoint": state["path"],
        "model": state["model_name"],
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
    print(f"{state['model_name']} on {args.data} [{split_name}], {report['images']} images, {device}")
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
    state: dict[str, Any], paths: list[str | Path], topk: int = 5, device: str | torch.device = "cpu"
) -> list[dict[str, Any]]:
    """Top-k (class, probability) for each image file, preprocessed as the checkpoint's eval split was."""
    device = torch.device(device)
    model = build_model_from_checkpoint(state, device)
    transform = eval_transform(state["input_size"], state["eval_resize"])
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        try:
            images.append(transform(load_image_rgb(path)))
        except Exception as error:  # PIL raises many types for unreadable files
            raise ValueError(f"cannot read image {path}: {error}") from None
    probabilities = model(_preprocess_for(state, device)(torch.stack(images).to(device))).float().softmax(1)
    k = min(topk, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    classes = state["classes"]
    return [
        {"image": str(path), "top": [{"class": classes[i], "probability": p} for p, i in zip(vals, idxs)]}
        for path, vals, idxs in zip(paths, values.tolist(), indices.tolist())
    ]


def run_predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = resolve_device(args.device)
    state = load_checkpoint(args.checkpoint, map_location="cpu")
    predictions = predict_images(state, args.images, args.topk, device)
    if args.json:
        print(json.dumps(predictions, indent=2))
    else:
        for item in predictions:
            print(item["image"])
            for rank, entry in enumerate(item["top"], 1):
                print(f"  {rank}. {entry['class']:<20} {100 * entry['probability']:6.2f}%")
    return predictions

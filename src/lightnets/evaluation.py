"""Evaluation: :func:`evaluate` over any batches (the training loop's and ``lightnets eval``'s),
:func:`evaluate_checkpoint` (``lightnets.evaluate``, the ``eval`` command), and the loading of a checkpoint for
inference that ``eval`` and ``predict`` (:mod:`lightnets.prediction`) share; a checkpoint is all they need besides
the data.

A lightnets checkpoint names its model, classes and preprocessing. Any other weights file (the authors'
training checkpoints) needs ``--model NAME``; its preprocessing then comes from the model's ``pretrained_cfg``
(the authors' mean, std and channel order), its classes from the dataset (eval) or as indices (predict).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightnets.data import IMAGENET_MEAN, IMAGENET_STD, TensorSplit, load_dataset
from lightnets.data.batches import Preprocess, batches
from lightnets.device import autocast_context, resolve_device
from lightnets.distributed import DistContext, all_reduce_sum
from lightnets.models.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint

__all__ = [
    "EvalResult",
    "InferenceModel",
    "check_classes",
    "evaluate",
    "evaluate_checkpoint",
    "inference_device",
    "inference_model_from_checkpoint",
    "load_inference_model",
]


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    confusion: torch.Tensor  # (C, C) int64, rows = true class
    images_per_second: float
    sample_images: torch.Tensor  # uint8, the first images, for the prediction grid
    sample_labels: torch.Tensor
    sample_predictions: torch.Tensor
    sample_probabilities: torch.Tensor

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (100.0 * self.confusion.diag() / totals).tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batch_iter: Iterator[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    num_classes: int,
    *,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
    label_smoothing: float = 0.0,
    keep: int = 32,
    context: DistContext | None = None,
) -> EvalResult:
    """Loss, top-1/top-5 and confusion over all batches; one host sync at the end.

    Under torchrun each rank evaluates its share and the sums are all-reduced, so every rank returns the
    figures of the whole split; the sample images are this rank's first ones.
    """
    model.eval()
    device = preprocess.mean.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct1 = torch.zeros((), device=device, dtype=torch.int64)
    correct5 = torch.zeros((), device=device, dtype=torch.int64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    count, samples = 0, []
    topk = min(5, num_classes)
    start = time.perf_counter()
    for images, labels in batch_iter:
        if labels.numel() == 0:  # every image of the batch was unreadable (and counted where it was read)
            continue
        with autocast_context(device, amp, amp_dtype):
            logits = model(preprocess(images))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")
        top = logits.topk(topk, dim=1).indices
        predictions = top[:, 0]
        correct1 += (predictions == labels).sum()
        correct5 += (top == labels[:, None]).any(1).sum()
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
        count += labels.numel()
        if sum(len(s[0]) for s in samples) < keep:
            probabilities = logits.softmax(1).gather(1, predictions[:, None])[:, 0]
            samples.append(
                (images[:keep].cpu(), labels[:keep].cpu(), predictions[:keep].cpu(), probabilities[:keep].cpu())
            )
    if context is not None and context.enabled:
        totals = torch.stack([loss_sum, correct1.double(), correct5.double(), loss_sum.new_tensor(count)])
        all_reduce_sum(totals, context)
        all_reduce_sum(confusion, context)
        loss_sum, correct1, correct5, count = totals[0], totals[1], totals[2], int(totals[3].item())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if count == 0:
        raise ValueError("evaluation saw no images: the evaluation split is empty")
    if not samples:  # a rank whose share of a tiny split is empty
        no_labels = torch.zeros(0, dtype=torch.int64)
        samples = [(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), no_labels, no_labels, torch.zeros(0))]
    sample_images, sample_labels, sample_predictions, sample_probabilities = (
        torch.cat([s[i] for s in samples])[:keep] for i in range(4)
    )
    return EvalResult(
        loss=loss_sum.item() / count,
        top1=100.0 * correct1.item() / count,
        top5=100.0 * correct5.item() / count,
        confusion=confusion.reshape(num_classes, num_classes).cpu(),
        images_per_second=count / seconds,
        sample_images=sample_images,
        sample_labels=sample_labels,
        sample_predictions=sample_predictions,
        sample_probabilities=sample_probabilities,
    )


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
    reference: str | None = None  # an exported file's source checkpoint, which eval compares it with

    def preprocess(self, device: torch.device) -> Preprocess:
        return Preprocess(self.mean, self.std, self.input_size, channels_last=False, bgr=self.bgr).to(device)


def inference_model_from_checkpoint(state: dict[str, Any], model: nn.Module) -> InferenceModel:
    return InferenceModel(
        model,
        state["model_name"],
        state["path"],
        list(state["classes"]),
        state["input_size"],
        state["eval_resize"],
        tuple(state["mean"]),
        tuple(state["std"]),
        bgr=state.get("channel_order") == "BGR",
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
    An exported ``.onnx`` or OpenVINO ``.xml`` file runs in its own runtime with the preprocessing stored with it.
    """
    from lightnets.deploy.sessions import exported_model_fields, is_exported_file

    if is_exported_file(checkpoint):
        if model_name or model_kwargs or ema:
            raise ValueError(f"--model, --model-arg and --ema are for weights files; {checkpoint} is a whole model")
        return InferenceModel(**exported_model_fields(checkpoint, torch.device(device)))
    from lightnets.models.safetensors_io import is_safetensors, read_sidecar

    if model_name is None and is_safetensors(Path(checkpoint)):
        model_name = read_sidecar(Path(checkpoint)).get("model_name")  # a lightnets export names its model
    if model_name is None:
        if model_kwargs or ema:
            raise ValueError("--model-arg and --ema need --model NAME")
        state = load_checkpoint(checkpoint, map_location="cpu")
        return inference_model_from_checkpoint(state, build_model_from_checkpoint(state, device))
    from lightnets.models import create_model
    from lightnets.models.model_cfg import image_size

    model = create_model(model_name, checkpoint=str(checkpoint), ema=ema, **(model_kwargs or {}))
    model = model.to(device).eval()
    cfg = getattr(model, "pretrained_cfg", {})
    size = image_size(cfg, getattr(model, "default_input_size", 224))
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


def inference_device(checkpoint: str | Path, device: str = "auto") -> torch.device:
    """Where ``checkpoint`` runs: ``device``, except that an exported file runs in its runtime on the CPU unless
    CUDA is asked for by name."""
    from lightnets.deploy.sessions import is_exported_file

    exported = is_exported_file(checkpoint) and device == "auto"
    return resolve_device("cpu" if exported else device)


def check_classes(loaded: InferenceModel, data: str, classes: list[str]) -> None:
    """Refuse data whose classes are not the ones ``loaded`` was trained on (or, for weights that name no classes,
    whose class count differs from the model's outputs)."""
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


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    *,
    split: str = "val",
    batch_size: int = 256,
    workers: int = 4,
    device: str = "auto",
    amp: bool | None = None,
    data_root: str | Path | None = None,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    ema: bool = False,
    reference: str | Path | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Top-1, top-5, loss, per-class accuracy and confusion of ``checkpoint`` on ``data``'s ``split`` (``"val"``:
    the held-out or test split; ``"train"``), printed as ``lightnets eval`` prints them; returns the report that
    ``out`` (a directory) receives as eval.json beside confusion.png.

    ``checkpoint`` is a lightnets checkpoint or run directory, an exported ``.onnx`` / OpenVINO ``.xml`` file, or
    (with ``model_name``, and ``model_kwargs`` / ``ema`` as needed) any other weights file such as the authors'.
    ``amp`` defaults to bf16 autocast on CUDA only. ``reference``: a checkpoint to compare top-1 with on the same
    images (an exported file names its source checkpoint itself).
    """
    if split not in ("val", "train"):
        raise ValueError(f"--split must be val or train, got {split!r}")
    if batch_size < 1:
        raise ValueError(f"invalid --batch-size {batch_size}: expected an integer >= 1")
    if workers < 0:
        raise ValueError(f"invalid --workers {workers}: expected an integer >= 0")
    run_on = inference_device(checkpoint, device)
    loaded = load_inference_model(checkpoint, run_on, model_name=model_name, model_kwargs=model_kwargs, ema=ema)
    model = loaded.model
    if model_name or hasattr(model, "runtime"):
        print(f"loaded {loaded.loaded} from {loaded.path}", file=sys.stderr)
    bundle = load_dataset(
        data,
        data_root=data_root,
        input_size=loaded.input_size,
        val_split=loaded.val_split,
        seed=loaded.seed,
        allow_empty_classes=True,  # measuring, not training: a class without images is warned about
    )
    check_classes(loaded, data, bundle.classes)
    images = bundle.train if split == "train" else bundle.val
    if isinstance(images, TensorSplit):
        images = TensorSplit(images.images.to(run_on), images.labels.to(run_on))
    use_amp = bool(amp if amp is not None else run_on.type == "cuda")
    result = evaluate(
        model,
        batches(images, batch_size, run_on, train=False, workers=workers),
        loaded.preprocess(run_on),
        len(bundle.classes),
        amp=use_amp and loaded.reference is None,
    )
    split_name = "train" if split == "train" else bundle.val_name
    report = {
        "checkpoint": loaded.path,
        "model": loaded.name,
        "weights": loaded.loaded,
        "data": data,
        "split": split_name,
        "images": int(result.confusion.sum()),
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "images_per_second": result.images_per_second,
        "per_class_accuracy": dict(zip(bundle.classes, result.per_class_accuracy)),
        "confusion": result.confusion.tolist(),
    }
    print(f"{loaded.name} on {data} [{split_name}], {report['images']} images, {run_on}")
    print(
        f"top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  loss {result.loss:.4f}  "
        f"{result.images_per_second:.0f} images/s"
    )
    compare = str(reference) if reference else loaded.reference
    if compare and Path(compare).exists() and compare != loaded.path:
        source = load_inference_model(compare, run_on)
        report["reference"] = _compare_with(source, compare, loaded, result, images, batch_size, workers, run_on)
    _print_per_class(report, result.confusion, bundle.classes)
    if out:
        from lightnets.plots import plot_confusion

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_confusion(result.confusion, bundle.classes, out / "confusion.png")
        print(f"wrote {out / 'eval.json'} and {out / 'confusion.png'}")
    return report


def _print_per_class(report: dict[str, Any], confusion: torch.Tensor, classes: list[str]) -> None:
    width = max(len(c) for c in classes)
    print("per-class accuracy:")
    for name, accuracy in report["per_class_accuracy"].items():
        print(f"  {name.ljust(width)}  {accuracy:6.2f}%")
    if len(classes) <= 20:
        print("confusion (rows: true, columns: predicted):")
        cell = max(5, len(str(int(confusion.max()))) + 1)
        print("  " + " " * width + "".join(str(i).rjust(cell) for i in range(len(classes))))
        for index, (name, row) in enumerate(zip(classes, confusion.tolist())):
            print(f"  {name.ljust(width)}" + "".join(str(v).rjust(cell) for v in row) + f"   ({index})")


def _compare_with(
    source: InferenceModel,
    reference: str,
    loaded: InferenceModel,
    result: EvalResult,
    images: Any,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> dict[str, Any]:
    """Top-1 of the checkpoint an exported file came from, on the same images, in fp32; and the change."""
    batch_iter = batches(images, batch_size, device, train=False, workers=workers)
    top1 = evaluate(source.model, batch_iter, source.preprocess(device), result.confusion.shape[0], amp=False).top1
    change = result.top1 - top1
    print(f"top-1 {result.top1:.2f}% ({loaded.loaded}) vs {top1:.2f}% (fp32 {reference}): {change:+.2f} pt")
    return {"checkpoint": reference, "top1": top1, "top1_change": change}

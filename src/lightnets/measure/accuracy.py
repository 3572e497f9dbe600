"""What ``bench`` times, and what it checks besides speed: the models (by name, or the one a checkpoint holds),
their INT8 calibration images, and, with a checkpoint and data, each precision's top-1 on the evaluation split."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightnets.models import create_model, reparameterize_model

__all__ = ["Accuracy", "bench_targets", "calibration_for"]


class _Predict(nn.Module):
    """A backend's float32-batch -> logits function as a module, so :func:`evaluate` can run it."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.predict = predict

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images).float().cpu()


class Accuracy:
    """Top-1 of any backend's predict function on a checkpoint's evaluation split (``eval``'s split and
    preprocessing: the test split, or the held-out split the checkpoint's run chose)."""

    def __init__(self, loaded: Any, data: str, data_root: str | Path | None = None, batch_size: int = 250) -> None:
        from lightnets.data import load_dataset
        from lightnets.evaluation import check_classes

        bundle = load_dataset(
            data, data_root=data_root, input_size=loaded.input_size, val_split=loaded.val_split, seed=loaded.seed
        )
        check_classes(loaded, data, bundle.classes)
        self.split, self.num_classes, self.batch_size = bundle.val, len(bundle.classes), batch_size
        self.preprocess = loaded.preprocess(torch.device("cpu"))
        self.preprocessing = {
            "input_size": loaded.input_size,
            "eval_resize": loaded.eval_resize,
            "mean": list(loaded.mean),
            "std": list(loaded.std),
            "channel_order": "BGR" if loaded.bgr else "RGB",
        }
        count = len(self.split.labels) if hasattr(self.split, "labels") else len(self.split)
        self.data, self.data_root = data, data_root
        self.description = f"{data} [{bundle.val_name}], {count} images"

    def top1(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> float:
        from lightnets.data.batches import batches
        from lightnets.evaluation import evaluate

        batch_iter = batches(self.split, self.batch_size, torch.device("cpu"), train=False)
        with torch.inference_mode():
            return evaluate(_Predict(predict), batch_iter, self.preprocess, self.num_classes).top1


def bench_targets(settings: Any, log: Callable[[str], None]) -> Iterator[tuple[str, nn.Module, int, Accuracy | None]]:
    """(name, fp32 model in eval mode, input size, accuracy or None) for each model ``bench`` times."""
    if settings.checkpoint:
        from lightnets.evaluation import load_inference_model

        loaded = load_inference_model(settings.checkpoint, "cpu")
        model = reparameterize_model(loaded.model) if settings.deploy else loaded.model
        accuracy = Accuracy(loaded, settings.data, settings.data_root) if settings.data else None
        if accuracy:
            log(f"top-1 on {accuracy.description}; INT8 calibrated on {settings.calibration_images} training images")
        yield loaded.name, model.eval(), settings.input_size or loaded.input_size, accuracy
        return
    for name in settings.models:
        model = create_model(name).eval()
        size = settings.input_size or int(getattr(model, "default_input_size", 224))
        yield name, reparameterize_model(model) if settings.deploy else model, size, None


def calibration_for(settings: Any, accuracy: Accuracy | None, size: int) -> list[np.ndarray]:
    """INT8 calibration batches: the data's training images, preprocessed as the checkpoint's (or, without a
    checkpoint, lightnets' ImageNet preprocessing at ``size``); without data, random stand-ins (timing only)."""
    from lightnets.deploy.quantize import calibration_arrays, random_calibration

    if settings.data:
        if accuracy is not None:
            preprocessing = accuracy.preprocessing
        else:
            from lightnets.deploy.export import preprocessing_of

            preprocessing = preprocessing_of(nn.Identity(), size)
        count = settings.calibration_images
        return calibration_arrays(settings.data, preprocessing, count, data_root=settings.data_root)
    # Random weights have no accuracy to keep, and random inputs time the same kernels.
    return random_calibration(min(settings.calibration_images, 32), size)

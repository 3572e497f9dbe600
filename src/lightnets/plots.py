"""Run-directory figures: learning curves, a prediction grid and a confusion matrix.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot), so nothing
touches global state and it works headless and from worker threads. Files are written to a temporary
name and renamed, so a killed run never leaves a half-written PNG.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["confusion_matrix", "plot_confusion", "plot_curves", "plot_predictions"]

RIGHT, WRONG = "#1a7f37", "#cf222e"


def _save(figure: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_curves(history: list[dict[str, Any]], path: str | Path, val_name: str = "val") -> None:
    """Loss and accuracy per epoch, train against the held-out split."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(11, 4))
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    loss_axis.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss_axis.plot(epochs, [r["val_loss"] for r in history], "s-", label=val_name)
    loss_axis.set(title="loss", xlabel="epoch", ylabel="cross-entropy (label-smoothed)")
    accuracy_axis.plot(epochs, [r["train_acc"] for r in history], "o-", label="train (augmented)")
    accuracy_axis.plot(epochs, [r["val_top1"] for r in history], "s-", label=f"{val_name} top-1")
    accuracy_axis.set(title="accuracy", xlabel="epoch", ylabel="%")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
        if len(epochs) <= 20:
            axis.set_xticks(epochs)
    _save(figure, path)


def plot_predictions(
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    classes: list[str],
    path: str | Path,
    probabilities: torch.Tensor | None = None,
    max_images: int = 32,
) -> None:
    """A grid of images titled with true and predicted class; wrong ones in red with a red frame."""
    count = min(max_images, len(images))
    columns = min(8, max(count, 1))
    rows = max(1, -(-count // columns))
    figure = Figure(figsize=(1.9 * columns, 2.1 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    correct = 0
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= count:
            axis.set_axis_off()
            continue
        true, predicted = int(labels[index]), int(predictions[index])
        right = true == predicted
        correct += right
        color = RIGHT if right else WRONG
        axis.imshow(images[index].permute(1, 2, 0).numpy(), interpolation="nearest")
        title = f"true: {classes[true]}\npred: {classes[predicted]}"
        if probabilities is not None:
            title += f" ({float(probabilities[index]):.2f})"
        axis.set_title(title, fontsize=8, color=color)
        for spine in axis.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(1 if right else 3)
    figure.suptitle(f"{correct} of {count} shown are right; wrong ones in red", fontsize=10)
    _save(figure, path)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = true class, columns = predicted class."""
    flat = labels.long().cpu() * num_classes + predictions.long().cpu()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path, normalize: bool = True) -> None:
    """Heat map of the confusion matrix (row-normalised by default) with the overall accuracy."""
    counts = confusion.double()
    total = counts.sum().item()
    accuracy = 100.0 * counts.diag().sum().item() / max(total, 1)
    values = counts / counts.sum(1, keepdim=True).clamp(min=1) if normalize else counts
    size = len(classes)
    side = min(14.0, max(4.5, 0.55 * size + 2.5))
    figure = Figure(figsize=(side + 1.2, side))
    axis = figure.subplots()
    image = axis.imshow(values.numpy(), cmap="Blues", vmin=0.0)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class" if normalize else "count")
    if size <= 30:
        axis.set_xticks(range(size), classes, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(range(size), classes, fontsize=8)
    else:
        axis.set_xticks([])
        axis.set_yticks([])
    if size <= 20:
        threshold = values.max().item() / 2
        for row in range(size):
            for column in range(size):
                value = values[row, column].item()
                text = f"{100 * value:.0f}" if normalize else f"{int(value)}"
                axis.text(
                    column,
                    row,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > threshold else "black",
                )
    axis.set(
        xlabel="predicted",
        ylabel="true",
        title=f"confusion ({'% of row' if normalize else 'counts'}), accuracy {accuracy:.2f}% of {int(total)}",
    )
    _save(figure, path)

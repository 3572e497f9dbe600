"""Run-directory figures: learning curves, a grid of predictions and a confusion matrix.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas attached directly instead of going
through ``pyplot``: pyplot keeps a global registry of open figures and a process-wide backend, and using
it from a library would switch the user's backend, leak figures in long runs and misbehave off the main
thread. A bare ``Figure`` is an ordinary object that is freed once it goes out of scope.

Every file is written to a temporary name in the target directory and then renamed over the target, so
a run killed mid-save leaves either the previous PNG or the complete new one, never a truncated image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightnets.files import atomic_path

__all__ = ["confusion_matrix", "plot_confusion", "plot_curves", "plot_predictions"]

DPI = 110
RIGHT_COLOR = "#1a7f37"
WRONG_COLOR = "#cf222e"
GRID_COLUMNS = 8
# Above this many classes per-cell numbers are unreadable; above the second, so are the tick labels.
ANNOTATE_MAX_CLASSES = 20
TICK_LABEL_MAX_CLASSES = 30


def _new_figure(width: float, height: float) -> Figure:
    # Constrained layout keeps suptitles, rotated tick labels and colorbars from overlapping or leaving gaps.
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas; no pyplot, no global backend switch
    return figure


def _save(figure: Figure, path: str | Path) -> None:
    """Write ``figure`` as PNG atomically, then drop its artists so the memory goes with it."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            # The temporary suffix is not .png, so the format must be given explicitly.
            figure.savefig(handle, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    finally:
        figure.clear()


def _column(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    # A missing or None value (e.g. a run without a held-out split) becomes a gap rather than an error.
    values = []
    for row in history:
        value = row.get(key)
        values.append(float(value) if value is not None else math.nan)
    return values


def plot_curves(history: list[dict[str, Any]], path: str | Path, val_name: str = "val") -> None:
    """Loss and accuracy against epoch, training against the held-out split, as two panels side by side.

    ``history`` holds one dict per epoch with at least ``epoch``, ``train_loss``, ``val_loss``,
    ``train_acc`` and ``val_top1`` (accuracies in percent). ``val_name`` labels the held-out split in the
    legends (e.g. ``"test"`` when no validation split was carved out).
    """
    if not history:
        raise ValueError("plot_curves needs at least one epoch of history")
    epochs = [int(row["epoch"]) for row in history]
    figure = _new_figure(11.0, 4.2)
    loss_axis, accuracy_axis = figure.subplots(1, 2)

    # Markers keep a one-epoch history visible (a single point draws no line).
    loss_axis.plot(epochs, _column(history, "train_loss"), "o-", markersize=4, label="train")
    loss_axis.plot(epochs, _column(history, "val_loss"), "s-", markersize=4, label=val_name)
    loss_axis.set(title="loss", xlabel="epoch", ylabel="cross-entropy loss")

    val_top1 = _column(history, "val_top1")
    accuracy_axis.plot(epochs, _column(history, "train_acc"), "o-", markersize=4, label="train")
    accuracy_axis.plot(epochs, val_top1, "s-", markersize=4, label=f"{val_name} top-1")
    finite = [(value, epoch) for value, epoch in zip(val_top1, epochs) if math.isfinite(value)]
    if finite:
        best, best_epoch = max(finite)
        accuracy_axis.plot(
            [best_epoch],
            [best],
            "*",
            color="gold",
            markeredgecolor="black",
            markersize=13,
            zorder=5,
            label=f"best {val_name} {best:.2f}% (epoch {best_epoch})",
        )
    accuracy_axis.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")

    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=9)
        # Integer epochs only; matplotlib would otherwise label 1.5, 2.5 ... on short runs.
        axis.xaxis.get_major_locator().set_params(integer=True)
        if len(epochs) == 1:
            axis.set_xlim(epochs[0] - 1, epochs[0] + 1)
    _save(figure, path)


def _display_image(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """(C,H,W) tensor -> an HxW or HxWx3 array imshow draws as stored, plus the colour map for grey."""
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        # Floats are taken to be in [0, 1]; clipping keeps imshow from warning about out-of-range data.
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if image.dim() == 3 and image.shape[0] == 1:
        return image[0].numpy(), "gray"
    return image.permute(1, 2, 0).numpy(), None


def _short(name: str, limit: int = 14) -> str:
    # Long class names would overlap the neighbouring panel's title.
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_predictions(
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    classes: list[str],
    path: str | Path,
    probabilities: torch.Tensor | None = None,
    max_images: int = 32,
) -> None:
    """A grid of up to ``max_images`` images titled with their true and predicted class.

    ``images`` is uint8 (N, 3, H, W) as stored (not normalized); ``labels`` and ``predictions`` are (N,)
    class indices. ``probabilities`` is either (N,) the probability of the predicted class or (N, C) all
    class probabilities. Wrong predictions get a red title and a thick red frame, right ones green.
    """
    count = min(int(max_images), len(images))
    if count <= 0:
        raise ValueError("plot_predictions needs at least one image")
    if len(labels) < count or len(predictions) < count:
        raise ValueError(f"got {len(images)} images but {len(labels)} labels and {len(predictions)} predictions")
    labels = labels[:count].detach().cpu().long()
    predictions = predictions[:count].detach().cpu().long()
    confidence = None
    if probabilities is not None:
        probabilities = probabilities[:count].detach().cpu().float()
        confidence = probabilities.gather(1, predictions[:, None])[:, 0] if probabilities.dim() == 2 else probabilities

    columns = min(GRID_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = _new_figure(1.6 * columns, 1.95 * rows + 0.35)
    axes = figure.subplots(rows, columns, squeeze=False)
    correct = 0
    for index, axis in enumerate(axes.flat):
        if index >= count:
            axis.set_axis_off()
            continue
        true, predicted = int(labels[index]), int(predictions[index])
        right = true == predicted
        correct += right
        color = RIGHT_COLOR if right else WRONG_COLOR
        pixels, cmap = _display_image(images[index])
        # Upsampling a 32x32 image smoothly only blurs it; nearest shows what the network actually saw.
        small = max(pixels.shape[:2]) <= 64
        axis.imshow(pixels, cmap=cmap, vmin=0, vmax=255, interpolation="nearest" if small else "antialiased")
        title = f"true: {_short(classes[true])}\npred: {_short(classes[predicted])}"
        if confidence is not None:
            title += f" ({float(confidence[index]):.2f})"
        axis.set_title(title, fontsize=8, color=color, fontweight="normal" if right else "bold")
        # Ticks off but spines kept: the spines are the coloured frame.
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(1.5 if right else 4)
    figure.suptitle(f"{correct} of {count} shown predicted correctly (wrong ones framed in red)", fontsize=11)
    _save(figure, path)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts on the CPU; rows are the true class, columns the predicted class."""
    labels = labels.detach().reshape(-1).long().cpu()
    predictions = predictions.detach().reshape(-1).long().cpu()
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.numel()} labels but {predictions.numel()} predictions")
    # An out-of-range index would not fail in bincount but land silently in another cell (or grow the result).
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(
                f"{name} values must lie in [0, {num_classes}), got [{int(values.min())}, {int(values.max())}]"
            )
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path, normalize: bool = True) -> None:
    """Heat map of a (C, C) confusion matrix (rows true, columns predicted) with the overall accuracy.

    With ``normalize`` each row is divided by its total, so the diagonal reads as per-class recall and
    rare classes are as visible as common ones; cells are annotated in percent, otherwise in counts.
    Annotations are dropped above 20 classes and tick labels above 30, where they would be illegible.
    """
    counts = confusion.detach().cpu().double()
    size = counts.shape[0]
    if counts.dim() != 2 or counts.shape[1] != size:
        raise ValueError(f"confusion must be square (C, C), got {tuple(confusion.shape)}")
    if len(classes) != size:
        raise ValueError(f"confusion is {size}x{size} but {len(classes)} class names were given")
    total = int(counts.sum().item())
    correct = int(counts.diag().sum().item())
    accuracy = 100.0 * correct / max(total, 1)
    # A class with no samples gets an all-zero row instead of 0/0.
    values = counts / counts.sum(1, keepdim=True).clamp(min=1) if normalize else counts
    array = values.numpy()

    side = min(13.0, max(5.0, 0.5 * size + 2.5))
    figure = _new_figure(side + 1.3, side)
    axis = figure.subplots()
    vmax = 1.0 if normalize else max(float(array.max()), 1.0)
    image = axis.imshow(array, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of the true class" if normalize else "count")

    if size <= TICK_LABEL_MAX_CLASSES:
        tick_size = 9 if size <= 12 else 7
        axis.set_xticks(range(size), [_short(c, 16) for c in classes], rotation=45, ha="right", fontsize=tick_size)
        axis.set_yticks(range(size), [_short(c, 16) for c in classes], fontsize=tick_size)
    else:
        axis.set_xticks([])
        axis.set_yticks([])

    if size <= ANNOTATE_MAX_CLASSES:
        font_size = 8 if size <= 12 else 6
        for row in range(size):
            for column in range(size):
                value = float(array[row, column])
                text = f"{100 * value:.0f}" if normalize else f"{int(value)}"
                # Dark text on light cells and white on dark ones so every number stays legible.
                color = "white" if value > 0.5 * vmax else "black"
                axis.text(column, row, text, ha="center", va="center", fontsize=font_size, color=color)

    suffix = " (row %)" if normalize else " (counts)"
    if size > TICK_LABEL_MAX_CLASSES:
        suffix += f", {size} classes"
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"confusion matrix{suffix}\naccuracy {accuracy:.2f}% ({correct} / {total})")
    _save(figure, path)

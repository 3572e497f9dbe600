"""Figures are written as valid PNGs, atomically, without touching pyplot; confusion counts are exact."""

import sys

import matplotlib
import pytest
import torch
from PIL import Image

from lightnets.plots import confusion_matrix, plot_confusion, plot_curves, plot_predictions

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def history(epochs: int) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        rows.append(
            {
                "epoch": epoch,
                "lr": 0.1 / epoch,
                "train_loss": 2.3 / epoch,
                "train_acc": 100 - 90 / epoch,
                "val_loss": 2.2 / epoch + 0.1,
                "val_top1": 100 - 85 / epoch,
                "val_top5": 100 - 40 / epoch,
                "epoch_seconds": 12.5,
                "images_per_second": 4000.0,
            }
        )
    return rows


def predictions_batch(n: int, num_classes: int = 10, size: int = 32):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    predictions = torch.where(torch.rand(n, generator=generator) < 0.7, labels, (labels + 1) % num_classes)
    probabilities = torch.rand(n, generator=generator)
    return images, labels, predictions, probabilities


def assert_png(path, min_width: int = 300, min_height: int = 200) -> tuple[int, int]:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert width >= min_width and height >= min_height, (width, height)
    # Nothing but the target is left behind by the temp-file-then-rename write.
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    return width, height


def test_plot_curves(tmp_path):
    path = tmp_path / "nested" / "run" / "curves.png"  # parents do not exist yet
    plot_curves(history(12), path, val_name="test")
    width, height = assert_png(path, 800, 300)
    assert width > height  # two panels side by side


def test_plot_curves_single_epoch_and_missing_values(tmp_path):
    plot_curves(history(1), tmp_path / "one.png")
    assert_png(tmp_path / "one.png")
    rows = history(3)
    rows[1]["val_loss"] = None  # a gap, not an error
    plot_curves(rows, tmp_path / "gap.png")
    assert_png(tmp_path / "gap.png")
    with pytest.raises(ValueError):
        plot_curves([], tmp_path / "empty.png")


def test_plot_predictions_grid(tmp_path):
    images, labels, predictions, probabilities = predictions_batch(40)
    path = tmp_path / "predictions.png"
    plot_predictions(images, labels, predictions, CIFAR_CLASSES, path, probabilities=probabilities)
    width, height = assert_png(path, 800, 500)
    assert width > height  # 8 columns by 4 rows: max_images=32 caps the 40 given


def test_plot_predictions_few_images_and_full_probabilities(tmp_path):
    images, labels, predictions, _ = predictions_batch(3)
    plot_predictions(images, labels, predictions, CIFAR_CLASSES, tmp_path / "three.png")
    assert_png(tmp_path / "three.png", 250, 150)
    full = torch.softmax(torch.randn(3, 10), dim=1)  # (N, C) is accepted as well as (N,)
    grey = images[:, :1]
    plot_predictions(grey, labels, predictions, CIFAR_CLASSES, tmp_path / "grey.png", probabilities=full)
    assert_png(tmp_path / "grey.png", 250, 150)


def test_plot_confusion_small_and_counts(tmp_path):
    labels = torch.randint(0, 10, (500,))
    predictions = torch.where(torch.rand(500) < 0.6, labels, torch.randint(0, 10, (500,)))
    matrix = confusion_matrix(labels, predictions, 10)
    plot_confusion(matrix, CIFAR_CLASSES, tmp_path / "confusion.png")
    assert_png(tmp_path / "confusion.png", 400, 400)
    plot_confusion(matrix, CIFAR_CLASSES, tmp_path / "counts.png", normalize=False)
    assert_png(tmp_path / "counts.png", 400, 400)
    with pytest.raises(ValueError):
        plot_confusion(matrix, CIFAR_CLASSES[:9], tmp_path / "bad.png")


def test_plot_confusion_many_classes_with_an_empty_row(tmp_path):
    labels = torch.randint(1, 100, (3000,))  # class 0 never occurs: its row must not divide by zero
    predictions = torch.where(torch.rand(3000) < 0.5, labels, torch.randint(0, 100, (3000,)))
    matrix = confusion_matrix(labels, predictions, 100)
    plot_confusion(matrix, [f"class_{i}" for i in range(100)], tmp_path / "confusion100.png")
    assert_png(tmp_path / "confusion100.png", 600, 600)


def test_confusion_matrix_matches_brute_force():
    num_classes = 7
    labels = torch.randint(0, num_classes, (1000,))
    predictions = torch.randint(0, num_classes, (1000,))
    expected = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for true, predicted in zip(labels.tolist(), predictions.tolist()):
        expected[true, predicted] += 1
    matrix = confusion_matrix(labels, predictions, num_classes)
    assert matrix.dtype == torch.int64 and matrix.device.type == "cpu"
    assert torch.equal(matrix, expected)
    assert int(matrix.sum()) == 1000
    # Classes absent from both inputs still get their row and column.
    assert confusion_matrix(torch.tensor([0]), torch.tensor([0]), 4).shape == (4, 4)
    assert confusion_matrix(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64), 3).sum() == 0


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 5)  # 5 would land in row 1 silently
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 5)


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    plot_curves(history(2), path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-save")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", explode)
    with pytest.raises(RuntimeError):
        plot_curves(history(5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_no_pyplot_and_backend_untouched(tmp_path):
    backend = matplotlib.get_backend() if "matplotlib.pyplot" in sys.modules else None
    images, labels, predictions, probabilities = predictions_batch(4)
    plot_predictions(images, labels, predictions, CIFAR_CLASSES, tmp_path / "p.png", probabilities=probabilities)
    plot_confusion(confusion_matrix(labels, predictions, 10), CIFAR_CLASSES, tmp_path / "c.png")
    if backend is None:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert matplotlib.get_backend() == backend

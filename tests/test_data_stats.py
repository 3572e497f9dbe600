"""`lightnets data stats` and `lightnets train --normalize`: counts, sizes, unreadable files, exact mean/std, and the
numbers travelling through args.yaml and checkpoints to eval."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightnets.cli import main
from lightnets.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset
from lightnets.data.stats import channel_stats, dataset_stats, with_normalization
from lightnets.evaluation import load_inference_model
from lightnets.models.checkpoint import load_checkpoint
from lightnets.train.config import TrainConfig
from lightnets.train.loop import train
from lightnets.train.run import normalized_bundle

from .conftest import shared_file

# Solid colours: resizing and cropping leaves each image one colour, so the expected mean/std need no resampling.
TRAIN = {
    "cat": [((40, 30), (255, 0, 0)), ((64, 64), (10, 20, 30)), ((33, 50), (200, 100, 0))],
    "dog": [((20, 90), (0, 0, 255)), ((48, 48), (128, 128, 128))],
}
VAL = {"cat": [((70, 35), (1, 2, 3))], "dog": [((16, 16), (250, 250, 250))]}


def write_folder(root, layout=None):
    for split, classes in (layout or {"train": TRAIN, "val": VAL}).items():
        for name, images in classes.items():
            (root / split / name).mkdir(parents=True)
            for i, (size, colour) in enumerate(images):
                Image.new("RGB", size, colour).save(root / split / name / f"{i}.png")
    return root


def expected_mean_std(colours):
    # Every training image contributes input_size^2 pixels of its colour: the pixel statistics are the colours'.
    values = np.array(colours, dtype=np.float64) / 255
    return values.mean(0), values.std(0)


def test_folder_stats_counts_sizes_unreadable_and_exact_mean_std(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "val" / "cat" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    stats = dataset_stats(f"folder:{root}", input_size=16)
    assert stats.classes == ["cat", "dog"]
    assert stats.counts == {"train": [3, 3], "val": [2, 1]}  # files found, the unreadable ones included
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in stats.unreadable) == ["broken.jpg", "cut.png"]
    assert all(reason for _, reason in stats.unreadable)
    widths = [size[0] for images in (*TRAIN.values(), *VAL.values()) for size, _ in images]
    heights = [size[1] for images in (*TRAIN.values(), *VAL.values()) for size, _ in images]
    assert stats.readable == 7
    assert stats.width == (min(widths), np.median(widths), max(widths))
    assert stats.height == (min(heights), np.median(heights), max(heights))
    mean, std = expected_mean_std([colour for images in TRAIN.values() for _, colour in images])
    assert stats.channels.images == 5 and stats.channels.scale == "short side resized to 18, centre crop 16x16"
    np.testing.assert_allclose(stats.channels.mean, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.channels.std, std, rtol=0, atol=1e-12)
    # Workers read the same numbers: the sums are exact integers, whatever order the images arrive in.
    assert dataset_stats(f"folder:{root}", input_size=16, workers=1).channels.mean == stats.channels.mean


def test_cifar_stats_equal_numpy_over_the_training_split():
    spec = f"cifar10:{shared_file('cifar-10-subset-python.tar.gz')}"
    stats = dataset_stats(spec)
    bundle = load_dataset(spec, download=False)
    pixels = bundle.train.images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(stats.channels.mean, pixels.mean((0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats.channels.std, pixels.std((0, 2, 3)), rtol=1e-12)
    # 5,085 real CIFAR-10 images land near the full training set's constants.
    np.testing.assert_allclose(stats.channels.mean, bundle.mean, atol=0.005)
    assert stats.counts["train"] == torch.bincount(bundle.train.labels, minlength=10).tolist()
    assert sum(stats.counts["test"]) == 1017 and stats.width == (32, 32, 32) and stats.unreadable == []


def test_cli_data_stats_text_and_json(tmp_path, capsys):
    root = write_folder(tmp_path / "data")
    assert main(["data", "stats", f"folder:{root}", "--input-size", "16"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"folder:{root}: 2 classes; images: train 5, val 2"
    assert "unreadable files: none" in out and "over the 5 training images" in out
    assert "image sizes (7 images): width min 16, median 40, max 70; height min 16, median 48, max 90" in out
    assert main(["data", "stats", f"folder:{root}", "--input-size", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"train": [3, 2], "val": [1, 1]} and len(report["channels"]["mean"]) == 3
    assert main(["data", "stats", f"folder:{tmp_path / 'missing'}"]) == 2
    assert capsys.readouterr().err.startswith("lightnets data stats: error: image folder ")
    assert main(["data", "stats", f"folder:{root}", "--input-size", "0"]) == 2
    assert "lightnets data stats: error: invalid --input-size 0: expected an integer >= 1" in capsys.readouterr().err
    assert main(["data", "stats", f"folder:{root}", "--val-split", "1"]) == 2
    assert "error: invalid --val-split 1.0: expected a fraction strictly between 0 and 1" in capsys.readouterr().err


def folder_config(tmp_path, root, **settings):
    values = {"model": "shufflenet_v1_g3_x0_25", "data": f"folder:{root}", "input_size": 32, "epochs": 1}
    values.update(batch_size=4, workers=0, quiet=True, out=str(tmp_path / "run"), **settings)
    return TrainConfig(**values)


def test_train_normalize_dataset_reaches_args_yaml_checkpoints_and_eval(tmp_path):
    root = write_folder(tmp_path / "data")
    result = train(folder_config(tmp_path, root, normalize="dataset"))
    mean, std = expected_mean_std([colour for images in TRAIN.values() for _, colour in images])
    settings = yaml.safe_load((result.run_dir / "args.yaml").read_text())
    assert settings["normalize"] == "dataset"
    np.testing.assert_allclose(settings["mean"], mean, atol=1e-12)
    np.testing.assert_allclose(settings["std"], std, atol=1e-12)
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(result.run_dir / name)
        assert state["mean"] == settings["mean"] and state["std"] == settings["std"]
    loaded = load_inference_model(result.run_dir / "best.pt")
    assert list(loaded.mean) == settings["mean"] and list(loaded.std) == settings["std"]


def test_train_normalize_defaults_and_imagenet(tmp_path):
    root = write_folder(tmp_path / "data")
    result = train(folder_config(tmp_path / "auto", root))
    assert yaml.safe_load((result.run_dir / "args.yaml").read_text())["mean"] == list(IMAGENET_MEAN)
    data = f"cifar10:{shared_file('cifar-10-subset-python.tar.gz')}"
    config = TrainConfig(
        model="asymmnet_small_x0_35_cifar", data=data, epochs=1, batch_size=16, max_steps_per_epoch=1, workers=0,
        quiet=True, out=str(tmp_path / "cifar"), normalize="imagenet",
    )  # fmt: skip
    state = load_checkpoint(train(config).run_dir / "last.pt")
    assert state["mean"] == list(IMAGENET_MEAN) and state["std"] == list(IMAGENET_STD)
    with pytest.raises(ValueError, match=r"invalid --normalize 'mean': expected auto, imagenet, dataset"):
        train(folder_config(tmp_path / "bad", root, normalize="mean"))


class _Control:
    def __init__(self, is_main=True):
        self.context = type("Context", (), {"is_main": is_main})()

    def gather(self, value):
        return [value]


def test_resume_reuses_the_checkpoints_numbers_and_folder_erasing_follows_them(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "data")
    config = folder_config(tmp_path, root, normalize="dataset", random_erasing=1.0)
    bundle = load_dataset(config.data, input_size=32)

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run must not measure again")

    monkeypatch.setattr("lightnets.data.stats.channel_stats", refuse)
    saved = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    resumed = normalized_bundle(config, bundle, saved, _Control(), print)
    assert resumed.mean == (0.1, 0.2, 0.3) and resumed.std == (0.4, 0.5, 0.6)
    # Random erasing draws its noise from the training mean/std, so the folder transform is rebuilt with them.
    erase = resumed.train.transform.transforms[-1]
    assert erase.mean == (0.1, 0.2, 0.3) and erase.std == (0.4, 0.5, 0.6)


def test_with_normalization_keeps_the_samples_and_channel_stats_skips_bad_images(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "train" / "cat" / "bad.png").write_bytes(b"junk")
    bundle = load_dataset(f"folder:{root}", input_size=16)
    stats = channel_stats(bundle)
    assert stats.images == 5 and [p.rsplit("/", 1)[-1] for p, _ in stats.unreadable] == ["bad.png"]
    renormalized = with_normalization(bundle, stats.mean, stats.std)
    assert renormalized.train.samples == bundle.train.samples and renormalized.val is bundle.val
    with pytest.raises(ValueError, match=r"bad\.png.*--strict"):
        channel_stats(bundle, strict=True)


REPORT_SCRIPT = """
    # lightnets train, with each rank noting in its own file (so the two ranks' lines cannot interleave
    # in one pipe) whether it measured the dataset and the mean/std it trains with.
    import os, sys
    import lightnets.data.stats as stats
    import lightnets.train.loop as training
    from lightnets.cli import main

    measure, normalize = stats.channel_stats, training.normalized_bundle

    def note(line):
        with open(f"rank{os.environ['RANK']}.txt", "a") as report:
            report.write(line + "\\n")

    def measuring(*args, **kwargs):
        note("measured")
        return measure(*args, **kwargs)

    def reporting(*args, **kwargs):
        bundle = normalize(*args, **kwargs)
        note(f"mean {list(bundle.mean)} std {list(bundle.std)}")
        return bundle

    stats.channel_stats, training.normalized_bundle = measuring, reporting
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # torchrun
def test_under_torchrun_rank_0_measures_and_every_rank_trains_with_its_numbers(tmp_path):
    import textwrap

    from .test_distributed import torchrun

    root = write_folder(tmp_path / "data")
    script = tmp_path / "report.py"
    script.write_text(textwrap.dedent(REPORT_SCRIPT))
    args = ["train", "--model", "asymmnet_small_x0_35_cifar", "--data", f"folder:{root}", "--input-size", "32"]
    args += ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--normalize", "dataset", "--quiet"]
    result = torchrun([*args, "--out", str(tmp_path / "run")], cwd=tmp_path, script=script)
    assert result.returncode == 0, result.stderr[-3000:]
    notes = {rank: (tmp_path / f"rank{rank}.txt").read_text().splitlines() for rank in (0, 1)}
    settings = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    trained_with = f"mean {settings['mean']} std {settings['std']}"
    assert notes == {0: ["measured", trained_with], 1: [trained_with]}

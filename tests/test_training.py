"""Training loop, resume, evaluation and prediction on tiny budgets of the real data."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import lightnets.train.loop as training
from lightnets.cli import main
from lightnets.models.checkpoint import load_checkpoint
from lightnets.train.config import TrainConfig
from lightnets.train.loop import train
from lightnets.train.optim import parameter_groups, warmup_cosine
from lightnets.train.rundir import SUMMARY_COLUMNS

from .conftest import shared_file, subset_config

SUBSET = "cifar-10-subset-python.tar.gz"
RUN_FILES = ["args.yaml", "summary.csv", "last.pt", "best.pt", "curves.png", "predictions.png", "confusion.png"]


def tiny_config(tmp_path, model: str, **overrides) -> TrainConfig:
    settings = {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2, **overrides}
    return subset_config(tmp_path / "run", model, **settings)


@pytest.mark.parametrize(
    "model",
    [
        "spgnet_s2p6_cifar",
        "shufflenet_v1_g3_x0_5_cifar",
        pytest.param("parnet_s_cifar", marks=pytest.mark.slow),  # 10 s of the default suite's budget
        "asymmnet_small_x0_35_cifar",
    ],
)
def test_one_short_training_run_per_family(tmp_path, model, monkeypatch):
    # Evaluate on a slice of the test set only: the point is the training step.
    original = training.load_dataset

    def small_val(*args, **kwargs):
        bundle = original(*args, **kwargs)
        bundle.val = training.TensorSplit(bundle.val.images[:64], bundle.val.labels[:64])
        return bundle

    monkeypatch.setattr(training, "load_dataset", small_val)
    result = train(tiny_config(tmp_path, model, batch_size=8))
    row = result.history[0]
    assert np.isfinite(row["train_loss"]) and row["train_loss"] > 0
    for name in RUN_FILES:
        assert (result.run_dir / name).is_file(), name


def test_recipe_defaults_and_schedule():
    config = TrainConfig()
    assert (config.batch_size, config.lr_base, config.momentum, config.nesterov) == (256, 0.1, 0.9, True)
    assert (config.weight_decay, config.label_smoothing) == (5e-4, 0.1)
    schedule = warmup_cosine(total_steps=100, warmup_steps=10)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0) and schedule(55) == pytest.approx(0.5, abs=1e-9)
    assert schedule(100) == pytest.approx(0.0, abs=1e-9)


def test_weight_decay_skips_bn_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4


@pytest.mark.slow  # a multi-epoch run, twice
def test_resume_ends_with_the_same_weights(tmp_path, monkeypatch):
    # Dropout (AsymmNet's head) and EMA make the RNG and EMA state part of what must be restored.
    config = dict(epochs=3, max_steps_per_epoch=3, ema=True)
    reference = train(tiny_config(tmp_path / "a", "asymmnet_small_x0_35_cifar", **config))

    real_save = training.save_checkpoint
    saves = {"last": 0}

    def crash_after_first_epoch(state, path):
        real_save(state, path)
        if path.name == "last.pt":
            saves["last"] += 1
            if saves["last"] == 1:
                raise KeyboardInterrupt  # the run dies right after epoch 1's checkpoint

    monkeypatch.setattr(training, "save_checkpoint", crash_after_first_epoch)
    run_dir = tmp_path / "b" / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "b", "asymmnet_small_x0_35_cifar", **config))
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0

    resumed = load_checkpoint(run_dir / "last.pt")
    expected = load_checkpoint(reference.run_dir / "last.pt")
    assert resumed["epoch"] == expected["epoch"] == 3
    for key in ("train_model", "model"):
        for name, tensor in expected[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs after resume"
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in expected["history"]]


def test_cli_cifar_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    data = f"cifar10:{shared_file(SUBSET)}"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"batch_size": 32, "max_steps_per_epoch": 2, "seed": 3}))
    args = ["train", "--config", str(config), "--model", "spgnet_s2p6_cifar", "--data", data]
    assert main([*args, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    for name in [*RUN_FILES, "results.json"]:
        assert (run / name).is_file(), name
    settings = yaml.safe_load((run / "args.yaml").read_text())
    assert settings["batch_size"] == 32 and settings["seed"] == 3 and settings["lr"] == pytest.approx(0.1 * 32 / 256)
    with open(run / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == SUMMARY_COLUMNS and len(rows) == 1
    results = json.loads((run / "results.json").read_text())
    assert results["best_selected_on"] == "test" and "test set" in results["warning"]

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", data, "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "airplane" in out and "confusion" in out
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["images"] == 1017 and sum(map(sum, report["confusion"])) == 1017

    image = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(image), "--topk", "3", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions[0]["top"]) == 3
    assert sum(entry["probability"] for entry in predictions[0]["top"]) <= 1.0 + 1e-6


def test_cli_folder_end_to_end(tmp_path, capsys):
    folder = shared_file("hymenoptera")
    run = tmp_path / "run"
    args = ["train", "--model", "shufflenet_v1_g3_x0_25", "--data", f"folder:{folder}", "--input-size", "64"]
    args += ["--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "2", "--workers", "1"]
    assert main([*args, "--out", str(run), "--quiet"]) == 0
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    state = load_checkpoint(run / "best.pt")
    assert state["classes"] == ["ants", "bees"] and state["input_size"] == 64

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", f"folder:{folder}"]) == 0
    assert "ants" in capsys.readouterr().out
    image = next((folder / "val" / "bees").iterdir())
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(image)]) == 0
    out = capsys.readouterr().out
    assert "ants" in out and "bees" in out


def test_eval_refuses_a_dataset_with_other_classes(tmp_path, capsys):
    run = tmp_path / "run"
    folder = shared_file("hymenoptera")
    args = ["train", "--model", "shufflenet_v1_g3_x0_25", "--data", f"folder:{folder}", "--input-size", "64"]
    assert (
        main(
            [
                *args,
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--max-steps-per-epoch",
                "1",
                "--workers",
                "0",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    data = f"cifar10:{shared_file(SUBSET)}"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", data]) == 2
    assert "classes" in capsys.readouterr().err

"""Fine-tuning from weights: ``train --weights``, a new classifier, ``--freeze``, ``--backbone-lr``, the weights'
preprocessing carried into eval and export, and an exact resume. Every run is a few steps of a tiny network on the
real hymenoptera photos or the CIFAR-10 subset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lightnets
from lightnets.cli import main
from lightnets.models.checkpoint import load_checkpoint
from lightnets.train.config import load_run_config
from lightnets.train.loop import train

from .conftest import Killed, kill_after_steps, randomize_batchnorm, shared_file, subset_config
from .test_authors_weights import as_authors

MODEL = "shufflenet_v1_g3_x0_5_cifar"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A CIFAR-10 run directory to start from (10 classes), with non-trivial BN statistics."""
    run = train(subset_config(tmp_path_factory.mktemp("source") / "run", MODEL, epochs=1, batch_size=32,
                              max_steps_per_epoch=3))  # fmt: skip
    return run.run_dir


def bees(tmp_path: Path, name: str, *flags: str) -> list[str]:
    folder = shared_file("hymenoptera")
    return ["train", "--model", MODEL, "--data", f"folder:{folder}", "--input-size", "32", "--epochs", "1",
            "--max-steps-per-epoch", "3", "--batch-size", "16", "--workers", "0", "--quiet",
            "--out", str(tmp_path / name), *flags]  # fmt: skip


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["train_model"]


def test_create_model_keeps_every_weight_but_the_classifier(source) -> None:
    model = lightnets.create_model(MODEL, checkpoint=str(source), num_classes=3)
    saved = load_checkpoint(source / "best.pt")["model"]
    own = model.state_dict()
    assert own["classifier.weight"].shape == (3, saved["classifier.weight"].shape[1])
    assert all(torch.equal(own[k], saved[k]) for k in saved if not k.startswith("classifier."))
    assert "a new classifier 'classifier' (10 -> 3 classes)" in model.pretrained_cfg["head"]


def test_the_classifier_is_replaced_and_the_first_line_says_so(tmp_path, source, capsys) -> None:
    assert main([*bees(tmp_path, "run", "--weights", str(source)), "--no-quiet"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith(f"--weights {source}: a lightnets checkpoint; a new classifier 'classifier' (10 -> 2")
    assert "their preprocessing: mean 0.4914" in first  # CIFAR-10's own, carried from the source run
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["mean"] == pytest.approx([0.4914, 0.4822, 0.4465], abs=1e-4)


def test_weights_of_another_family_are_refused_naming_the_keys(tmp_path, source, capsys) -> None:
    args = bees(tmp_path, "run", "--weights", str(source))
    args[args.index(MODEL)] = "asymmnet_small_x0_35_cifar"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(source) in err and "asymmnet_small_x0_35_cifar" in err
    assert "but the checkpoint says 'shufflenet_v1_g3_x0_5_cifar'" in err
    # A file that names no model (a bare state dict of the other family): the first key that does not fit is named.
    bare = tmp_path / "asymmnet.pth"
    torch.save(lightnets.create_model("asymmnet_small_x0_35_cifar").state_dict(), bare)
    assert main(bees(tmp_path, "run", "--weights", str(bare))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bare) in err and f"do not fit model '{MODEL}'" in err
    assert "first mismatch stem" in err or "none of its" in err


def test_freeze_backbone_leaves_every_weight_but_the_classifier_bitwise_unchanged(tmp_path, source) -> None:
    assert main(bees(tmp_path, "run", "--weights", str(source), "--freeze", "backbone")) == 0
    before, after = load_checkpoint(source / "best.pt")["model"], weights_of(tmp_path / "run" / "last.pt")
    for key, tensor in before.items():
        if not key.startswith("classifier."):
            assert torch.equal(tensor, after[key]), key  # running statistics included
    assert not torch.equal(after["classifier.weight"], lightnets.create_model(MODEL, num_classes=2).classifier.weight)


@pytest.mark.slow  # a training run; the default suite keeps --freeze backbone's
def test_freeze_bn_keeps_the_statistics_while_the_convolutions_learn(tmp_path, source) -> None:
    assert main(bees(tmp_path, "run", "--weights", str(source), "--freeze", "bn")) == 0
    before, after = load_checkpoint(source / "best.pt")["model"], weights_of(tmp_path / "run" / "last.pt")
    statistics = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics and all(torch.equal(before[k], after[k]) for k in statistics)
    convs = [k for k in before if before[k].ndim == 4]
    assert any(not torch.equal(before[k], after[k]) for k in convs)


@pytest.mark.slow  # a training run; the default suite keeps --freeze backbone's
def test_backbone_lr_scales_only_the_backbone(tmp_path, source) -> None:
    # lr x 0 for the backbone: SGD moves nothing there (weight decay and momentum are scaled by the lr too).
    assert main(bees(tmp_path, "run", "--weights", str(source), "--backbone-lr", "0", "--freeze", "bn")) == 0
    before, after = load_checkpoint(source / "best.pt")["model"], weights_of(tmp_path / "run" / "last.pt")
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("classifier."))


def test_freeze_needs_weights(tmp_path, capsys) -> None:
    assert main(bees(tmp_path, "run", "--freeze", "bn")) == 2
    assert "--freeze bn keeps parts of the --weights unchanged; pass --weights PATH too" in capsys.readouterr().err
    assert main(bees(tmp_path, "run", "--weights", str(tmp_path / "nothing.pt"))) == 2
    assert f"--weights {tmp_path / 'nothing.pt'} does not exist" in capsys.readouterr().err


@pytest.mark.slow  # a training run from an ImageNet-form authors' file
def test_the_authors_preprocessing_reaches_eval_and_export(tmp_path, capsys) -> None:
    # megvii's ShuffleNet file: BGR input on a 0-255 scale. A run started from it trains and records that.
    authors = lightnets.create_model("shufflenet_v1_g3_x0_5")  # their ImageNet head: 1000 classes
    randomize_batchnorm(authors)
    path = tmp_path / "megvii.pth.tar"
    torch.save({"state_dict": as_authors(authors, "shufflenet_v1", "module.")}, path)
    args = bees(tmp_path, "run", "--weights", str(path))
    args[args.index(MODEL)] = "shufflenet_v1_g3_x0_5"
    assert main(args) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    assert checkpoint["channel_order"] == "BGR" and checkpoint["mean"] == [0.0, 0.0, 0.0]
    assert checkpoint["std"] == pytest.approx([1 / 255] * 3)
    loaded = lightnets.evaluation.load_inference_model(tmp_path / "run" / "best.pt")
    assert loaded.bgr and loaded.preprocess(torch.device("cpu")).bgr
    out = tmp_path / "run.safetensors"
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--format", "safetensors",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "channel_order BGR" in capsys.readouterr().out


@pytest.mark.slow  # two short runs, one killed
def test_a_fine_tune_resumes_bitwise(tmp_path, source, monkeypatch) -> None:
    flags = ("--weights", str(source), "--freeze", "bn", "--backbone-lr", "0.1", "--epochs", "2", "--deterministic")
    assert main(bees(tmp_path, "reference", *flags)) == 0
    kill_after_steps(monkeypatch, 4)
    with pytest.raises(Killed):
        main(bees(tmp_path, "resumed", *flags))
    kill_after_steps(monkeypatch, None)
    resumed = load_run_config(tmp_path / "resumed")
    assert (resumed.weights, resumed.freeze, resumed.backbone_lr) == (str(source), "bn", 0.1)
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--quiet"]) == 0
    expected, actual = weights_of(tmp_path / "reference" / "last.pt"), weights_of(tmp_path / "resumed" / "last.pt")
    differing = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not differing, f"resumed weights differ: {differing[:8]}"

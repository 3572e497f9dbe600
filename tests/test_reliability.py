"""Crash safety, determinism, hostile inputs: kills, signals, bad files and checkpoints, NaNs, full disks, flags.

Every training run here is a few steps of a tiny CIFAR model on the real subset (or a handful of real photos
copied into tmp_path), so the whole file stays fast; ../shared/data is only ever read.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import lightnets.train.loop as training
import lightnets.train.rundir as rundir
from lightnets.cli import main
from lightnets.data import ImageFolderSplit, TensorSplit, load_dataset, train_transform
from lightnets.data.batches import loader_batches, tensor_batches
from lightnets.files import remove_stale_temporaries
from lightnets.models import create_model
from lightnets.models.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
from lightnets.train.config import TrainConfig, load_run_config
from lightnets.train.loop import train
from lightnets.train.optim import warmup_cosine
from lightnets.train.rundir import save_checkpoint
from lightnets.train.signals import NonFiniteLossError, TrainingError, TrainingInterrupted

from .conftest import Killed, kill_after_steps, shared_file, subset_config

SUBSET = "cifar-10-subset-python.tar.gz"
MODEL = "asymmnet_small_x0_35_cifar"  # has dropout, so the RNG state is part of what a resume must restore
REPO = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    settings = dict(epochs=2, batch_size=8, max_steps_per_epoch=4, deterministic=True)
    settings["val_split"] = 0.02  # 102 held-out images: evaluation stays cheap
    return subset_config(tmp_path / name, MODEL, **{**settings, **overrides})


def cli_args(config: TrainConfig) -> list[str]:
    args = ["train", "--model", config.model, "--data", config.data, "--out", str(config.out)]
    args += ["--epochs", str(config.epochs), "--batch-size", str(config.batch_size)]
    args += ["--max-steps-per-epoch", str(config.max_steps_per_epoch), "--val-split", str(config.val_split)]
    args += ["--workers", str(config.workers), "--checkpoint-every", str(config.checkpoint_every), "--quiet"]
    return args + (["--deterministic"] if config.deterministic else []) + (["--ema"] if config.ema else [])


def assert_bitwise_equal(expected: dict, actual: dict) -> None:
    for key in ("train_model", "model"):
        assert expected[key].keys() == actual[key].keys()
        for name, tensor in expected[key].items():
            assert torch.equal(tensor, actual[key][name]), f"{key}.{name} differs"
    for index, state in expected["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], actual["optimizer"]["state"][index]["momentum_buffer"])
    assert [r["train_loss"] for r in expected["history"]] == [r["train_loss"] for r in actual["history"]]
    assert [r["val_loss"] for r in expected["history"]] == [r["val_loss"] for r in actual["history"]]


def one_line_error(capsys: pytest.CaptureFixture, command: str = "train") -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lightnets {command}: error: ") and "\n" not in err, err
    return err


def no_data_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded: the error should have come before")

    monkeypatch.setattr(training, "load_dataset", refuse)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These runs are tiny and this machine is shared: with one intra-op thread they do not stall in OpenMP's
    # barriers whenever another process takes a core. Bitwise equality needs the same count in every process
    # of a run (last.pt records it and a --deterministic resume restores it); the subprocess gets it by env.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """last.pt of an uninterrupted deterministic run (EMA on, so its state must survive resumes too)."""
    result = train(tiny(tmp_path_factory.mktemp("reference"), ema=True))
    return load_checkpoint(result.run_dir / "last.pt")


# ----------------------------------------------------------------------------------------------- crash safety


def test_batches_resume_at_any_step_with_the_same_augmentation() -> None:
    split = TensorSplit(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40) % 10)
    full = list(tensor_batches(split, 8, train=True, seed=3, epoch=2))
    tail = list(tensor_batches(split, 8, train=True, seed=3, epoch=2, start_step=3))
    assert len(full) == 5 and len(tail) == 2
    for (images, labels), (again_images, again_labels) in zip(full[3:], tail):
        assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    other_epoch = list(tensor_batches(split, 8, train=True, seed=3, epoch=3))
    assert not torch.equal(full[0][1], other_epoch[0][1])


def test_folder_batches_do_not_depend_on_workers_or_start(tmp_path: Path) -> None:
    root = shared_file("hymenoptera") / "train"
    samples = [(path, 0) for path in sorted((root / "ants").glob("*.jpg"))[:12]]
    split = ImageFolderSplit(samples, ["ants"], train_transform(24))
    cpu = torch.device("cpu")
    inline = list(loader_batches(split, 4, train=True, workers=0, device=cpu, seed=1, epoch=5))
    workers = list(loader_batches(split, 4, train=True, workers=1, device=cpu, seed=1, epoch=5, start_step=1))
    assert len(inline) == 3 and len(workers) == 2
    for (images, _), (again, _) in zip(inline[1:], workers):
        assert torch.equal(images, again)  # same crops and flips, drawn in another process, mid-epoch


def test_save_checkpoint_failure_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"version": 1}, path)
    before = sha(path)

    def disk_full(state, handle):
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"version": 2}, path)
    assert sha(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"left by a SIGKILL mid-write")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.slow  # four training runs
def test_killed_and_resumed_three_times_ends_bitwise_equal(tmp_path, monkeypatch, reference) -> None:
    # 2 epochs x 4 steps, last.pt every 3 steps and at epoch ends. Deaths after global steps 2 (before any
    # checkpoint: the resume starts over), 5 (last.pt from the end of epoch 1) and 7 (last.pt from step 6, mid-
    # epoch 2); each death happens mid-interval, so the resumed process redoes steps the dead one had done.
    config = tiny(tmp_path, ema=True, checkpoint_every=3)
    run_dir = Path(config.out)
    positions = []
    for kill_at, steps_done_before in ((2, 0), (5, 0), (7, 4)):
        kill_after_steps(monkeypatch, kill_at - steps_done_before)
        with pytest.raises(Killed):
            train(config) if not (run_dir / "args.yaml").exists() else train(load_run_config(run_dir), resume=run_dir)
        last = run_dir / "last.pt"
        positions.append((load_checkpoint(last)["epoch"], load_checkpoint(last)["step"]) if last.exists() else None)
    assert positions == [None, (1, 0), (1, 2)]
    kill_after_steps(monkeypatch, None)
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    resumed = load_checkpoint(run_dir / "last.pt")
    assert (resumed["epoch"], resumed["step"]) == (2, 0)
    assert_bitwise_equal(reference, resumed)


def test_a_damaged_last_pt_falls_back_to_the_checkpoint_before_it(tmp_path, monkeypatch, capsys, reference) -> None:
    # 2 epochs x 4 steps, last.pt every 3 steps and at epoch ends; dead after global step 7: last.pt is from step 6
    # (1, 2) and previous.pt, the one before it, from the end of epoch 1 (1, 0).
    config = tiny(tmp_path, ema=True, checkpoint_every=3)
    run_dir, last = Path(config.out), Path(config.out) / "last.pt"
    kill_after_steps(monkeypatch, 7)
    with pytest.raises(Killed):
        train(config)
    previous = load_checkpoint(run_dir / "previous.pt")
    assert (previous["epoch"], previous["step"]) == (1, 0)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # cut short, as by a failing disk or copy
    kill_after_steps(monkeypatch, None)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {last} is unreadable: a zip archive cut short" in err
    assert f"resuming from {run_dir / 'previous.pt'} instead (epoch 2, step 1)" in err and len(err.splitlines()) == 1
    assert (run_dir / "last.pt.damaged").is_file()
    assert_bitwise_equal(reference, load_checkpoint(last))


@pytest.mark.slow  # training subprocesses killed and resumed
def test_sigkilled_subprocess_resumes_bitwise_equal(tmp_path, reference) -> None:
    config = tiny(tmp_path, ema=True, checkpoint_every=1)
    run_dir = Path(config.out)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(
        [sys.executable, "-m", "lightnets", *cli_args(config)], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600
    while not (run_dir / "last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr[-2000:]}"
    killed_at = load_checkpoint(run_dir / "last.pt")
    assert (killed_at["epoch"], killed_at["step"]) < (2, 0)  # it died part-way

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert not list(run_dir.glob(".*.tmp"))
    assert_bitwise_equal(reference, load_checkpoint(run_dir / "last.pt"))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_saves_and_says_how_to_resume(tmp_path, monkeypatch, capsys, signum, code) -> None:
    original = training.train_step
    steps = {"n": 0}

    def step_then_signal(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 3:
            os.kill(os.getpid(), signum)  # arrives mid-step: the step must still complete
        original(self, *args, **kwargs)

    monkeypatch.setattr(training, "train_step", step_then_signal)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    config = tiny(tmp_path, checkpoint_every=0)
    assert main(cli_args(config)) == code
    err = capsys.readouterr().err
    assert f"{signal.Signals(signum).name} received" in err
    assert f"lightnets train --resume {config.out}" in err
    state = load_checkpoint(Path(config.out) / "last.pt")
    assert (state["epoch"], state["step"]) == (0, 3)  # written mid-epoch although --checkpoint-every is 0
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before
    assert not torch.are_deterministic_algorithms_enabled()  # --deterministic is undone too


def test_train_raises_training_interrupted_for_library_callers(tmp_path, monkeypatch) -> None:
    original = training.train_step

    def step_then_signal(self, *args, **kwargs):
        original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(training, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted) as caught:
        train(tiny(tmp_path))
    assert caught.value.exit_code == 143 and "--resume" in str(caught.value)


# ----------------------------------------------------------------------------------------------- hostile data


def photo_tree(tmp_path: Path, counts: dict[str, dict[str, int]]) -> Path:
    """tmp_path/photos/{split}/{class}/ with real hymenoptera photos."""
    source = shared_file("hymenoptera") / "train"
    root = tmp_path / "photos"
    for split, classes in counts.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for path in sorted((source / name).glob("*.jpg"))[:count]:
                shutil.copy(path, root / split / name / path.name)
    return root


def add_bad_files(root: Path) -> list[Path]:
    good = next((root / "train" / "ants").glob("*.jpg")).read_bytes()
    bad = [
        root / "train" / "ants" / "truncated.jpg",
        root / "train" / "ants" / "not_an_image.jpg",
        root / "train" / "bees" / "zero_bytes.png",
        root / "val" / "bees" / "zero_bytes_too.jpg",
    ]
    bad[0].write_bytes(good[: len(good) // 3])
    bad[1].write_text("this is a text file with an image's name\n")
    bad[2].touch()
    bad[3].touch()
    return bad


def folder_args(root: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--model", "shufflenet_v1_g3_x0_25_cifar", "--data", f"folder:{root}", "--input-size", "32"]
    return [*args, "--epochs", "2", "--batch-size", "4", "--out", str(out), "--quiet", *extra]


def test_bad_images_are_skipped_warned_once_and_counted(tmp_path, capsys) -> None:
    # 7 + 2 bad ants, 6 + 1 bad bees: 16 training files, 4 full batches, so every bad file is met each epoch.
    root = photo_tree(tmp_path, {"train": {"ants": 7, "bees": 6}, "val": {"ants": 2, "bees": 2}})
    bad = add_bad_files(root)
    (root / "train" / "bees" / "notes.txt").write_text("a README in a class folder")
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # One worker: the bad files are met in another process and must still be counted here.
        assert main([*folder_args(root, out, "--workers", "1")]) == 0
    messages = [str(w.message) for w in caught if "unreadable image" in str(w.message)]
    assert sorted(messages) == sorted(set(messages)) and len(messages) == 4  # once per file, not per epoch
    results = json.loads((out / "results.json").read_text())
    assert results["skipped_images"] == 4 and results["ignored_files"] == 1
    assert results["skipped_image_files"] == sorted(str(path) for path in bad)
    assert results["final"]["skipped_images"] == 4  # each epoch skips them again
    capsys.readouterr()


def test_bad_images_are_counted_in_the_final_message(tmp_path, capsys) -> None:
    root = photo_tree(tmp_path, {"train": {"ants": 3, "bees": 3}, "val": {"ants": 1, "bees": 1}})
    (root / "train" / "ants" / "zero.jpg").touch()
    args = folder_args(root, tmp_path / "run", "--workers", "0", "--epochs", "1", "--batch-size", "7")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([arg for arg in args if arg != "--quiet"]) == 0
    assert "1 unreadable image(s) skipped" in capsys.readouterr().out.strip().splitlines()[-1]


def test_strict_makes_the_first_bad_file_an_error(tmp_path, capsys) -> None:
    root = photo_tree(tmp_path, {"train": {"ants": 3, "bees": 3}, "val": {"ants": 1, "bees": 1}})
    (root / "train" / "bees" / "notes.txt").write_text("not an image")
    assert main(folder_args(root, tmp_path / "a", "--strict", "--workers", "0")) == 2
    assert "notes.txt" in one_line_error(capsys) and not (tmp_path / "a").exists()  # refused before training

    (root / "train" / "bees" / "notes.txt").unlink()
    (root / "train" / "ants" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(folder_args(root, tmp_path / "b", "--strict", "--workers", "0")) == 2
    err = one_line_error(capsys)
    assert str(root / "train" / "ants" / "broken.jpg") in err and "--strict" in err


@pytest.mark.parametrize(
    ("layout", "rename", "expected"),
    [
        ({"train": {"ants": 2, "bees": 2, "wasps": 0}, "val": {"ants": 1, "bees": 1}}, None, "wasps holds no images"),
        ({"train": {"ants": 2, "bees": 2}, "val": {"ants": 1, "bees": 1}}, "val/bees", "must match"),
        ({"train": {"ants": 3}, "val": {"ants": 1}}, None, "at least 2"),
    ],
    ids=["empty-class", "val-classes-differ", "one-class"],
)
def test_folder_layout_errors_come_before_training(tmp_path, capsys, monkeypatch, layout, rename, expected) -> None:
    root = photo_tree(tmp_path, layout)
    if rename:
        (root / rename).rename(root / rename.replace("bees", "wasps"))
    monkeypatch.setattr(training, "train_one_epoch", lambda *args: pytest.fail("training started"))
    assert main(folder_args(root, tmp_path / "run", "--workers", "0")) == 2
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def _cifar_archive(path: Path, members: dict[str, object], folder: str = "cifar-10-batches-py") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _cifar_members(data_shape: tuple[int, int] = (4, 3072)) -> dict[str, object]:
    batch = {b"data": np.zeros(data_shape, dtype=np.uint8), b"labels": [0, 1, 2, 3][: data_shape[0]]}
    members: dict[str, object] = {"batches.meta": {b"label_names": [f"c{i}".encode() for i in range(10)]}}
    members.update({name: batch for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]})
    return members


@pytest.mark.parametrize("case", ["truncated", "random-bytes", "wrong-folder", "missing-batch", "wrong-shape"])
def test_broken_cifar_archives_are_named(tmp_path, capsys, case) -> None:
    path = tmp_path / "cifar-10-python.tar.gz"
    if case == "truncated":
        path.write_bytes(shared_file(SUBSET).read_bytes()[: 2 * 1024 * 1024])
    elif case == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    elif case == "wrong-folder":
        _cifar_archive(path, _cifar_members(), folder="cifar10")
    elif case == "missing-batch":
        _cifar_archive(path, {k: v for k, v in _cifar_members().items() if k != "data_batch_3"})
    else:
        _cifar_archive(path, _cifar_members((4, 1024)))
    assert main(["train", "--model", MODEL, "--data", f"cifar10:{path}", "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys)
    assert str(path) in err
    detail = {"wrong-folder": "lacks", "missing-batch": "data_batch_3", "wrong-shape": "3072"}
    assert detail.get(case, "truncated or corrupt") in err


# ----------------------------------------------------------------------------------------------- hostile checkpoints


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = create_model(MODEL, num_classes=10)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    state = {"model_name": MODEL, "model_kwargs": {"num_classes": 10}, "classes": [f"c{i}" for i in range(10)]}
    save_checkpoint({**state, "model": model.state_dict(), "input_size": 32, "eval_resize": 32}, path)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's own note about the plain pickle
@pytest.mark.parametrize("case", ["truncated", "random-bytes", "empty", "plain-pickle"])
def test_unreadable_checkpoints_are_one_line_errors(tmp_path, capsys, good_checkpoint, case) -> None:
    path = tmp_path / f"{case}.pt"
    data = good_checkpoint.read_bytes()
    content = {
        "truncated": data[: len(data) // 2],
        "random-bytes": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty": b"",
        "plain-pickle": pickle.dumps({"model_name": MODEL}),
    }[case]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert ("empty" if case == "empty" else "unreadable") in message
    data_spec = f"cifar10:{shared_file(SUBSET)}"
    assert main(["eval", "--checkpoint", str(path), "--data", data_spec]) == 2
    assert str(path) in one_line_error(capsys, "eval")


class _WritesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys, good_checkpoint) -> None:
    marker = tmp_path / "payload-ran"
    state = torch.load(good_checkpoint, weights_only=True)
    path = tmp_path / "evil.pt"
    torch.save({**state, "classes": _WritesAFile(marker)}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "refused" in message and "system" in message and str(path) in message and "\n" not in message
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "any.jpg")]) == 2
    assert "refused" in one_line_error(capsys, "predict")
    # As a run's last.pt, through --resume.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "args.yaml").write_text(yaml.safe_dump({"model": MODEL, "data": "cifar10"}))
    shutil.copy(path, run_dir / "last.pt")
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "refused" in one_line_error(capsys)
    assert not marker.exists()
    # The payload is real: the unsafe loader would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoint_of_another_model_or_other_classes(tmp_path, good_checkpoint) -> None:
    state = load_checkpoint(good_checkpoint)
    other_weights = create_model("shufflenet_v1_g3_x0_25_cifar").state_dict()
    with pytest.raises(CheckpointError, match=f"do not fit model '{MODEL}'") as caught:
        build_model_from_checkpoint({**state, "model": other_weights})
    assert "\n" not in str(caught.value) and "missing" in str(caught.value)
    with pytest.raises(CheckpointError, match="10 outputs but it names 2 classes"):
        build_model_from_checkpoint({**state, "classes": ["ants", "bees"]})
    wrong_head = create_model(MODEL, num_classes=2).state_dict()
    with pytest.raises(CheckpointError, match=r"other shapes.*\(2, \d+\) vs \(10, \d+\)"):
        build_model_from_checkpoint({**state, "model": wrong_head})


def fake_run(run_dir: Path, args_model: str, checkpoint: Path, data: str) -> None:
    run_dir.mkdir(parents=True)
    settings = {"model": args_model, "data": data, "epochs": 1, "quiet": True, "workers": 0, "input_size": 32}
    (run_dir / "args.yaml").write_text(yaml.safe_dump(settings))
    state = torch.load(checkpoint, weights_only=True)
    extras = {"train_model": state["model"], "optimizer": {}, "scheduler": {}, "rng": {}, "epoch": 0}
    torch.save({**state, **extras}, run_dir / "last.pt")


def test_resume_of_a_run_whose_args_name_another_model(tmp_path, capsys, monkeypatch, good_checkpoint) -> None:
    run_dir = tmp_path / "run"
    fake_run(run_dir, "spgnet_s2p6_cifar", good_checkpoint, f"cifar10:{shared_file(SUBSET)}")
    no_data_loading(monkeypatch)
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = one_line_error(capsys)
    assert f"'{MODEL}'" in err and "'spgnet_s2p6_cifar'" in err and "args.yaml" in err


def test_resume_on_data_with_another_number_of_classes(tmp_path, capsys, monkeypatch, good_checkpoint) -> None:
    root = photo_tree(tmp_path, {"train": {"ants": 2, "bees": 2}, "val": {"ants": 1, "bees": 1}})
    fake_run(tmp_path / "run", MODEL, good_checkpoint, f"folder:{root}")
    monkeypatch.setattr(training, "restore_state", lambda *args: pytest.fail("weights were loaded"))
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "trained on 10 classes but --data folder:" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------------- numerical faults


def nan_at(monkeypatch: pytest.MonkeyPatch, call: int, before=None) -> None:
    """The training loss of the ``call``-th step (in this process) becomes NaN; ``before()`` runs first."""
    real = torch.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def forward(self, logits, target):
        calls["n"] += 1
        loss = real(self, logits, target)
        if calls["n"] == call:
            if before is not None:
                before()
            return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", forward)


def test_nan_stops_naming_the_step_and_keeps_the_good_checkpoints(tmp_path, monkeypatch, capsys) -> None:
    # 2 epochs x 4 steps, last.pt every 2 steps: the NaN comes at epoch 2 step 3 (global 7), after last.pt was
    # written at global 6 and best.pt at the end of epoch 1.
    config = tiny(tmp_path, checkpoint_every=2, deterministic=False)
    run_dir = Path(config.out)
    hashes = {}
    nan_at(monkeypatch, 7, before=lambda: hashes.update({n: sha(run_dir / n) for n in ("last.pt", "best.pt")}))
    assert main(cli_args(config)) == 1
    err = one_line_error(capsys)
    assert "non-finite loss at epoch 2 step 3" in err and "--nan-policy skip" in err
    assert {n: sha(run_dir / n) for n in ("last.pt", "best.pt")} == hashes
    state = load_checkpoint(run_dir / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 2)
    assert all(torch.isfinite(t).all() for t in state["train_model"].values() if t.is_floating_point())


def test_nan_skip_skips_the_update_and_counts_it(tmp_path, monkeypatch) -> None:
    nan_at(monkeypatch, 3)
    result = train(tiny(tmp_path, nan_policy="skip", epochs=1))
    assert result.skipped_steps == 1
    results = json.loads((result.run_dir / "results.json").read_text())
    assert results["skipped_steps"] == 1
    state = load_checkpoint(result.run_dir / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["train_model"].values() if t.is_floating_point())
    assert np.isfinite(result.history[0]["train_loss"])  # the skipped step's loss is not in the epoch's mean
    # The schedule still follows the position in the run: the step after the skipped one has its own lr.
    with open(result.run_dir / "steps.csv") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert lrs == pytest.approx([0.1 * 8 / 256 * warmup_cosine(4, 4)(step) for step in range(4)], rel=1e-5)


def test_nan_skip_leaves_the_weights_as_if_the_batch_had_not_been_there(tmp_path, monkeypatch) -> None:
    # Skipping the only update of a one-step run must leave the freshly initialised weights and BN statistics.
    nan_at(monkeypatch, 1)
    config = tiny(tmp_path, nan_policy="skip", epochs=1, max_steps_per_epoch=1)
    result = train(config)
    torch.manual_seed(config.seed)
    fresh = create_model(MODEL, num_classes=10).state_dict()
    trained = load_checkpoint(result.run_dir / "last.pt")["train_model"]
    assert all(torch.equal(fresh[name], trained[name]) for name in fresh)


# ----------------------------------------------------------------------------------------------- environment faults


def test_unwritable_output_directory_fails_before_loading_data(tmp_path, capsys, monkeypatch) -> None:
    no_data_loading(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = tiny(tmp_path, out=str(blocker / "run"))
    assert main(cli_args(config)) == 2
    assert f"cannot write to the run directory {blocker / 'run'}" in one_line_error(capsys)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(rundir.tempfile, "mkstemp", denied)
    assert main(cli_args(tiny(tmp_path))) == 2
    assert "Permission denied" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_full_disk_is_refused_before_training(tmp_path, capsys, monkeypatch) -> None:
    no_data_loading(monkeypatch)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 4096))
    assert main(cli_args(tiny(tmp_path))) == 2
    err = one_line_error(capsys)
    assert "not enough free space" in err and "MB free" in err


@pytest.mark.slow  # test_disk_full.py covers a disk filling up mid-run in the default suite
def test_disk_full_mid_run_keeps_last_pt_and_resume_finishes(tmp_path, capsys, monkeypatch, reference) -> None:
    config = tiny(tmp_path, ema=True, checkpoint_every=3)
    run_dir = Path(config.out)
    real_save = torch.save
    saves = {"n": 0}

    def fills_up(state, handle, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] >= 2:  # the mid-epoch last.pt at step 3 fits; best.pt at the epoch's end does not
            handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(state, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_up)
    assert main(cli_args(config)) == 1
    err = one_line_error(capsys)
    assert f"could not write {run_dir / 'best.pt'} (No space left on device)" in err and "--resume" in err
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["last.pt"] and not list(run_dir.glob(".*"))
    assert load_checkpoint(run_dir / "last.pt")["step"] == 3

    monkeypatch.setattr(torch, "save", real_save)  # space was freed
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert_bitwise_equal(reference, load_checkpoint(run_dir / "last.pt"))


# ----------------------------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--lr", "-0.1"], "invalid --lr -0.1: expected a number > 0"),
        (["--batch-size", "0"], "invalid --batch-size 0: expected an integer >= 1"),
        (["--epochs", "0"], "invalid --epochs 0: expected an integer >= 1"),
        (["--data", "imagenet"], "expected cifar10, cifar100, cifar10:PATH, cifar100:PATH or folder:PATH"),
        (["--val-split", "1.0"], "strictly between 0 and 1"),
        (["--val-split", "0"], "strictly between 0 and 1"),
        (["--momentum", "1.5"], "a number in [0, 1)"),
        (["--workers", "-2"], "an integer >= 0"),
        (["--checkpoint-every", "-1"], "an integer >= 0"),
        (["--nan-policy", "ignore"], "expected stop or skip"),
        (["--model", "spgnet_s2p6_cifarr"], "closest: spgnet_s2p6_cifar"),
        (["--model-arg", "no_such_option=1"], "no_such_option"),
        (["--input-size", "0"], "an integer >= 1"),
        (["--model", "parnet_s_cifar", "--input-size", "33"], "nearest sizes that work: 32 and 40"),
    ],
)
def test_invalid_flags_are_refused_before_any_data(tmp_path, capsys, monkeypatch, flags, expected) -> None:
    no_data_loading(monkeypatch)
    args = ["train", "--model", MODEL, "--data", f"cifar10:{shared_file(SUBSET)}", "--out", str(tmp_path / "run")]
    assert main([*args, *flags]) == 2
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_eval_predict_and_resume_flags(tmp_path, capsys, good_checkpoint) -> None:
    data = f"cifar10:{shared_file(SUBSET)}"
    assert main(["eval", "--checkpoint", str(good_checkpoint), "--data", data, "--batch-size", "0"]) == 2
    assert "--batch-size 0: expected an integer >= 1" in one_line_error(capsys, "eval")
    assert main(["predict", "--checkpoint", str(good_checkpoint), "x.jpg", "--topk", "0"]) == 2
    assert "--topk 0: expected an integer >= 1" in one_line_error(capsys, "predict")
    assert main(["train", "--resume", str(tmp_path), "--epochs", "5"]) == 2
    assert "drop --epochs" in one_line_error(capsys)


def test_training_error_types() -> None:
    # The CLI maps these to exit codes: input errors 2, a run that failed part-way 1, a signal 128 + signal.
    assert issubclass(NonFiniteLossError, TrainingError) and TrainingError.exit_code == 1
    assert TrainingInterrupted(signal.SIGTERM, "x").exit_code == 143
    assert issubclass(TrainingInterrupted, KeyboardInterrupt)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        load_dataset(f"folder:{REPO}", val_split=0.0)

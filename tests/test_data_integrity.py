"""Folder data as real collections hold it: links (loops, into other classes, shared outside files), classes
whose every file is unreadable, per-class counts, and the messages of the commands that meet such data.

Everything runs on tiny images generated in tmp_path; training runs are one short epoch of a tiny CIFAR model.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lightnets
import lightnets.data.checks as checks
import lightnets.train.loop as training
from lightnets.cli import main
from lightnets.cli.console import command_output, os_error_text
from lightnets.data import load_dataset
from lightnets.data.scan import find_images, scan_class_folders
from lightnets.models import create_model
from lightnets.train.rundir import save_checkpoint

MODEL = "shufflenet_v1_g3_x0_25_cifar"
REPO = Path(__file__).resolve().parents[1]


def image(path: Path, seed: int, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def classes(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """root/{class}/{class}{i}.png, distinct random images."""
    for index, (name, count) in enumerate(counts.items()):
        for i in range(count):
            image(root / name / f"{name}{i}.png", seed * 1000 + index * 100 + i)
    return root


def unreadable_files(folder: Path) -> list[Path]:
    """The issue's all-unreadable class: a zero-byte file, random bytes, a text file and a truncated JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    files = {
        "zero.jpg": b"",
        "random.jpg": np.random.default_rng(1).integers(0, 256, 700, dtype=np.uint8).tobytes(),
        "notes.png": b"this is a text file with an image's name\n",
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 3],
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def labelled(scan) -> dict[str, list[str]]:
    """Class name -> the file names counted for it."""
    found: dict[str, list[str]] = {name: [] for name in scan.classes}
    for path, label in scan.samples:
        found[scan.classes[label]].append(path.name)
    return found


def kinds(scan) -> dict[str, str]:
    """Skipped path (relative to the scanned root) -> its kind."""
    return {os.path.relpath(entry.path, scan.root): entry.kind for entry in scan.skipped}


def one_line_error(capsys: pytest.CaptureFixture, command: str) -> str:
    """The one error line on stderr; any other line there must be a one-line warning (when pytest lets warnings
    print, as under ``-p no:warnings``)."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if not line.startswith(f"lightnets {command}: warning: ")]
    assert len(errors) == 1 and errors[0].startswith(f"lightnets {command}: error: "), lines
    return errors[0]


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--model", MODEL, "--data", f"folder:{root}", "--input-size", "32", "--epochs", "1"]
    return [*args, "--batch-size", "4", "--workers", "0", "--out", str(out), *extra]


# ----------------------------------------------------------------------------------------------- the scan


def test_a_symlink_loop_is_read_once(tmp_path: Path) -> None:
    root = classes(tmp_path / "data", {"ants": 3, "bees": 2})
    (root / "bees" / "loop").symlink_to("..")  # the loop: the folder of all classes
    (root / "bees" / "self").symlink_to(".")
    (root / "bees" / "sub").mkdir()
    image(root / "bees" / "sub" / "deep.png", 50)
    (root / "bees" / "sub" / "up").symlink_to("../..", target_is_directory=True)
    scan = scan_class_folders(root)
    assert labelled(scan) == {"ants": ["ants0.png", "ants1.png", "ants2.png"], "bees": ["bees0.png", "bees1.png",
                              "deep.png"]}  # fmt: skip
    assert scan.counts() == [3, 3]
    assert kinds(scan) == {"bees/loop": "loop", "bees/self": "loop", "bees/sub/up": "loop"}


def test_a_link_to_another_class_folder_or_file_counts_there_only(tmp_path: Path) -> None:
    root = classes(tmp_path / "data", {"ants": 2, "bees": 2})
    (root / "ants" / "more").symlink_to(root / "bees")  # absolute, into another class
    (root / "ants" / "a_bee.png").symlink_to("../bees/bees0.png")
    (root / "ants" / "nested").mkdir()
    (root / "ants" / "nested" / "deeper").symlink_to("../../bees")
    scan = scan_class_folders(root)
    assert labelled(scan) == {"ants": ["ants0.png", "ants1.png"], "bees": ["bees0.png", "bees1.png"]}
    assert kinds(scan) == {"ants/more": "other-class", "ants/a_bee.png": "other-class",
                           "ants/nested/deeper": "other-class"}  # fmt: skip
    assert all("class bees" in entry.reason for entry in scan.skipped)


def test_an_outside_folder_counts_once_for_the_class_that_links_it(tmp_path: Path) -> None:
    root = classes(tmp_path / "data", {"ants": 1, "bees": 1})
    outside = classes(tmp_path / "downloads", {"wasps": 2})
    (root / "bees" / "extra").symlink_to(outside / "wasps")
    (root / "bees" / "again").symlink_to(outside / "wasps")  # a second link to the same folder
    (root / "bees" / "one.png").symlink_to(outside / "wasps" / "wasps0.png")  # and to one of its files
    (root / "bees" / "alias.png").symlink_to("bees0.png")  # a second name inside the class
    scan = scan_class_folders(root)
    found = labelled(scan)
    assert found["ants"] == ["ants0.png"] and sorted(found["bees"]) == ["bees0.png", "wasps0.png", "wasps1.png"]
    assert len({os.path.realpath(path) for path, _ in scan.samples}) == len(scan.samples) == 4
    # The alphabetically first link to a folder is read; the file link reaches a file already counted through it.
    assert kinds(scan) == {"bees/extra": "loop", "bees/one.png": "duplicate", "bees/alias.png": "duplicate"}
    assert (root / "bees" / "bees0.png", 1) in scan.samples  # the real name is the one counted


def test_an_outside_file_reached_from_two_classes_counts_for_neither(tmp_path: Path) -> None:
    root = classes(tmp_path / "data", {"ants": 1, "bees": 1})
    shared = image(tmp_path / "elsewhere" / "shared.png", 77)
    (root / "ants" / "shared.png").symlink_to(shared)
    (root / "bees" / "linked").symlink_to(shared.parent)
    scan = scan_class_folders(root)
    assert labelled(scan) == {"ants": ["ants0.png"], "bees": ["bees0.png"]}
    assert kinds(scan) == {"ants/shared.png": "shared", "bees/linked/shared.png": "shared"}
    assert "classes ants and bees" in scan.skipped[0].reason


def test_broken_links_special_files_and_hidden_names(tmp_path: Path) -> None:
    root = classes(tmp_path / "data", {"ants": 1, "bees": 1})
    (root / "ants" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    os.mkfifo(root / "ants" / "pipe.jpg")  # would block the loader forever if opened
    image(root / "ants" / ".thumb.png", 5)
    image(root / "ants" / ".cache" / "c.png", 6)
    (root / "ants" / "readme.txt").write_text("not an image")
    scan = scan_class_folders(root)
    assert labelled(scan) == {"ants": ["ants0.png"], "bees": ["bees0.png"]}
    assert kinds(scan) == {"ants/gone.jpg": "broken", "ants/pipe.jpg": "special"}
    assert scan.non_images == [root / "ants" / "readme.txt"]
    (root / "ants" / "readme.txt").unlink()
    with pytest.raises(ValueError, match="--strict refuses unreadable entries") as caught:
        load_dataset(f"folder:{root}", strict=True, val_split=0.5)
    assert str(root / "ants" / "gone.jpg") in str(caught.value)


def test_class_folders_that_are_one_folder_are_refused(tmp_path: Path) -> None:
    root = classes(tmp_path / "data", {"ants": 2})
    (root / "bees").symlink_to("ants")
    with pytest.raises(ValueError, match="are the same folder") as caught:
        scan_class_folders(root)
    assert str(root / "ants") in str(caught.value) and str(root / "bees") in str(caught.value)


def test_find_images_on_one_folder(tmp_path: Path) -> None:
    folder = classes(tmp_path / "photos", {"b": 2, "a": 1})
    (folder / "b" / "loop").symlink_to("..")
    assert [path.relative_to(folder).as_posix() for path in find_images(folder)] == ["a/a0.png", "b/b0.png",
                                                                                     "b/b1.png"]  # fmt: skip


def test_scan_warnings_are_one_per_kind_and_the_bundle_lists_them(tmp_path: Path) -> None:
    root = classes(tmp_path / "data" / "train", {"ants": 4, "bees": 4})
    classes(tmp_path / "data" / "val", {"ants": 1, "bees": 2}, seed=1)
    for name in ("loop1", "loop2"):
        (root / "bees" / name).symlink_to("..")
    (root / "ants" / "bee.png").symlink_to("../bees/bees0.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = load_dataset(f"folder:{tmp_path / 'data'}", input_size=16)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages
    assert messages[0].startswith("skipped 1 link(s) into another class") and "ants/bee.png" in messages[0]
    assert messages[1].startswith("skipped 2 link(s) to a folder already read") and "1 more like it" in messages[1]
    assert len(bundle.skipped_entries) == 3
    assert bundle.class_counts() == {"train": [4, 4], "val": [1, 2]}


def test_cifar_class_counts(tmp_path: Path) -> None:
    from .test_data import _write_cifar

    bundle = load_dataset(f"cifar10:{_write_cifar(tmp_path, 'cifar10', per_batch=6)}")
    counts = bundle.class_counts()
    assert set(counts) == {"train", "test"} and sum(counts["train"]) == len(bundle.train)
    assert counts["train"] == torch.bincount(bundle.train.labels, minlength=10).tolist()


# ----------------------------------------------------------------------------------------------- empty classes


def test_an_all_unreadable_class_is_an_error_naming_it(tmp_path: Path) -> None:
    root = classes(tmp_path / "data", {"ants": 3, "bees": 3})
    unreadable_files(root / "wasps")
    with pytest.raises(ValueError, match="class wasps has no readable train image: all 2 of its files") as caught:
        load_dataset(f"folder:{root}", val_split=0.5)
    assert "--allow-empty-classes" in str(caught.value) and str(root / "wasps") in str(caught.value)
    with pytest.warns(UserWarning, match="class wasps has no readable train image") as caught_warnings:
        bundle = load_dataset(f"folder:{root}", val_split=0.5, allow_empty_classes=True)
    assert bundle.classes == ["ants", "bees", "wasps"] and ("train", "wasps") in bundle.empty_classes
    assert any("val image" in str(w.message) for w in caught_warnings)  # its val half is unreadable too


def test_a_val_class_without_a_readable_image(tmp_path: Path) -> None:
    classes(tmp_path / "data" / "train", {"ants": 2, "bees": 2})
    classes(tmp_path / "data" / "val", {"ants": 1}, seed=1)
    unreadable_files(tmp_path / "data" / "val" / "bees")
    with pytest.raises(ValueError, match="class bees has no readable val image"):
        load_dataset(f"folder:{tmp_path / 'data'}")
    (tmp_path / "data" / "val" / "bees" / "zero.jpg").unlink()
    image(tmp_path / "data" / "val" / "bees" / "good.png", 3)  # one readable image is enough
    assert load_dataset(f"folder:{tmp_path / 'data'}").class_counts()["val"] == [1, 4]


def test_train_refuses_an_empty_class_before_the_first_step(tmp_path, capsys, monkeypatch) -> None:
    root = classes(tmp_path / "data", {"ants": 4, "bees": 4})
    unreadable_files(root / "wasps")
    (root / "bees" / "loop").symlink_to("..")
    monkeypatch.setattr(training, "train_step", lambda *args: pytest.fail("an optimizer step ran"))
    assert main(train_args(root, tmp_path / "run")) == 2
    assert "class wasps has no readable train image" in one_line_error(capsys, "train")
    assert not (tmp_path / "run").exists()


def test_allow_empty_classes_trains_and_reports_the_counts(tmp_path, capsys) -> None:
    root = classes(tmp_path / "data" / "train", {"ants": 4, "bees": 4})
    classes(tmp_path / "data" / "val", {"ants": 1, "bees": 1, "wasps": 1}, seed=1)
    unreadable_files(root / "wasps")
    (root / "bees" / "loop").symlink_to("..")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(train_args(tmp_path / "data", tmp_path / "run", "--allow-empty-classes")) == 0
    out = capsys.readouterr().out.splitlines()
    assert "(12 train / 3 val, 3 classes: ants 4/1, bees 4/1, wasps 4/1)" in out[0]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["images_per_class"] == {"train": {"ants": 4, "bees": 4, "wasps": 4},
                                           "val": {"ants": 1, "bees": 1, "wasps": 1}}  # fmt: skip
    assert results["scan_skipped"] == 1 and results["scan_skipped_entries"][0]["path"] == str(root / "bees" / "loop")
    assert results["skipped_images"] == 4
    empty = [str(w.message) for w in caught if "class wasps" in str(w.message)]
    assert len(empty) == 1, empty  # at loading; the check after the epoch does not repeat it


def test_a_class_that_fails_only_in_full_decoding_is_caught_after_the_first_pass(tmp_path, capsys, monkeypatch):
    root = classes(tmp_path / "data" / "train", {"ants": 4, "bees": 4})
    classes(tmp_path / "data" / "val", {"ants": 1, "bees": 1, "wasps": 1}, seed=1)
    unreadable_files(root / "wasps")
    monkeypatch.setattr(checks, "decode_problem", lambda path: None)  # as if every header check passed
    assert main(train_args(tmp_path / "data", tmp_path / "run", "--batch-size", "12", "--quiet")) == 2
    err = one_line_error(capsys, "train")
    assert "class wasps has no readable train image: all 4 of its files failed to decode by the end of epoch 1" in err
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before the epoch was saved

    with pytest.warns(UserWarning, match="class wasps has no readable train image"):
        args = train_args(
            tmp_path / "data", tmp_path / "run2", "--batch-size", "12", "--quiet", "--allow-empty-classes"
        )
        assert main(args) == 0


def test_batch_size_above_the_training_set_names_both_numbers(tmp_path, capsys) -> None:
    root = classes(tmp_path / "data", {"ants": 5, "bees": 5})
    assert main(train_args(root, tmp_path / "run", "--batch-size", "64", "--val-split", "0.2")) == 2
    assert "--batch-size 64 is larger than the training set" in (err := one_line_error(capsys, "train"))
    assert "(8 images)" in err and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- predict, export


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    model = create_model(MODEL, num_classes=2)
    state = {"model_name": MODEL, "model_kwargs": {"num_classes": 2}, "classes": ["ants", "bees"]}
    preprocessing = {"input_size": 32, "eval_resize": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_checkpoint({**state, "model": model.state_dict(), **preprocessing}, path)
    return path


def test_predict_on_a_folder_predicts_every_image_sorted(tmp_path, capsys, checkpoint) -> None:
    folder = classes(tmp_path / "photos", {"b": 2, "a": 1})
    (folder / "b" / "zero.jpg").touch()
    (folder / "notes.txt").write_text("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["predict", "--checkpoint", str(checkpoint), str(folder), "--json", "--topk", "1"]) == 0
    assert sorted(str(w.message) for w in caught) == [
        f"ignoring non-image file {folder / 'notes.txt'} in folder {folder}",
        f"skipping unreadable image {folder / 'b' / 'zero.jpg'}: empty file (0 bytes)",
    ]
    predictions = json.loads(capsys.readouterr().out)
    assert [item["image"] for item in predictions] == [str(folder / "a" / "a0.png"), str(folder / "b" / "b0.png"),
                                                       str(folder / "b" / "b1.png")]  # fmt: skip
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "empty")]) == 2
    assert f"folder {tmp_path / 'empty'} holds no images" in one_line_error(capsys, "predict")
    # A file named on the command line that cannot be read is an error, not a skip.
    assert main(["predict", "--checkpoint", str(checkpoint), str(folder / "b" / "zero.jpg")]) == 2
    assert one_line_error(capsys, "predict").endswith(
        f"cannot read image {folder / 'b' / 'zero.jpg'}: empty file (0 bytes)"
    )


def test_a_file_that_is_no_checkpoint_says_so(tmp_path, capsys) -> None:
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n" * 30)
    image(tmp_path / "img.png", 1)
    assert main(["predict", "--checkpoint", str(text), str(tmp_path / "img.png")]) == 2
    err = one_line_error(capsys, "predict")
    assert f"checkpoint {text} is unreadable: it is not a PyTorch checkpoint" in err and "index" not in err
    assert main(["predict", "--checkpoint", str(tmp_path), str(tmp_path / "img.png")]) == 2
    assert f"checkpoint {tmp_path} is a folder without best.pt or last.pt" in one_line_error(capsys, "predict")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_export_to_an_unwritable_place_names_the_path(tmp_path, capsys) -> None:
    for out, cause in (("/proc/x.onnx", "/proc does not accept new files"), (str(tmp_path), "it is a folder")):
        assert main(["export", "--model", MODEL, "--format", "onnx", "--out", out]) == 2
        err = one_line_error(capsys, "export")
        assert err.endswith(
            f"cannot write --out {out}: {cause}" + ("; give a file name" if out == str(tmp_path) else "")
        )
        assert ".tmp" not in err and "Errno" not in err


# ----------------------------------------------------------------------------------------------- console


def test_warnings_print_as_one_line_naming_the_command() -> None:
    ours = str(Path(lightnets.__file__).parent / "data" / "folder.py")
    with command_output("train"):
        text = warnings.formatwarning("skipping unreadable image x.jpg:\n  truncated", UserWarning, ours, 3, "code")
        foreign = warnings.formatwarning("old API", FutureWarning, "/site-packages/torch/x.py", 7)
    assert text == "lightnets train: warning: skipping unreadable image x.jpg: truncated\n"
    assert foreign == "lightnets train: warning: old API (FutureWarning from x.py:7)\n"
    assert "lightnets train" not in warnings.formatwarning("m", UserWarning, ours, 1)  # restored afterwards


def test_os_errors_print_as_the_path_and_the_cause() -> None:
    assert os_error_text(PermissionError(13, "Permission denied", "/data/out.pt")) == "/data/out.pt: Permission denied"
    moved = OSError(18, "Invalid cross-device link", "a", None, "b")  # (errno, strerror, filename, winerror, filename2)
    assert os_error_text(moved) == "a -> b: Invalid cross-device link"
    assert os_error_text(OSError("the folder of run x is gone")) == "the folder of run x is gone"


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env}
    return subprocess.run([sys.executable, "-m", "lightnets", *args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=300)  # fmt: skip


@pytest.mark.slow  # a real child process (~11 s); the in-process warning tests stay in the default suite
def test_predict_warnings_are_clean_lines_in_a_real_process(tmp_path, checkpoint) -> None:
    folder = classes(tmp_path / "photos", {"a": 1})
    (folder / "a" / "zero.jpg").touch()
    result = run_cli("predict", "--checkpoint", str(checkpoint), str(folder), cwd=tmp_path, env={})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"lightnets predict: warning: skipping unreadable image {folder}/a/zero.jpg: "
                                          "empty file (0 bytes)"]  # fmt: skip


@pytest.mark.slow  # several fresh CLI processes
def test_no_cuda_notice_on_a_machine_without_cuda(tmp_path) -> None:
    # A CUDA toolkit (CUDA_HOME) without a usable GPU is what makes torch log the notice.
    env = {"CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    control = subprocess.run([sys.executable, "-c", "import torch.utils.benchmark"], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=300)  # fmt: skip
    if "No CUDA runtime is found" not in control.stderr:
        pytest.skip("this torch does not log the CUDA_HOME notice")
    bench = run_cli("bench", "--models", "no_such_model", cwd=tmp_path, env=env)  # imports torch.utils.benchmark
    assert bench.returncode == 2 and bench.stderr.splitlines()[0].startswith("lightnets bench: error: unknown model")
    assert len(bench.stderr.splitlines()) == 1, bench.stderr
    models = run_cli("models", "asymmnet_small_x0_35_cifar", cwd=tmp_path, env=env)
    assert models.returncode == 0 and models.stderr == ""


@pytest.mark.slow  # fresh interpreters importing torch
def test_no_cuda_notice_from_a_script_that_imports_lightnets(tmp_path) -> None:
    # What the benchmark scripts do: import lightnets, then what imports torch's extension helper.
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    control = subprocess.run([sys.executable, "-c", "import torch.utils.benchmark"], capture_output=True, text=True,
                             env=env, timeout=300)  # fmt: skip
    if "No CUDA runtime is found" not in control.stderr:
        pytest.skip("this torch does not log the CUDA_HOME notice")
    script = "import torch\nimport lightnets.measure.latency\nimport torch.utils.cpp_extension\nprint('ran')\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout == "ran\n" and result.stderr == "", result.stderr

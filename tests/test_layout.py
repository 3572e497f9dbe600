"""The package's shape: no source file outgrows a reading, one atomic writer, each setting declared once.

(That models/ is a leaf is tests/test_model_imports.py.)
"""

import argparse
import errno
import os
import stat
from dataclasses import fields
from pathlib import Path

import pytest

from lightnets.files import atomic_path, atomic_write, remove_stale_temporaries
from lightnets.train.config import (
    TrainConfig,
    add_config_arguments,
    config_from_values,
    load_config_file,
    validate_config,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "lightnets"


def test_no_source_file_is_above_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_atomic_write_is_readable_by_others_and_leaves_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "table.csv", "a,b\n")
    assert path.read_text() == "a,b\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert path.read_text() == "a,b\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    secret = atomic_write(tmp_path / "token", "x", mode=0o600)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_atomic_write_errors_name_the_target_not_the_temporary(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError) as caught:
        atomic_write(blocker / "model.onnx", b"x")
    assert caught.value.filename == str(blocker / "model.onnx") and caught.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert ".tmp" not in str(caught.value)


def test_stale_temporaries_of_any_writer_are_removed(tmp_path):
    for name in (".summary.csv.k2j3.tmp", ".curves.png.ab12.tmp", ".last.pt.x9.tmp"):
        (tmp_path / name).write_text("left by a SIGKILL")
    (tmp_path / "summary.csv").write_text("kept")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == sorted(
        [".curves.png.ab12.tmp", ".last.pt.x9.tmp", ".summary.csv.k2j3.tmp"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_every_setting_is_a_flag_with_its_help_and_default():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert set(flags) == {f.name for f in fields(TrainConfig)} - {"model_kwargs"}
    assert "(default 256)" in flags["batch_size"].help and all(a.default is None for a in flags.values())
    args = parser.parse_args(["--epochs", "3", "--no-nesterov", "--aug", "colorjitter"])
    config = config_from_values(vars(args), {"epochs": 7, "lr": 0.3})
    assert (config.epochs, config.nesterov, config.lr, config.aug) == (3, False, 0.3, "colorjitter")  # flags win
    with pytest.raises(ValueError, match="invalid --epochs 0: expected an integer >= 1"):
        validate_config(config_from_values({"epochs": 0}))


def test_config_file_errors_name_the_file(tmp_path):
    good = tmp_path / "recipe.yaml"
    good.write_text("batch-size: 64\nlr_base: 0.2\n")
    assert load_config_file(good) == {"batch_size": 64, "lr_base": 0.2}
    for text, expected in [("epochz: 3\n", r"unknown setting\(s\) epochz"), ("- 1\n", "must hold a mapping"),
                           ("a: [1\n", "is not readable YAML")]:  # fmt: skip
        good.write_text(text)
        with pytest.raises(ValueError, match=expected) as caught:
            load_config_file(good)
        assert str(good) in str(caught.value)
    with pytest.raises(ValueError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")

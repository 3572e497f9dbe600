"""A disk that fills up during a run, on a real small filesystem (a size-limited tmpfs, mounted when the tests run
as root): the write that fails leaves the previous file intact and no temporary, training stops with one line
naming the run directory, and --resume continues once space is freed."""

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import lightnets.train.loop as training
from lightnets.cli import main
from lightnets.models.checkpoint import load_checkpoint

from .test_reliability import cli_args, one_line_error, tiny


@contextlib.contextmanager
def small_filesystem(where: Path, megabytes: int):
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; the monkeypatched ENOSPC tests still run")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path, leave_bytes: int) -> Path:
    """Another process fills the disk, leaving ``leave_bytes`` free."""
    filler = directory.parent / "filler.bin"
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(0, shutil.disk_usage(directory).free - leave_bytes))
    return filler


def test_disk_filling_up_mid_run_keeps_the_last_good_checkpoint_and_resume_finishes(tmp_path, capsys, monkeypatch):
    with small_filesystem(tmp_path / "disk", 48) as disk:
        config = tiny(tmp_path, epochs=2, max_steps_per_epoch=4, checkpoint_every=2)
        config.out = str(disk / "run")
        run_dir = Path(config.out)
        original, steps, filled = training.train_step, {"n": 0}, {}

        def step_then_fill(*args, **kwargs):
            original(*args, **kwargs)
            steps["n"] += 1
            if steps["n"] == 3:  # after the checkpoint at step 2; the one at the epoch's end cannot be written
                filled["file"] = fill(run_dir, 64 * 1024)

        monkeypatch.setattr(training, "train_step", step_then_fill)
        assert main(cli_args(config)) == 1
        err = one_line_error(capsys)
        assert f"could not write {run_dir}" in err and "No space left on device" in err
        assert f"lightnets train --resume {run_dir}" in err
        assert not list(run_dir.glob(".*.tmp")), "a temporary was left behind"
        assert load_checkpoint(run_dir / "last.pt")["step"] == 2  # the previous complete checkpoint, intact

        filled["file"].unlink()  # space is freed
        monkeypatch.setattr(training, "train_step", original)
        assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
        state = load_checkpoint(run_dir / "last.pt")
        assert (state["epoch"], state["step"]) == (2, 0) and len(state["history"]) == 2

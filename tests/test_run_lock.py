"""Two writers, one run directory: a second train there is refused, naming the first; a dead holder's lock is taken."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lightnets.cli import main
from lightnets.train.lock import LOCK_NAME, RunDirectoryInUse, RunDirLock

from .test_reliability import cli_args, one_line_error, tiny


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock, as a training process does, until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from lightnets.train.lock import RunDirLock
        RunDirLock({str(run_dir)!r}).acquire()
        print("holding", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


@pytest.mark.slow  # two real processes (~7 s)
def test_a_second_process_is_refused_naming_the_first_and_a_dead_holders_lock_is_taken(tmp_path, capsys):
    config = tiny(tmp_path, epochs=1, max_steps_per_epoch=2)
    run_dir = Path(config.out)
    assert main(cli_args(config)) == 0 and not (run_dir / LOCK_NAME).exists()  # removed when the run ended
    holder = hold_lock(run_dir)  # as if a --resume of it were running
    try:
        # Refused before anything else is said about the directory (such as that it already holds a run).
        assert main(cli_args(config)) == 2
        err = one_line_error(capsys)
        assert f"{run_dir} is in use by another training run (pid {holder.pid} on {socket.gethostname()})" in err
        assert main(["train", "--resume", str(run_dir)]) == 2
        assert f"is in use by another training run (pid {holder.pid} on " in one_line_error(capsys)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL left the lock file, naming a process that is gone; the kernel released its lock.
    assert (run_dir / LOCK_NAME).read_text().split()[0] == str(holder.pid)
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert not (run_dir / LOCK_NAME).exists()


def test_the_lock_is_per_open_file_and_released_once(tmp_path):
    first = RunDirLock(tmp_path)
    first.acquire()
    first.acquire()  # again: already held, nothing happens
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    with pytest.raises(RunDirectoryInUse, match=f"pid {os.getpid()} on "):
        RunDirLock(tmp_path).acquire()  # flock conflicts between two open files, even in one process
    with first:
        pass  # leaving the block releases and removes the file
    assert not (tmp_path / LOCK_NAME).exists()
    first.release()  # a second release is a no-op
    with RunDirLock(tmp_path) as again:
        again.acquire()
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()

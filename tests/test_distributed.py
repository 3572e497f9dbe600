"""Data-parallel training under torchrun: 2 CPU processes (Gloo) on the CIFAR-10 subset, a handful of steps.

Every job here is a real ``torchrun`` launch (``python -m torch.distributed.run``) of ``-m lightnets train``.
"""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from lightnets.data import TensorSplit
from lightnets.data.batches import _batch_indices, tensor_batches
from lightnets.distributed import ControlChannel, DistContext, init_distributed
from lightnets.evaluation import evaluate_checkpoint
from lightnets.models.checkpoint import build_model_from_checkpoint, load_checkpoint

from .conftest import shared_file

# Each test launches torchrun with two processes: slow on 2 cores (make test-all, CI's slow step).
pytestmark = pytest.mark.slow

SUBSET = "cifar-10-subset-python.tar.gz"
MODEL = "asymmnet_small_x0_35_cifar"
# Each rank normalises BN over its own half of the global batch (SyncBatchNorm has no CPU kernel) and draws its
# own dropout masks, so two processes do not give bitwise the losses of one. Measured for these 6 steps with
# `python benchmarks/ddp_loss_match.py`: 0.06 % apart at the first step (before any update) and at most 0.45 %;
# the tolerance leaves room for other thread counts and CPUs. A few steps from initialisation every loss is
# near ln(10), so this comparison alone would not notice a wrong shard (seed 4's batches differ by up to 1.9 %,
# same script): test_rank_shards_make_up_the_single_process_batches checks the shards exactly, and the lr
# column of steps.csv must be equal to the last digit.
LOSS_RTOL = 0.015
EPOCHS, STEPS = 2, 3


def train_args(out, *extra: str) -> list[str]:
    return [
        "train",
        "--model", MODEL,
        "--data", f"cifar10:{shared_file(SUBSET)}",
        "--epochs", str(EPOCHS),
        "--batch-size", "32",
        "--lr", "0.05",
        "--warmup-epochs", "0",
        "--max-steps-per-epoch", str(STEPS),
        "--checkpoint-every", "2",
        "--seed", "3",
        "--workers", "0",
        "--quiet",
        "--out", str(out),
        *extra,
    ]  # fmt: skip


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def launch(command: list[str], cwd, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``command``; on a timeout (a hang) kill it and every process below it, so a failing test leaves no
    worker waiting in a collective behind it."""
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*descendants(process.pid), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"hung for {timeout} s: {' '.join(command)}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def single(args: list[str], cwd, script=None, fail_at=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if fail_at is not None:
        env["FAIL_AT_STEP"] = str(fail_at)
    entry = [str(script)] if script else ["-m", "lightnets"]
    return launch([sys.executable, *entry, *args], cwd, env)


def torchrun(args: list[str], cwd, nproc: int = 2, script=None, fail_at=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if fail_at is not None:
        env["FAIL_AT_STEP"] = str(fail_at)
    entry = [str(script)] if script else ["-m", "lightnets"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return launch([*command, *entry, *args], cwd, env)


def step_rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "steps.csv") as handle:
        return list(csv.DictReader(handle))


def assert_losses_match(run_dir, reference_dir) -> None:
    got, want = step_rows(run_dir), step_rows(reference_dir)
    assert len(got) == len(want) == EPOCHS * STEPS
    for row, ref in zip(got, want):
        where = f"epoch {row['epoch']} step {row['step']}"
        assert row["lr"] == ref["lr"], f"{where}: lr {row['lr']}, one process {ref['lr']}"  # the global batch's
        loss, ref_loss = float(row["loss"]), float(ref["loss"])
        assert loss == pytest.approx(ref_loss, rel=LOSS_RTOL), f"{where}: 2 processes {loss}, 1 process {ref_loss}"


FAULT_SCRIPT = """
    # lightnets train, with an exception in one rank's optimizer step number $FAIL_AT_STEP (counted in this
    # process); under torchrun only on rank 1, whose peer is then waiting in the gradient all-reduce.
    import os, sys
    import torch
    from lightnets.cli import main

    if os.environ.get("RANK", "1") == "1":
        original, calls = torch.optim.SGD.step, []

        def failing_step(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == int(os.environ["FAIL_AT_STEP"]):
                raise RuntimeError("injected fault on rank 1")
            return original(self, *args, **kwargs)

        torch.optim.SGD.step = failing_step
    sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, uninterrupted: what every 2-process run here is compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = single(train_args(out), cwd=out.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def fault_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("scripts") / "fail_on_rank1.py"
    path.write_text(textwrap.dedent(FAULT_SCRIPT))
    return path


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context, device = init_distributed(torch.device("cpu"))
    assert context == DistContext() and context.is_main and not context.enabled
    assert device == torch.device("cpu")
    control = ControlChannel(context)
    assert control.poll(15) == 15 and control.poll(None) is None and control.gather("x") == ["x"]


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_make_up_the_single_process_batches(world):
    generator = torch.Generator().manual_seed(0)
    split = TensorSplit(
        torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8, generator=generator), torch.arange(100)
    )
    one = list(tensor_batches(split, 24, train=True, seed=5, epoch=1))
    shards = [list(tensor_batches(split, 24, train=True, seed=5, epoch=1, shard=(r, world))) for r in range(world)]
    assert all(len(s) == len(one) == 4 for s in shards)
    for step, (images, labels) in enumerate(one):
        # Same images, same crops and flips: the ranks' slices side by side are exactly one process's batch.
        assert torch.equal(torch.cat([s[step][0] for s in shards]), images)
        assert torch.equal(torch.cat([s[step][1] for s in shards]), labels)
    # Evaluation: disjoint shares that cover the split once.
    seen = torch.cat([lab for r in range(world) for _, lab in tensor_batches(split, 7, train=False, shard=(r, world))])
    assert sorted(seen.tolist()) == list(range(100))
    # Folder datasets: the same sharding of sample indices, read by each rank's DataLoader.
    whole = _batch_indices(100, 24, train=True, seed=5, epoch=1)
    parts = [_batch_indices(100, 24, train=True, seed=5, epoch=1, shard=(r, world)) for r in range(world)]
    assert [[i for p in parts for i in p[k]] for k in range(len(whole))] == whole
    evaluated = [
        i
        for r in range(world)
        for b in _batch_indices(100, 7, train=False, seed=5, epoch=1, shard=(r, world))
        for i in b
    ]
    assert sorted(evaluated) == list(range(100))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Two processes, uninterrupted."""
    work = tmp_path_factory.mktemp("ddp")
    result = torchrun(train_args(work / "run"), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"


def test_two_gloo_processes_match_one_process(ddp_run, reference):
    # Only rank 0 writes: one run directory, nothing else beside it.
    assert sorted(p.name for p in ddp_run.parent.iterdir()) == ["run"]
    run = ddp_run
    settings = yaml.safe_load((run / "args.yaml").read_text())
    assert settings["world_size"] == 2
    assert settings["batch_size"] == settings["global_batch_size"] == 32 and settings["per_process_batch_size"] == 16
    assert_losses_match(run, reference)
    # Each rank evaluated half of the test split; the all-reduced figures are those of the whole split, as one
    # process evaluating the same weights finds them.
    with open(run / "summary.csv") as handle:
        last_row = list(csv.DictReader(handle))[-1]
    single_eval = evaluate_checkpoint(
        run / "last.pt",
        f"cifar10:{shared_file(SUBSET)}",
        split="val",
        batch_size=100,
        device="cpu",
        workers=0,
        amp=False,
    )
    assert single_eval["images"] == 1017
    assert float(last_row["val_top1"]) == pytest.approx(single_eval["top1"], abs=1e-9)
    assert float(last_row["val_top5"]) == pytest.approx(single_eval["top5"], abs=1e-9)
    state = load_checkpoint(run / "last.pt")
    assert not any(key.startswith("module.") for key in state["model"])  # a plain single-process checkpoint
    # Each rank draws its own random numbers (its dropout masks), and a resume gives each its own back.
    per_rank = state["rng_per_rank"]
    assert len(per_rank) == 2 and torch.equal(per_rank[0]["cpu"], state["rng"]["cpu"])
    assert not torch.equal(per_rank[0]["cpu"], per_rank[1]["cpu"])
    model = build_model_from_checkpoint(state).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("resume_with", [1, 2])
def test_a_failing_rank_ends_the_job_and_the_run_resumes(tmp_path, reference, ddp_run, fault_script, resume_with):
    run = tmp_path / "run"
    # Rank 1 raises in its 5th optimizer step (epoch 2, step 2): torchrun must stop rank 0 too and report
    # rank 1's error, not hang.
    result = torchrun(train_args(run), cwd=tmp_path, script=fault_script, fail_at=5)
    assert result.returncode != 0
    assert "injected fault on rank 1" in result.stdout + result.stderr
    assert load_checkpoint(run / "last.pt")["step"] == 1  # --checkpoint-every 2: written after global step 4
    resume = ["train", "--resume", str(run), "--quiet"]
    resumed = single(resume, cwd=tmp_path) if resume_with == 1 else torchrun(resume, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_losses_match(run, reference)
    if resume_with == 2:
        # Same process count: every rank gets its own position, weights and random numbers back, so the
        # interrupted run's steps are those of the uninterrupted one to the last printed digit.
        assert [row["loss"] for row in step_rows(run)] == [row["loss"] for row in step_rows(ddp_run)]


def test_torchrun_resumes_a_single_process_run(tmp_path, reference, fault_script):
    run = tmp_path / "run"
    failed = single(train_args(run), cwd=tmp_path, script=fault_script, fail_at=5)
    assert failed.returncode != 0 and "injected fault" in failed.stderr
    result = torchrun(["train", "--resume", str(run), "--quiet"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_losses_match(run, reference)
    assert len(step_rows(run)) == EPOCHS * STEPS


def test_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path):
    # Through the --nproc shortcut, which execs torchrun.
    result = single([*train_args(tmp_path / "run", "--batch-size", "31"), "--nproc", "2"], cwd=tmp_path)
    assert result.returncode != 0
    assert "--batch-size 31 is the global batch and must split evenly over 2 processes" in result.stderr
    assert not (tmp_path / "run").exists()


def test_sync_bn_on_cpu_is_refused_before_any_work(tmp_path):
    from lightnets.train.config import TrainConfig
    from lightnets.train.loop import train

    config = TrainConfig(model=MODEL, data=f"cifar10:{shared_file(SUBSET)}", device="cpu", sync_bn=True)
    with pytest.raises(ValueError, match="--sync-bn needs CUDA"):
        train(config)


def test_nproc_is_torchrun_for_this_machine(tmp_path, monkeypatch):
    from lightnets.cli.main import _without_nproc, main

    assert _without_nproc(["train", "--nproc", "2", "--epochs", "1", "--nproc=3"]) == ["train", "--epochs", "1"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--nproc", "2", "--out", str(tmp_path / "run")]) == 2  # already under torchrun


def test_a_rank_whose_whole_slice_is_unreadable_still_takes_part(tmp_path):
    # Without a stand-in batch that rank would skip the step while its peer waits in the gradient all-reduce.
    from PIL import Image

    from lightnets.data import load_dataset

    root = tmp_path / "data"
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("val", 2)):
        for label in ("ants", "bees"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                pixels = torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8, generator=generator).numpy()
                Image.fromarray(pixels).save(root / split / label / f"{index}.png")
    samples = load_dataset(f"folder:{root}", input_size=32).train.samples
    seed = 2
    rank1_first_step = _batch_indices(len(samples), 8, train=True, seed=seed, epoch=0, shard=(1, 2))[0]
    for index in rank1_first_step:
        samples[index][0].write_bytes(b"not an image")
    work = tmp_path / "work"
    work.mkdir()
    args = ["train", "--model", MODEL, "--data", f"folder:{root}", "--input-size", "32", "--epochs", "1"]
    args += ["--batch-size", "8", "--seed", str(seed), "--workers", "0", "--quiet", "--out", str(work / "run")]
    result = torchrun(args, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work / "run" / "results.json").read_text())
    # Rank 1's unreadable files, gathered into rank 0's report.
    assert report["skipped_images"] == 4 and report["world_size"] == 2
    assert sorted(report["skipped_image_files"]) == sorted(str(samples[i][0]) for i in rank1_first_step)

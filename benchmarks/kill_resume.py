"""SIGKILL a CPU training run at random moments, resume it each time, and compare with an uninterrupted run.

    nice -n 19 .venv/bin/python benchmarks/kill_resume.py --json docs/results/kill_resume.json

First an uninterrupted reference run (``lightnets train --deterministic`` in a subprocess, a tiny model on the
CIFAR-10 subset) is timed: how long until its loop starts (``args.yaml`` appears just before the first step)
and how long in all. Then the same run is started again and SIGKILLed after a random delay (seeded), then
resumed with ``lightnets train --resume`` and killed again, ``--kills`` times, then resumed to completion.
Each delay is drawn from U(0.5 x set-up, set-up + 2 x remaining / (kills left + 1)), where remaining is the
reference's loop time scaled by the steps left after the last checkpoint: some kills land during start-up,
most in the loop (mid-step, mid-evaluation or mid-checkpoint-write), spread over the whole run, and the run
still has work left at the last one.

Two more resumes (``--kill-points``) kill themselves at chosen moments instead: during evaluation, and in the
middle of a checkpoint write (half a file in the temporary, then SIGKILL).

It prints how many resumes completed (a resume completes when it either was still running when the next
kill came or, the last one, finished with exit status 0) and whether the final last.pt is bitwise equal to
the reference's: every tensor of the weights, the EMA weights and the optimizer's momenta, and the history.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cifar-10-subset-python.tar.gz"


# A resume that SIGKILLs itself at a chosen moment, instead of after a random delay: during evaluation (at its second
# batch) or during a checkpoint write (half a file written into the temporary, then the kill). The library is
# patched from outside, as a test would; nothing in lightnets knows about it.
KILL_AT = """
import os, signal, sys
point, argv = sys.argv[1], sys.argv[2:]
if point == "evaluation":
    import lightnets.train.loop as loop
    real_evaluate = loop.evaluate
    def evaluate(model, batch_iter, *args, **kwargs):
        def batches():
            for index, batch in enumerate(batch_iter):
                if index == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield batch
        return real_evaluate(model, batches(), *args, **kwargs)
    loop.evaluate = evaluate
elif point == "checkpoint-write":
    import torch
    def save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04" + bytes(4096))  # the start of a zip archive, cut short
        handle.flush()
        os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save
from lightnets.cli import main
sys.exit(main(argv))
"""
KILL_POINTS = ("evaluation", "checkpoint-write")


def train_command(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "lightnets", "train"),
        *("--model", args.model, "--data", f"cifar10:{args.data}", "--out", str(out)),
        *("--epochs", str(args.epochs), "--batch-size", str(args.batch_size)),
        *("--max-steps-per-epoch", str(args.steps), "--checkpoint-every", str(args.checkpoint_every)),
        *("--val-split", "0.02", "--workers", "0", "--ema", "--deterministic", "--quiet"),
    ]


def start(command: list[str], log: Path, threads: int) -> subprocess.Popen:
    # Every process of the comparison gets the same thread count (a resume also restores the one its run used).
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads)}
    with open(log, "a") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    _children.append(process)
    return process


def position(run_dir: Path) -> tuple[int, int] | None:
    """(completed epochs, steps into the next) of the run's last.pt, or None before its first checkpoint."""
    path = run_dir / "last.pt"
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["epoch"], state["step"]


def compare(reference: Path, resumed: Path) -> dict[str, Any]:
    """How many tensors of the two last.pt files are bitwise equal, and which differ."""
    a = torch.load(reference, map_location="cpu", weights_only=True)
    b = torch.load(resumed, map_location="cpu", weights_only=True)
    pairs = [
        (f"{key}.{name}", tensor, b[key].get(name))
        for key in ("train_model", "model")
        for name, tensor in a[key].items()
    ]
    for index, state in a["optimizer"]["state"].items():
        pairs.append(
            (f"optimizer.{index}.momentum", state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
        )
    differing = [name for name, x, y in pairs if y is None or not torch.equal(x, y)]
    same_history = [(r["train_loss"], r["val_loss"], r["val_top1"]) for r in a["history"]] == [
        (r["train_loss"], r["val_loss"], r["val_top1"]) for r in b["history"]
    ]
    return {"tensors": len(pairs), "differing": differing, "history_equal": same_history}


def main() -> int:
    # SIGTERM would otherwise end this script without its finally, leaving a training process behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run()
    finally:
        for process in _children:
            if process.poll() is None:
                process.kill()


_children: list[subprocess.Popen] = []


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill delays")
    parser.add_argument("--model", default="asymmnet_small_x0_35_cifar")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60, help="--max-steps-per-epoch")
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of every training process (default 1: on a shared machine OpenMP's barriers stall "
        "whenever another process takes a core, and this figure is about equality, not speed)",
    )
    parser.add_argument(
        "--kill-points",
        default=",".join(KILL_POINTS),
        help="resumes that kill themselves at these moments, besides the random kills: evaluation, checkpoint-write "
        "(comma-separated; '' for none). They take the 2nd, 4th, ... resume.",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", type=Path, help="keep both run directories here (default: a temporary folder)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    reference_dir, killed_dir, log = work / "reference", work / "killed", work / "train.log"
    for folder in (reference_dir, killed_dir):
        shutil.rmtree(folder, ignore_errors=True)

    # ---- the uninterrupted run
    began = time.monotonic()
    process = start(train_command(args, reference_dir), log, args.threads)
    while not (reference_dir / "args.yaml").exists() and process.poll() is None:
        time.sleep(0.01)
    setup_s = time.monotonic() - began
    if process.wait() != 0:
        print(f"the reference run failed; see {log}", file=sys.stderr)
        return 1
    total_s = time.monotonic() - began
    loop_s = total_s - setup_s
    print(f"reference: {total_s:.1f} s ({setup_s:.1f} s set-up, {loop_s:.1f} s loop)", flush=True)

    # ---- the same run, killed and resumed
    rng = random.Random(args.seed)
    attempts: list[dict[str, Any]] = []
    resumes_ok = 0
    killed_began = time.monotonic()
    points = [point for point in args.kill_points.split(",") if point]
    unknown = sorted(set(points) - set(KILL_POINTS))
    if unknown:
        parser.error(f"unknown --kill-points {', '.join(unknown)}; choose from {', '.join(KILL_POINTS)}")
    targeted = {2 * (index + 1): point for index, point in enumerate(points)}  # attempt -> kill point
    random_kills_left = args.kills
    for attempt in range(args.kills + len(points) + 1):
        resume = (killed_dir / "args.yaml").exists()  # else it died before it began: start it again
        resume_args = ["train", "--resume", str(killed_dir), "--quiet"]
        before = position(killed_dir)
        point = targeted.get(attempt) if resume else None
        if point is not None:
            command = [sys.executable, "-c", KILL_AT, point, *resume_args]
        else:
            command = [sys.executable, "-m", "lightnets", *resume_args] if resume else train_command(args, killed_dir)
        process = start(command, log, args.threads)
        done_steps = 0 if before is None else before[0] * args.steps + before[1]
        remaining_s = loop_s * (1 - done_steps / (args.epochs * args.steps))
        delay = None
        if point is None and random_kills_left:
            delay = rng.uniform(0.5 * setup_s, setup_s + 2 * remaining_s / (random_kills_left + 1))
            random_kills_left -= 1
        try:
            status = process.wait(timeout=delay)
            killed = status == -signal.SIGKILL  # a targeted resume kills itself
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            status = process.wait()
            killed = True
        after = position(killed_dir)
        record = {
            "attempt": attempt,
            "resume": resume,
            "kill_point": point,
            "kill_after_s": None if delay is None else round(delay, 2),
            "killed": killed,
            "exit_status": status,
            "from_position": before,
            "to_position": after,
        }
        attempts.append(record)
        how = f"SIGKILL during {point}" if point else f"SIGKILL after {delay:5.1f} s" if killed else ""
        print(
            f"{'resume' if resume else 'start '} {attempt:2d}: "
            + (how if killed else f"exited with status {status}")
            + f", last.pt at (epoch, step) {before} -> {after}",
            flush=True,
        )
        if resume and (killed or status == 0):
            resumes_ok += 1
        if not killed:
            break
    kills = sum(a["killed"] for a in attempts)
    resumes = sum(a["resume"] for a in attempts)
    finished = attempts[-1]["exit_status"] == 0 and not attempts[-1]["killed"]
    comparison = compare(reference_dir / "last.pt", killed_dir / "last.pt") if finished else None
    equal = bool(comparison and not comparison["differing"] and comparison["history_equal"])

    print()
    print(f"SIGKILLs delivered:            {kills}")
    print(f"resumes completed:             {resumes_ok}/{resumes}")
    print(f"killed run finished:           {'yes' if finished else 'no'}")
    if comparison:
        print(
            f"final weights vs uninterrupted: {'bitwise equal' if equal else 'DIFFERENT'} "
            f"({comparison['tensors'] - len(comparison['differing'])}/{comparison['tensors']} tensors equal, "
            f"history {'equal' if comparison['history_equal'] else 'different'})"
        )
    print(f"wall time: reference {total_s:.1f} s, killed-and-resumed {time.monotonic() - killed_began:.1f} s")

    if args.json:
        figures = {
            "command": "nice -n 19 .venv/bin/python benchmarks/kill_resume.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "train_command": " ".join(train_command(args, Path("RUN_DIR"))[1:]).replace("-m lightnets", "lightnets"),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "training_threads": args.threads,
            },
            "kills": kills,
            "resumes": resumes,
            "resumes_completed": resumes_ok,
            "finished": finished,
            "bitwise_equal": equal,
            "comparison": comparison,
            "reference_seconds": {"total": round(total_s, 2), "setup": round(setup_s, 2), "loop": round(loop_s, 2)},
            "attempts": attempts,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if equal and resumes_ok == resumes and kills == args.kills + len(points) else 1


if __name__ == "__main__":
    sys.exit(main())

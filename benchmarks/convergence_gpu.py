"""Every family on full CIFAR-10 on one GPU, bf16 and channels_last, for the epochs one lease allows.

A lent GPU machine gives a session 15 minutes, its start-up included. A small CIFAR model leaves most of an H200
idle (each training process is bound by launching its kernels, not by the GPU's arithmetic), so all families
train at once, one process each, and the GPU's time is shared between them. ``--probe`` first trains each for
two epochs of PROBE_STEPS steps (each with a full evaluation), all at once as in the real run, and prints the
epochs that fit a given number of minutes; the real run takes those epochs (``--epochs``) and a deadline
(``--minutes``), at which any run still going is stopped at its next step with its finished epochs kept
(re-running the command resumes it).

The recipe is lightnets' default (SGD + Nesterov, lr 0.1 x batch / 256 with one warm-up epoch then cosine to 0,
weight decay 5e-4 off BN and biases, label smoothing 0.1, random crop + flip done on the GPU), at batch 512, seed 0,
with every family's stable init. Not a test.

    python benchmarks/convergence_gpu.py --data /tmp/data --probe --minutes 6      # size the epochs
    python benchmarks/convergence_gpu.py --data /tmp/data --epochs shufflenet=60,parnet=20 --minutes 6.5
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

# benchmarks/ is this script's folder, so its first import path
from convergence import FULL, Run, add_wall_seconds, read_run, train_command

GPU_MODELS = [
    "shufflenet_v1_g3_x1_0_cifar",
    "spgnet_s2p6_cifar",
    "asymmnet_large_x1_0_cifar",
    "parnet_s_cifar",
    "tv:resnet18",  # the ImageNet form at 32x32, as `--model tv:resnet18` trains it
]
GPU_FLAGS = ["--batch-size", "512", "--device", "cuda", "--amp", "--channels-last"]
PROBE_STEPS = int(os.environ.get("LIGHTNETS_PROBE_STEPS", "30"))
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
PROBE_CONTENTION = 3.0  # how much slower a full run trained than its probe, at worst, all five runs at once


def gpu_runs(data: str, epochs: dict[str, int], probe: bool, device: str = "cuda") -> list[Run]:
    """One run per model; ``epochs`` maps a fragment of a model's name to its epochs (200 where none matches).
    ``device`` other than cuda is for trying the script out on a machine without one."""
    runs = []
    gpu_flags = [device if flag == "cuda" else flag for flag in GPU_FLAGS]
    for model in GPU_MODELS:
        count = 2 if probe else next((n for fragment, n in epochs.items() if fragment in model), 200)
        flags = [*gpu_flags, "--max-steps-per-epoch", str(PROBE_STEPS)] if probe else gpu_flags
        model_args = {"zero_init_residual": True} if model == "tv:resnet18" else {}
        name = f"{model.replace(':', '-')}-full-{'probe' if probe else f'{count}ep'}-gpu"
        runs.append(Run(name, model, f"cifar10:{data}", count, "after", model_args, flags))
    return runs


def run_all_at_once(runs: list[Run], runs_dir: Path, minutes: float) -> None:
    """Start every run; at ``minutes`` send SIGINT to those still going (each stops at its next step, saving
    last.pt), so the table shows the epochs they finished. Each run's output goes to RUNS_DIR/<run>.log."""
    lightnets = [sys.executable, "-m", "lightnets"]
    runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    going = {}
    for run in runs:
        run_dir = runs_dir / run.name
        if (run_dir / "results.json").is_file():
            continue
        command = train_command(run, run_dir, lightnets)
        print(" ".join(command), flush=True)
        log = open(runs_dir / f"{run.name}.log", "a")  # noqa: SIM115 (closed once the process has ended)
        going[run.name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
    deadline = started + minutes * 60
    ended: dict[str, float] = {}
    while len(ended) < len(going):
        for name, (process, _) in going.items():
            if name not in ended and process.poll() is not None:
                ended[name] = time.perf_counter()
        if time.perf_counter() > deadline:
            for name, (process, _) in going.items():
                if process.poll() is None:
                    print(f"{name}: out of time, stopping it at its next step", flush=True)
                    process.send_signal(signal.SIGINT)
            deadline = math.inf
        time.sleep(1)
    for name, (process, log) in going.items():
        log.close()
        if (runs_dir / name).is_dir():
            add_wall_seconds(runs_dir / name, ended[name] - started)
        if process.returncode != 0:
            print(f"{name}: exited with {process.returncode}; see {runs_dir / (name + '.log')}", flush=True)


def read_all(runs: list[Run], runs_dir: Path) -> list[dict]:
    rows = []
    for run in runs:
        try:
            row = read_run(run, runs_dir / run.name)
        except (OSError, ValueError, KeyError, ZeroDivisionError) as error:  # a run that never finished an epoch
            log = runs_dir / f"{run.name}.log"
            tail = log.read_text().strip().splitlines()[-3:] if log.is_file() else []
            rows.append({"run": run.name, "model": run.model, "failed": f"{error}", "log_tail": tail})
            continue
        row["planned_epochs"] = run.epochs
        row["last_images_per_second"] = round(float(_last_epoch(runs_dir / run.name)["images_per_second"]), 1)
        row["best_top1"] = max(row["test_top1"])
        row["best_epoch"] = row["test_top1"].index(row["best_top1"]) + 1
        rows.append(row)
    return rows


def _last_epoch(run_dir: Path) -> dict:
    with open(run_dir / "summary.csv") as handle:
        return list(csv.DictReader(handle))[-1]


def fitted_epochs(probe_rows: list[dict], minutes: float) -> dict[str, int]:
    """Epochs per model that fit ``minutes`` at the probe's speed, all models training at once (the slowest sets
    the pace of the shared GPU only while it runs; a conservative fit, since the faster ones finish first)."""
    fitted = {}
    for row in probe_rows:
        if "failed" in row:
            continue
        # Epoch 2 is past cuDNN's autotuning, but its 30 steps overlap the other runs less than a whole run does:
        # on an H200 (docs/results/gpu.md) the full runs trained 1.3x (SPGNet) to 2.8x (ShuffleNet v1) slower.
        speed = row["last_images_per_second"] / PROBE_CONTENTION
        train, evaluate = TRAIN_IMAGES / speed, TEST_IMAGES / (3 * speed)  # a forward pass is about a third of a step
        fitted[row["model"].replace("tv:", "")] = max(1, min(200, int(minutes * 60 / (train + evaluate))))
    return fitted


def markdown(rows: list[dict], header: str, command: str) -> str:
    lines = [f"# Full CIFAR-10 on a GPU, every family at once\n\nProduced by `{command}`. {header}\n"]
    cols = ["model", "epochs (done / planned)", "top-1 last", "top-1 best (epoch)", "test loss last"]
    cols += ["max loss, epoch 1", "train img/s", "wall (min)"]
    lines += ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for row in rows:
        if "failed" in row:
            lines.append(f"| `{row['model']}` | failed: {row['failed']} |" + " |" * (len(cols) - 2))
            continue
        cells = [f"`{row['model']}`", f"{row['epochs']} / {row['planned_epochs']}", f"{row['test_top1'][-1]:.2f}"]
        cells += [f"{row['best_top1']:.2f} ({row['best_epoch']})", f"{row['test_loss'][-1]:.3f}"]
        cells += [f"{row['max_loss_epoch1']:.2f}", f"{row['images_per_second']:.0f}", f"{row['wall_seconds'] / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("\nPer-epoch test top-1 of each run is in the JSON beside this page (`test_top1`).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=FULL.removeprefix("cifar10:"), help="CIFAR-10 archive or folder")
    parser.add_argument("--probe", action="store_true", help=f"2 epochs of {PROBE_STEPS} steps per model")
    parser.add_argument("--epochs", default="", help="fragment=N,... (e.g. shufflenet=60,parnet=20; default 200)")
    parser.add_argument("--minutes", type=float, default=60.0, help="deadline for all runs (or the fit, with --probe)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "convergence_gpu")
    parser.add_argument("--out", type=Path, default=Path("docs") / "results" / "convergence_gpu")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to try the script out")
    args = parser.parse_args()
    epochs = {key: int(value) for key, value in (item.split("=") for item in args.epochs.split(",") if item)}
    runs = gpu_runs(args.data, epochs, args.probe, args.device)
    run_all_at_once(runs, args.runs_dir, args.minutes if not args.probe else 10.0)
    rows = read_all(runs, args.runs_dir)
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    meta = {"device": where, "torch": torch.__version__, "command": " ".join(sys.argv)}
    if args.probe:
        fitted = fitted_epochs(rows, args.minutes)
        print(json.dumps({**meta, "fitted_epochs": fitted, "rows": rows}, indent=2))
        print("--epochs " + ",".join(f"{model}={count}" for model, count in fitted.items()))
        return
    header = (
        f"Measured on {where}, torch {torch.__version__}; all runs at once, one process each, with a deadline of "
        f"{args.minutes:g} minutes. Recipe: lightnets' default at batch 512, seed 0, bf16 autocast, channels_last."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/convergence_gpu.py " + " ".join(sys.argv[1:])
    args.out.with_suffix(".md").write_text(markdown(rows, header, command))
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

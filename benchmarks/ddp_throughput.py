"""Training images/s of one process against N data-parallel processes (torchrun), same global batch.

Each configuration is a real ``lightnets train`` run on the CIFAR-10 subset: one process using every core,
then ``--nproc N`` with the cores split between the processes (Gloo on CPU), or one GPU per process with
``--device cuda``. Every run trains 2 epochs of ``--steps`` steps; the figure is epoch 2's images/s from
``summary.csv`` (training steps only, after the first epoch's warm-up). Runs alternate between the
configurations for ``--rounds`` rounds and the median is reported, so drift on a shared machine hits both.

    python benchmarks/ddp_throughput.py                       # CPU: 1 vs 2 processes
    python benchmarks/ddp_throughput.py --device cuda --nprocs 1,2,4,8 --batch-size 1024
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lightnets.measure.latency import device_name

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar-10-subset-python.tar.gz"
MODELS = ["asymmnet_small_x0_35_cifar", "shufflenet_v1_g3_x0_5_cifar", "spgnet_s2p6_cifar"]


def run_once(model: str, nproc: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    cores = os.cpu_count() or 1
    command = [sys.executable, "-m", "lightnets", "train", "--model", model, "--data", f"cifar10:{args.data}"]
    command += ["--epochs", "2", "--max-steps-per-epoch", str(args.steps), "--batch-size", str(args.batch_size)]
    command += ["--device", args.device, "--workers", "0", "--quiet", "--out", str(out)]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    # CPU: the cores are shared out, so 1 process x all cores is compared with N processes x cores/N.
    threads = max(1, cores // nproc) if args.device == "cpu" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {
        "images_per_second": float(rows[-1]["images_per_second"]),
        "wall_seconds": time.perf_counter() - started,
        "threads_per_process": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--nprocs", default="1,2", help="process counts, comma-separated; the first is the baseline")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (the recipe's default)")
    parser.add_argument("--steps", type=int, default=6, help="steps per epoch; epoch 2 is measured")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=SUBSET)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "ddp_throughput.json")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} is missing: put the CIFAR-10 subset archive there or pass --data")
    nprocs = [int(n) for n in args.nprocs.split(",")]
    models = args.models.split(",")

    samples: dict[tuple[str, int], list[dict[str, float]]] = {(m, n): [] for m in models for n in nprocs}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for model in models:
                # Alternate the order each round, so neither configuration always runs first.
                for nproc in nprocs if round_index % 2 == 0 else nprocs[::-1]:
                    out = Path(scratch) / f"{model}-{nproc}-{round_index}"
                    sample = run_once(model, nproc, args, out)
                    samples[(model, nproc)].append(sample)
                    print(
                        f"round {round_index + 1} {model} x{nproc}: {sample['images_per_second']:.1f} img/s", flush=True
                    )

    rows = []
    for model in models:
        base = statistics.median(s["images_per_second"] for s in samples[(model, nprocs[0])])
        for nproc in nprocs:
            values = [s["images_per_second"] for s in samples[(model, nproc)]]
            rows.append(
                {
                    "model": model,
                    "processes": nproc,
                    "threads_per_process": samples[(model, nproc)][0]["threads_per_process"],
                    "images_per_second_median": statistics.median(values),
                    "images_per_second_all": values,
                    "speedup_vs_first": statistics.median(values) / base,
                }
            )
        report = {
            "device": args.device,
            "device_name": device_name(args.device),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "global_batch_size": args.batch_size,
            "steps_per_epoch": args.steps,
            "rounds": args.rounds,
            "data": str(args.data.name),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "rows": rows,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'model':<30} {'procs':>5} {'thr/proc':>8} {'img/s':>8} {'x':>6}")
    for row in rows:
        print(
            f"{row['model']:<30} {row['processes']:>5} {row['threads_per_process']:>8} "
            f"{row['images_per_second_median']:>8.1f} {row['speedup_vs_first']:>6.2f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

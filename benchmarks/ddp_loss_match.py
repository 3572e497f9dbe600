"""Per-step losses of one process against N torchrun processes, same seed and global batch.

The figures behind the tolerance in tests/test_distributed.py: by default its exact settings (AsymmNet-S x0.35
on the CIFAR-10 subset, global batch 32, lr 0.05 without warmup, 2 epochs x 3 steps, seed 3). Prints both
runs' losses from steps.csv and their relative gap per step, and for scale the gap of one process trained on
another seed's batches (``--other-seed``).

    python benchmarks/ddp_loss_match.py
    python benchmarks/ddp_loss_match.py --nproc 2 --steps 20 --batch-size 64
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar-10-subset-python.tar.gz"


def losses(run_dir: Path) -> list[float]:
    with open(run_dir / "steps.csv") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="asymmnet_small_x0_35_cifar")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", default="0.05")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps per epoch")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--other-seed", type=int, default=4, help="a single-process run on this seed, for scale")
    parser.add_argument("--data", type=Path, default=SUBSET)
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} is missing: put the CIFAR-10 subset archive there or pass --data")

    train = [sys.executable, "-m", "lightnets", "train", "--model", args.model, "--data", f"cifar10:{args.data}"]
    train += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", args.lr]
    train += ["--warmup-epochs", "0", "--max-steps-per-epoch", str(args.steps), "--workers", "0", "--quiet"]
    one_process = {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    runs = {
        "single": ([*train, "--seed", str(args.seed)], one_process),
        "multi": ([*train, "--seed", str(args.seed), "--nproc", str(args.nproc)], {}),
        "other": ([*train, "--seed", str(args.other_seed)], one_process),
    }
    with tempfile.TemporaryDirectory() as scratch:
        found = {}
        for name, (command, env) in runs.items():
            out = Path(scratch) / name
            result = subprocess.run([*command, "--out", str(out)], env={**os.environ, **env}, text=True)
            if result.returncode != 0:
                raise SystemExit(f"the {name} run failed (exit {result.returncode}): {' '.join(command)}")
            found[name] = losses(out)
    print(f"{'step':>4} {'1 process':>10} {f'{args.nproc} processes':>12} {'gap %':>7} {'other seed gap %':>17}")
    gaps, other_gaps = [], []
    for step, (a, b, c) in enumerate(zip(found["single"], found["multi"], found["other"]), start=1):
        gaps.append(100 * abs(b / a - 1))
        other_gaps.append(100 * abs(c / a - 1))
        print(f"{step:>4} {a:>10.6f} {b:>12.6f} {gaps[-1]:>7.3f} {other_gaps[-1]:>17.3f}")
    print(f"{args.nproc} processes: largest gap {max(gaps):.3f} %, first step (before any update) {gaps[0]:.3f} %")
    print(f"seed {args.other_seed} in one process: largest gap {max(other_gaps):.3f} %")


if __name__ == "__main__":
    main()

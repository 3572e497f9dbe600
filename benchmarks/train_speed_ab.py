"""Training images/s of two source trees of lightnets, run back to back in turns: a refactor's speed check.

Each round runs the same short ``lightnets train`` once with tree A's ``src`` first on the path and once with
tree B's (who goes first alternates), and reads the run's training images/s from its summary.csv (the mean over
its epochs; the first epoch includes warm-up). A drift of a shared machine then hits both alike, so the ratio of
the medians holds when the absolute figures move. Not a test:

    git worktree add /tmp/before <commit>
    python benchmarks/train_speed_ab.py --a /tmp/before/src --b src --rounds 5
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar-10-subset-python.tar.gz"


def images_per_second(src: Path, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "lightnets", "train", "--model", args.model, "--data", args.data]
        command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", "0", "--quiet"]
        command += ["--max-steps-per-epoch", str(args.steps), "--workers", "0", "--out", str(run), *args.extra]
        env = {**os.environ, "PYTHONPATH": str(src)}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(run / "summary.csv") as handle:
            rows = list(csv.DictReader(handle))
    return statistics.mean(float(row["images_per_second"]) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="src directory of tree A (e.g. before)")
    parser.add_argument("--b", type=Path, required=True, help="src directory of tree B (e.g. after)")
    parser.add_argument("--model", default="shufflenet_v1_g3_x0_5_cifar")
    parser.add_argument("--data", default=f"cifar10:{SUBSET}")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="more train flags, after --")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"A": [], "B": []}
    for index in range(args.rounds):
        for side in ("A", "B") if index % 2 == 0 else ("B", "A"):
            figures[side].append(images_per_second(args.a if side == "A" else args.b, args))
        print(f"round {index + 1}: A {figures['A'][-1]:.1f} img/s, B {figures['B'][-1]:.1f} img/s", flush=True)
    a, b = statistics.median(figures["A"]), statistics.median(figures["B"])
    print(f"median over {args.rounds} rounds: A {a:.1f} img/s, B {b:.1f} img/s, B/A x{b / a:.3f}")
    ratios = [y / x for x, y in zip(figures["A"], figures["B"])]
    print(f"per-round B/A: {', '.join(f'x{r:.3f}' for r in ratios)}")


if __name__ == "__main__":
    main()

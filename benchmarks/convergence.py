"""How well each family learns under one recipe and budget, with the stable init and without it.

Trains one CIFAR form per family plus a well-known baseline with the default recipe (SGD + Nesterov, lr 0.1 x
batch / 256, one warm-up epoch then cosine, wd 5e-4, label smoothing 0.1, crop + flip) and prints, then writes
``OUT.md`` and ``OUT.json``: per-epoch test top-1, the highest step loss of epoch 1, the first step's gradient norm
and the wall time, before (``zero_init_last=False``; torchvision's ``zero_init_residual=False`` for ResNet-18) and
after (the default). Not a test. Each run is a ``lightnets train`` process writing RUNS_DIR/<run>; a finished run is
read back, an interrupted one resumed, so the command can be re-run until it completes.

    python benchmarks/convergence.py                       # the CPU suite: subset 1 and 10 epochs, full 1 epoch
    python benchmarks/convergence.py --only spgnet         # the runs whose name contains "spgnet"
    python benchmarks/convergence.py --notes benchmarks/convergence_notes.md   # the page with what this run showed

The GPU suite (every family on full CIFAR-10 at once, bf16, channels_last) is benchmarks/convergence_gpu.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from lightnets.device import describe_cpu_features
from lightnets.measure.latency import device_name

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SUBSET = f"cifar10:{SHARED / 'cifar-10-subset-python.tar.gz'}"
FULL = f"cifar10:{SHARED / 'cifar-10-jpeg-python.tar.gz'}"
ONE_EPOCH_CASES = ("shufflenet_v1_g3_x0_5_cifar", "spgnet_s2p6_cifar")  # the two cases the issue reported
FULL_CASES = ("shufflenet_v1_g3_x0_5_cifar",)
PARNET_CPU_WIDTHS = [32, 64, 128, 512]  # ParNet-S's structure at 200 M MACs: the registered 1.7 G trains at ~12 img/s


@dataclass
class Run:
    name: str
    model: str
    data: str
    epochs: int
    init: str  # "after": the default stable init; "before": every BN weight at 1
    model_args: dict = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def arguments(self) -> list[str]:
        args = ["--model", self.model, "--data", self.data, "--epochs", str(self.epochs)]
        for key, value in self.model_args.items():
            args += ["--model-arg", f"{key}={json.dumps(value)}"]
        return args + self.flags


def _init_args(model: str, init: str) -> dict:
    if init == "after" or model.startswith("parnet"):  # ParNet has no zero_init_last (see its docstring)
        return {"zero_init_residual": True} if model == "tv:resnet18" else {}
    return {"zero_init_residual": False} if model == "tv:resnet18" else {"zero_init_last": False}


def cpu_suite() -> list[Run]:
    models = [
        ("shufflenet_v1_g3_x0_5_cifar", {}),
        ("spgnet_s2p6_cifar", {}),
        ("asymmnet_small_x0_35_cifar", {}),
        ("parnet_s_cifar", {"widths": PARNET_CPU_WIDTHS}),
        ("tv:resnet18", {}),  # the ImageNet form at 32x32 (a 1x1 final map): what `--model tv:resnet18` trains
    ]
    runs = []
    # The budget one 2-core session affords (about 90 minutes of one core per session): the two 1-epoch
    # cases, 10 epochs on the subset for every model, and 1 epoch of the full CIFAR-10 for the model whose loss
    # diverged. Full-data training of every family is on the GPU page (docs/results/gpu.md).
    plan = [("subset", SUBSET, 1, ONE_EPOCH_CASES), ("subset", SUBSET, 10, None), ("full", FULL, 1, FULL_CASES)]
    for data_name, data, epochs, only in plan:
        for model, model_args in models:
            if only is not None and model not in only:
                continue
            inits = ("after",) if model.startswith("parnet") else ("before", "after")
            for init in inits:
                name = f"{model.replace(':', '-')}-{data_name}-{epochs}ep-{init}"
                args = {**model_args, **_init_args(model, init)}
                runs.append(Run(name, model, data, epochs, init, args, ["--batch-size", "128"]))
    # bf16 is the CPU default where the CPU has native bf16; the same runs in float32 show whether accuracy holds.
    for model in ("shufflenet_v1_g3_x0_5_cifar", "spgnet_s2p6_cifar"):
        name = f"{model}-subset-10ep-after-fp32"
        runs.append(Run(name, model, SUBSET, 10, "after", {}, ["--batch-size", "128", "--no-amp"]))
    return runs


def train_command(run: Run, run_dir: Path, lightnets: list[str]) -> list[str]:
    """``lightnets train`` for ``run``: resuming its last.pt when an earlier attempt left one."""
    if (run_dir / "last.pt").is_file():
        return [*lightnets, "train", "--resume", str(run_dir), "--quiet"]
    return [*lightnets, "train", *run.arguments(), "--seed", "0", "--out", str(run_dir), "--quiet"]


def add_wall_seconds(run_dir: Path, seconds: float) -> None:
    """Add to the run's wall time (a resumed run's attempts add up)."""
    wall = run_dir / "wall_seconds"
    before = float(wall.read_text()) if wall.is_file() else 0.0
    wall.write_text(f"{before + seconds:.1f}\n")


def run_one(run: Run, runs_dir: Path, lightnets: list[str]) -> Path:
    run_dir = runs_dir / run.name
    if (run_dir / "results.json").is_file():
        return run_dir
    command = train_command(run, run_dir, lightnets)
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    add_wall_seconds(run_dir, time.perf_counter() - start)
    return run_dir


def read_run(run: Run, run_dir: Path) -> dict:
    settings = yaml.safe_load((run_dir / "args.yaml").read_text())
    with open(run_dir / "summary.csv") as handle:
        epochs = list(csv.DictReader(handle))
    with open(run_dir / "steps.csv") as handle:
        steps = list(csv.DictReader(handle))
    first_epoch = [float(row["loss"]) for row in steps if row["epoch"] == "1"]
    return {
        "run": run.name,
        "model": run.model,
        "model_args": run.model_args,
        "data": run.data,
        "init": run.init,
        "epochs": len(epochs),
        "batch_size": settings["batch_size"],
        "amp": settings["amp"],
        "device": settings["device"],
        "test_top1": [round(float(row["val_top1"]), 2) for row in epochs],
        "test_loss": [round(float(row["val_loss"]), 4) for row in epochs],
        "max_loss_epoch1": round(max(first_epoch), 3),
        "first_grad_norm": round(float(steps[0]["grad_norm"]), 3),
        "images_per_second": round(sum(float(r["images_per_second"]) for r in epochs) / len(epochs), 1),
        "wall_seconds": float((run_dir / "wall_seconds").read_text()),
    }


def _shown_epochs(count: int) -> list[int]:
    return sorted({1, 2, 3, 5, 10, count} & set(range(1, count + 1)))


def markdown(rows: list[dict], header: str, command: str) -> str:
    lines = [f"# Convergence under one recipe\n\nProduced by `{command}`. {header}\n"]
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        data = "subset" if "subset" in row["data"] else "full"
        groups.setdefault((data, row["epochs"]), []).append(row)
    for (data, epochs), members in groups.items():
        title = "full CIFAR-10 (50,000 / 10,000)"
        if data == "subset":
            title = "exact-pixel subset (5,085 train / 1,017 test)"
        shown = _shown_epochs(epochs)
        lines.append(f"\n## {title}, {epochs} epoch{'s' * (epochs > 1)}\n")
        cols = ["model", "init", "precision", "max loss, epoch 1", "grad norm, step 1"]
        cols += [f"top-1 ep {e}" for e in shown] + ["img/s", "wall (min)"]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|---|---|---|" + "---:|" * (len(cols) - 3))
        for row in members:
            widths = row["model_args"].get("widths")
            model = row["model"] + (f" (widths={widths})" if widths else "")
            cells = [f"`{model}`", row["init"], "bf16" if row["amp"] else "fp32", f"{row['max_loss_epoch1']:.2f}"]
            cells += [f"{row['first_grad_norm']:.2f}"] + [f"{row['test_top1'][e - 1]:.2f}" for e in shown]
            cells += [f"{row['images_per_second']:.0f}", f"{row['wall_seconds'] / 60:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run only the runs whose name contains this")
    parser.add_argument("--notes", type=Path, help="Markdown appended to the page (what the run shows)")
    parser.add_argument("--reverse", action="store_true", help="last run first: a second process on another core")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "convergence")
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/convergence")
    args = parser.parse_args()
    runs = cpu_suite()
    if args.only:
        runs = [run for run in runs if args.only in run.name]
    if args.reverse:
        runs.reverse()
    lightnets = [sys.executable, "-m", "lightnets"]
    rows = []
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        # Two processes may share the suite (one --reverse): each run is claimed by a lock file, left in place
        # if its process is killed (delete RUNS_DIR/<run>.lock to let a re-run resume it).
        lock = args.runs_dir / f"{run.name}.lock"
        if not (args.runs_dir / run.name / "results.json").is_file():
            try:
                lock.touch(exist_ok=False)
            except FileExistsError:
                print(f"{run.name}: taken by another process ({lock}), skipped here", flush=True)
                continue
        rows.append(read_run(run, run_one(run, args.runs_dir, lightnets)))
        lock.unlink(missing_ok=True)
        row = rows[-1]
        print(
            f"{run.name}: top-1 {row['test_top1'][-1]:.2f}, max loss in epoch 1 {row['max_loss_epoch1']:.2f}, "
            f"first grad norm {row['first_grad_norm']:.2f}, {row['wall_seconds'] / 60:.1f} min",
            flush=True,
        )
    where = f"{device_name('cpu')} ({describe_cpu_features()})"
    threads = torch.get_num_threads()
    header = (
        f"Measured on {where}, {threads} threads, torch {torch.__version__}. Default recipe at batch "
        f"{rows[0]['batch_size'] if rows else '?'}, seed 0; before = every residual branch's last BN weight starts "
        "at 1 (`zero_init_last=False`, for ResNet-18 torchvision's `zero_init_residual=False`), after = the default."
    )
    out = args.out or ROOT / "docs" / "results" / "convergence"
    command = "python benchmarks/convergence.py"
    if not args.only and len(rows) == len(runs):
        rows.sort(key=lambda row: [run.name for run in runs].index(row["run"]))
        notes = "\n" + args.notes.read_text() if args.notes else ""
        out.with_suffix(".md").write_text(markdown(rows, header, command) + notes)
        meta = {"device": where, "threads": threads, "torch": torch.__version__}
        out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    if any(not math.isfinite(r["max_loss_epoch1"]) for r in rows):
        print("note: a run had a non-finite loss in epoch 1")


if __name__ == "__main__":
    main()

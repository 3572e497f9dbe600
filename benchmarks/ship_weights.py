"""Ship trained weights in the package: the safetensors file, its manifest entry, and docs/results/pretrained.md.

For each run directory (written by `lightnets train` on CIFAR-10 to the end of its schedule), this exports the
end-of-schedule weights (`last.pt`: the schedule's own end, not the epoch chosen on the test split) to
`src/lightnets/weights/NAME.cifar10.safetensors` with `lightnets export` (a format change; the tensors are the
run's, fp32), evaluates that file on the CIFAR-10 test split through `lightnets.evaluate`, and writes the
manifest entry `create_model(NAME, pretrained=True)` reads: file, sha256, dataset, top-1, recipe, epochs, the
hardware and command. The page gives each run's command, epochs, wall time, img/s, CPU features, final and best
top-1, and the curve (docs/results/pretrained_curves.png).

    python benchmarks/ship_weights.py runs/shipped/asymmnet_small_x0_35_cifar \\
        runs/shipped/shufflenet_v1_g3_x0_5_cifar \\
        --data cifar10:../shared/data/cifar-10-jpeg-python.tar.gz

Not a test: it writes files and prints what it measured. tests/test_pretrained.py checks every shipped file.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import lightnets
from lightnets.device import describe_cpu_features, device_name
from lightnets.files import atomic_write
from lightnets.models.pretrained import WEIGHTS_DIR, sha256_of

MAX_BYTES = 20 * 2**20
RECIPE = (
    "lightnets train defaults: SGD + Nesterov 0.9, lr 0.1 per 256 images (batch 256), 1 warm-up epoch then cosine "
    "to 0, weight decay 5e-4 (not on BN or biases), label smoothing 0.1, random crop (pad 4) + flip, fp32; "
    "--speed auto chose the layout/compile"
)


def read_summary(run: Path) -> list[dict[str, float]]:
    with open(run / "summary.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def train_command(args: dict[str, Any]) -> str:
    """The command line that ran this run, from its args.yaml (every setting it gave)."""
    return (
        f"lightnets train --model {args['model']} --data {args['data']} --epochs {args['epochs']} --out {args['out']}"
    )


def ship(run: Path, data: str, log) -> dict[str, Any]:
    args = yaml.safe_load((run / "args.yaml").read_text())
    name = args["model"]
    history = read_summary(run)
    if len(history) != args["epochs"]:
        raise SystemExit(f"{run}: {len(history)} of {args['epochs']} epochs in summary.csv; the schedule has not ended")
    out = WEIGHTS_DIR / f"{name}.cifar10.safetensors"
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    lightnets.export(out, "safetensors", checkpoint=run / "last.pt")
    size = out.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{out} is {size / 2**20:.1f} MB, over the 20 MB the package ships")
    log(f"{name}: exported {run / 'last.pt'} -> {out} ({size / 2**20:.2f} MB); evaluating on the test split")
    report = lightnets.evaluate(out, data, model_name=name, workers=0, device="cpu")
    best = max(history, key=lambda row: row["val_top1"])
    wall = sum(row["epoch_seconds"] for row in history)
    images = sum(row["images_per_second"] * row["epoch_seconds"] for row in history)
    entry = {
        "file": out.name,
        "sha256": sha256_of(out),
        "dataset": "CIFAR-10",
        "top1": round(float(report["top1"]), 2),
        "top1_split": f"test ({report['images']} images, {data.split(':', 1)[-1]})",
        "recipe": RECIPE,
        "epochs": int(args["epochs"]),
        "hardware": f"{device_name('cpu')} ({describe_cpu_features()}), {args.get('world_size', 1)} process",
        "command": train_command(args),
        "trained": time.strftime("%Y-%m-%d", time.localtime((run / "last.pt").stat().st_mtime)),
    }
    run_figures = {
        "run": str(run),
        "speed": {key: args.get(key) for key in ("channels_last", "compile", "amp")},
        "wall_seconds": round(wall, 1),
        "images_per_second": round(images / wall, 1),
        "final_top1_last_epoch": history[-1]["val_top1"],
        "best_top1": best["val_top1"],
        "best_epoch": int(best["epoch"]),
        "curve": [
            {"epoch": int(r["epoch"]), "val_top1": r["val_top1"], "train_loss": r["train_loss"]} for r in history
        ],
    }
    log(f"{name}: top-1 {entry['top1']} % over {report['images']} test images; sha256 {entry['sha256'][:16]}...")
    return {"name": name, "entry": entry, **run_figures}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=120)
    for result in results:
        epochs = [p["epoch"] for p in result["curve"]]
        axis.plot(epochs, [p["val_top1"] for p in result["curve"]], marker="o", markersize=3, label=result["name"])
    axis.set_xlabel("epoch")
    axis.set_ylabel("CIFAR-10 test top-1 (%)")
    axis.set_title("Shipped weights: test top-1 per epoch (cosine schedule to 0)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def markdown(results: list[dict[str, Any]], command: str, note: str = "") -> str:
    lines = [
        "# Shipped weights: `create_model(NAME, pretrained=True)`",
        "",
        f"Produced by `{command}`. Each run is `lightnets train` as a user runs it, on the full CIFAR-10",
        "(`../shared/data/cifar-10-jpeg-python.tar.gz`: a JPEG copy, so pixels differ slightly from the original),",
        "to the end of its cosine schedule. The shipped file is the last epoch's weights (the schedule's end), not",
        "the epoch with the best test top-1, which would be chosen on the test split.",
        *(["", note] if note else []),
        "",
        "| model | epochs | wall time | img/s (train) | settings chosen by --speed auto | shipped top-1 "
        "| best top-1 (epoch) | file |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in results:
        speed = ", ".join(k for k, v in r["speed"].items() if v) or "plain"
        lines.append(
            f"| `{r['name']}` | {r['entry']['epochs']} | {r['wall_seconds'] / 60:.0f} min "
            f"| {r['images_per_second']:.0f}"
            f" | {speed} | **{r['entry']['top1']:.2f}** | {r['best_top1']:.2f} ({r['best_epoch']}) |"
            f" `{r['entry']['file']}` |"
        )
    lines += ["", "Commands and hardware:", ""]
    for r in results:
        lines.append(
            f"- `{r['name']}`: `{r['entry']['command']}`; {r['entry']['hardware']}; trained {r['entry']['trained']}"
        )
    lines += ["", "![test top-1 per epoch](pretrained_curves.png)", "", "Test top-1 per epoch (%):", ""]
    epochs = max(len(r["curve"]) for r in results)
    lines += ["| epoch | " + " | ".join(f"`{r['name']}`" for r in results) + " |", "|---:|" + "---:|" * len(results)]
    for i in range(epochs):
        cells = [f"{r['curve'][i]['val_top1']:.2f}" if i < len(r["curve"]) else "" for r in results]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of lightnets train on CIFAR-10")
    parser.add_argument("--data", default="cifar10:../shared/data/cifar-10-jpeg-python.tar.gz")
    parser.add_argument("--out", type=Path, default=Path("docs/results/pretrained"))
    parser.add_argument("--note", default="", help="how the runs were run, printed under the page's introduction")
    args = parser.parse_args()
    results = [ship(run, args.data, print) for run in args.runs]
    manifest_path = WEIGHTS_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update({r["name"]: r["entry"] for r in results})
    atomic_write(manifest_path, json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    command = "python benchmarks/ship_weights.py " + shlex.join(sys.argv[1:])
    plot(results, args.out.parent / f"{args.out.name}_curves.png")
    page = markdown(results, command, args.note)
    atomic_write(args.out.with_suffix(".md"), page)
    atomic_write(args.out.with_suffix(".json"), json.dumps({"command": command, "results": results}, indent=2) + "\n")
    print(page)
    print(f"wrote {manifest_path}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

"""Deployment speed and INT8 accuracy of one model per family: docs/results/deploy.{md,json}.

Timing: the deploy form of each family's 224x224 variant (random weights), batch 1 and 32, every backend
(eager, compile, onnxruntime, openvino) x precision (fp32, bf16, int8) through `lightnets bench`'s own code, the
fastest path per model and batch, its speed-up over eager fp32, and OpenVINO's per-layer profile of the INT8
model (where the time goes, and in which precision). Accuracy: a briefly trained CIFAR-10 checkpoint of each
family's CIFAR form (benchmarks/deploy_train_cifar.sh), exported to INT8 for ONNX Runtime and OpenVINO, calibrated
on 300 training images, evaluated on the test split next to fp32 (again through `bench`'s code).

    bash benchmarks/deploy_train_cifar.sh runs/deploy-cifar     # the checkpoints (once)
    python benchmarks/deploy.py --checkpoints runs/deploy-cifar --threads 2 --notes benchmarks/deploy_notes.md
    python benchmarks/deploy.py --skip-accuracy --threads 1 --min-run-time 0.2 --note "..."   # a quick look
    python benchmarks/deploy.py --render docs/results/deploy.json        # the page again from saved figures

Not a test: it prints figures. Speed targets (best path >= 8x eager fp32 at batch 1, >= 5x at batch 32; INT8
within 0.5 pt of fp32) are checked and printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import lightnets
from lightnets.device import describe_cpu_features, device_name
from lightnets.files import atomic_write
from lightnets.measure.best import best_paths, int8_slower
from lightnets.measure.latency import BenchSettings, bench_models

MODELS = ["spgnet_s2p6", "shufflenet_v1_g3_x1_0", "parnet_s", "asymmnet_large_x1_0"]
BACKENDS = ["eager", "compile", "onnxruntime", "openvino"]
PRECISIONS = ["fp32", "bf16", "int8"]
# family variant -> the run directory of its CIFAR form in --checkpoints (benchmarks/deploy_train_cifar.sh)
CIFAR_RUNS = {
    "spgnet_s2p6": "spgnet_s2p6_cifar",
    "shufflenet_v1_g3_x1_0": "shufflenet_v1_g3_x1_0_cifar",
    "parnet_s": "parnet_s_w32_cifar",
    "asymmnet_large_x1_0": "asymmnet_large_x1_0_cifar",
}
TARGETS = {1: 8.0, 32: 5.0}  # best path's speed-up over eager fp32, per batch size
INT8_TOLERANCE_PT = 0.5


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "lightnets": lightnets.__version__}
    for module in ("onnxruntime", "openvino", "nncf"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            found[module] = "not installed"
    return found


def openvino_profile(name: str, size: int, threads: int, batch: int = 1) -> list[dict[str, Any]]:
    """Where OpenVINO's INT8 model of ``name`` spends its time at ``batch``: per layer type and kernel, summed."""
    import openvino as ov

    from lightnets.deploy.quantize import random_calibration
    from lightnets.measure.backends import Exports
    from lightnets.models import create_model, reparameterize_model

    model = reparameterize_model(create_model(name).eval())
    exports = Exports(model, size, lambda: random_calibration(32, size))
    try:
        quantized = exports.openvino_int8().clone()
        quantized.reshape({0: ov.PartialShape([batch, 3, size, size])})
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}
        compiled = ov.Core().compile_model(quantized, "CPU", config)
        request = compiled.create_infer_request()
        images = torch.randn(batch, 3, size, size).numpy()
        for _ in range(20):
            request.infer({0: images})
        totals: dict[tuple[str, str], float] = {}
        for info in request.get_profiling_info():
            key = (info.node_type, info.exec_type)
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds()
    finally:
        exports.cleanup()
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    return [{"layer": k[0], "kernel": k[1], "share": v / whole} for k, v in ranked if v / whole >= 0.03]


def run_sources(checkpoints: Path, log) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Each family's briefly trained CIFAR checkpoint (benchmarks/deploy_train_cifar.sh) and what trained it."""
    import yaml

    sources = {}
    for family, run in CIFAR_RUNS.items():
        checkpoint = checkpoints / run / "best.pt"
        if not checkpoint.is_file():
            log(f"{family}: no checkpoint at {checkpoint}; accuracy skipped")
            continue
        args = yaml.safe_load((checkpoints / run / "args.yaml").read_text())
        sources[family] = (checkpoint, {k: args.get(k) for k in ("model_kwargs", "epochs", "device", "data")})
    return sources


def shipped_sources() -> dict[str, tuple[Path, dict[str, Any]]]:
    """The weights lightnets ships (create_model(name, pretrained=True)), sha256-checked, and their record."""
    from lightnets.models.pretrained import list_pretrained, pretrained_cfg, pretrained_path

    sources = {}
    for name in list_pretrained():
        cfg = pretrained_cfg(name)
        trained = {"model_kwargs": {}, "epochs": cfg["epochs"], "device": "cpu", "data": cfg["dataset"]}
        sources[name] = (pretrained_path(name), {**trained, "shipped_top1": cfg["top1"]})
    return sources


def accuracy_rows(
    sources: dict[str, tuple[Path, dict[str, Any]]], data: str, threads: int, log, skipped: list | None = None
) -> dict[str, dict[str, Any]]:
    """Per source: fp32 top-1 of its checkpoint and each lower precision's top-1 change, from `bench`."""
    results = {}
    for family, (checkpoint, trained) in sources.items():
        settings = BenchSettings(
            checkpoint=str(checkpoint),
            data=data,
            backends=["onnxruntime", "openvino"],
            precisions=PRECISIONS,
            batch_sizes=[1],
            threads=threads,
            min_run_time=0.01,
            warmup=1,
        )
        rows = bench_models(settings, log=log, skipped=skipped)
        measured = [r for r in rows if r.get("top1") is not None]
        if not measured:
            log(f"{family}: no precision but fp32 ran; accuracy skipped")
            continue
        results[family] = {
            "checkpoint": str(checkpoint),
            "model": rows[0]["model"],
            "model_kwargs": trained.get("model_kwargs") or {},
            "epochs": trained["epochs"],
            "trained_device": trained.get("device") or "?",
            "trained_on": trained["data"],
            **({"shipped_top1": trained["shipped_top1"]} if "shipped_top1" in trained else {}),
            "fp32_top1": measured[0]["top1"] - measured[0]["top1_change"],
            "paths": {
                f"{r['backend']} {r['precision']}": {"top1": r["top1"], "change": r["top1_change"], "ran": r["ran"]}
                for r in measured
            },
        }
    return results


def test_images(data: str) -> int:
    """How many images the accuracy split has: one of them is 100/N points of top-1."""
    from lightnets.data import TensorSplit, load_dataset

    split = load_dataset(data).val
    return len(split.labels) if isinstance(split, TensorSplit) else len(split)


def accuracy_notes(result: dict[str, Any]) -> list[str]:
    """What the INT8 column's verdict rests on: the resolution of the test split and each path beyond tolerance."""
    images = result.get("accuracy_test_images") or test_images(result["accuracy_data"])
    lines = [f"One test image is {100 / images:.2f} pt of top-1 ({images} images)."]
    not_run = sorted({(s["backend"], s["precision"], s["reason"]) for s in result.get("accuracy_skipped", [])})
    if not_run:
        lines += ["", "Not run for accuracy on this machine:", ""]
        lines += [f"- {backend} {precision}: {reason}" for backend, precision, reason in not_run]
    beyond = [
        (family, path, entry["change"])
        for family, acc in result["accuracy"].items()
        for path, entry in acc["paths"].items()
        if path.endswith("int8") and abs(entry["change"]) > INT8_TOLERANCE_PT
    ]
    if beyond:
        lines += ["", f"INT8 paths beyond {INT8_TOLERANCE_PT} pt:", ""]
        lines += [f"- {family}, {path}: {change:+.2f} pt" for family, path, change in beyond]
        if all(path.startswith("onnxruntime") for _, path, _ in beyond):
            lines += [
                "",
                "Only ONNX Runtime's INT8 falls outside: its `quantize_static` takes activation ranges from min/max "
                "over the calibration images and corrects no biases, where NNCF (OpenVINO) estimates ranges "
                "robustly and applies fast bias correction; for accuracy, the OpenVINO INT8 file is the one to ship.",
            ]
    return lines


def accuracy_intro(result: dict[str, Any]) -> list[str]:
    calibrated = (
        f"calibrated on 300 training images of `{result['accuracy_data']}` and evaluated on its test split "
        "(top-1 in %, change in points against the fp32 weights in PyTorch)."
    )
    if result.get("accuracy_source") != "shipped":
        return [
            "Each family's CIFAR form, trained briefly (epochs below) by `bash benchmarks/deploy_train_cifar.sh`, "
            + calibrated
        ]
    return [
        "The weights lightnets ships (`create_model(name, pretrained=True)`, trained to the end of their schedules: "
        "docs/results/pretrained.md), exported to each runtime and precision, " + calibrated,
        "",
        f"Measured by `{result['accuracy_command']}` on {result['accuracy_device']}, CPU features "
        f"{result['accuracy_cpu_features']}.",
    ]


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    lines = [
        "# Deployment: every backend x precision, the fastest path, and what INT8 costs in accuracy",
        "",
        f"Produced by `{result['command']}`.",
        "",
    ]
    if result.get("note"):
        lines += [f"**{result['note']}**", ""]
    lines += [
        f"Measured on {result['device']}, CPU features {result['cpu_features']}, {settings['threads']} thread(s), "
        f"{settings['min_run_time']} s per timing; " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        "Deploy form, random weights, 224x224. Latency is the median per batch in ms; `ran` is the precision that "
        "actually ran (OpenVINO's from its execution graph). INT8 timing rows are calibrated on random images "
        "(timing only); the accuracy table below is calibrated on real training images.",
        "",
    ]
    rows = result["timing"]
    columns = [
        (b, p) for b in BACKENDS for p in PRECISIONS if any(r["backend"] == b and r["precision"] == p for r in rows)
    ]
    header = "| model | batch | " + " | ".join(f"{b} {p}" for b, p in columns) + " | fastest | x eager fp32 | target |"
    lines += [header, "|---|---:|" + "---:|" * len(columns) + "---|---:|---|"]
    best = {(b["model"], b["batch_size"]): b for b in result["best"]}
    for (model, batch), entry in best.items():
        cells = []
        for backend, precision in columns:
            match = [
                r
                for r in rows
                if (r["model"], r["batch_size"], r["backend"], r["precision"]) == (model, batch, backend, precision)
            ]
            cells.append(f"{match[0]['latency_ms_median']:.2f}" if match else "skipped")
        speedup = entry["speedup_vs_eager_fp32"]
        target = TARGETS.get(batch)
        verdict = (
            "" if target is None or speedup is None else ("met" if speedup >= target else f"**short of x{target:g}**")
        )
        lines.append(
            f"| {model} | {batch} | "
            + " | ".join(cells)
            + f" | {entry['backend']} {entry['precision']} (ran {entry['ran']}) | x{speedup:.1f} | {verdict} |"
        )
    short = [
        e
        for e in result["best"]
        if e["speedup_vs_eager_fp32"] is not None and e["speedup_vs_eager_fp32"] < TARGETS.get(e["batch_size"], 0)
    ]
    if short:
        lines += ["", "Short of the speed target, and what the fastest path spends its time on:", ""]
        for entry in short:
            profile = result.get("profiles", {}).get(entry["model"], [])
            where = ", ".join(f"{p['layer']} / {p['kernel']} {100 * p['share']:.0f} %" for p in profile[:4])
            lines.append(
                f"- {entry['model']}, batch {entry['batch_size']}: x{entry['speedup_vs_eager_fp32']:.1f} against "
                f"x{TARGETS[entry['batch_size']]:g}" + (f"; OpenVINO INT8 at batch 1: {where}" if where else "")
            )
    lines += ["", "Skipped (cannot run here):", ""]
    lines += sorted({f"- {s['backend']} {s['precision']}: {s['reason']}" for s in result["skipped"]})
    if result["int8_slower"]:
        lines += ["", "INT8 slower than fp32 on the same backend:", ""]
        lines += [
            f"- {s['model']} on {s['backend']}, batch {s['batch_size']}: {s['int8_ms']:.2f} ms against "
            f"{s['fp32_ms']:.2f} ms"
            for s in result["int8_slower"]
        ]
    if result.get("profiles"):
        lines += ["", "Where OpenVINO's INT8 model spends its time (batch 1, layer type / kernel, share >= 3 %):", ""]
        for model, profile in result["profiles"].items():
            parts = ", ".join(f"{p['layer']} / {p['kernel']} {100 * p['share']:.0f} %" for p in profile)
            lines.append(f"- {model}: {parts}")
    if result.get("accuracy"):
        lines += [
            "",
            "## INT8 (and bf16) accuracy on CIFAR-10",
            "",
            *accuracy_intro(result),
            "",
            "| family | CIFAR model | epochs (trained on) | fp32 top-1 | "
            + " | ".join(result["accuracy_paths"])
            + " | INT8 within 0.5 pt |",
            "|---|---|---:|---:|" + "---:|" * len(result["accuracy_paths"]) + "---|",
        ]
        for family, acc in result["accuracy"].items():
            cells = []
            for path in result["accuracy_paths"]:
                entry = acc["paths"].get(path)
                cells.append(f"{entry['top1']:.2f} ({entry['change']:+.2f})" if entry else "skipped")
            int8 = [e["change"] for p, e in acc["paths"].items() if p.endswith("int8")]
            verdict = "yes" if int8 and all(abs(c) <= INT8_TOLERANCE_PT for c in int8) else "**no**"
            kwargs = f" {acc['model_kwargs']}" if acc["model_kwargs"] else ""
            lines.append(
                f"| {family} | `{acc['model']}`{kwargs} | {acc['epochs']} ({acc.get('trained_device', '?')}) | "
                f"{acc['fp32_top1']:.2f} | " + " | ".join(cells) + f" | {verdict} |"
            )
        lines += ["", *accuracy_notes(result)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--checkpoints", type=Path, default=Path("runs/deploy-cifar"))
    parser.add_argument(
        "--data",
        default="cifar10:../shared/data/cifar-10-subset-python.tar.gz",
        help="calibration (train split) and accuracy (test split) data: the checkpoints' own training data",
    )
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="accuracy of the weights lightnets ships instead of --checkpoints (use the full CIFAR-10 as --data)",
    )
    parser.add_argument(
        "--keep-timing",
        type=Path,
        metavar="JSON",
        help="take the timing tables from this saved result (measure accuracy only; the page names both machines)",
    )
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--note", default="", help="printed in bold at the top of the page (e.g. 'preliminary')")
    parser.add_argument("--notes", type=Path, help="a Markdown file of observations appended to the page as they are")
    parser.add_argument("--out", type=Path, default=Path("docs/results/deploy"))
    parser.add_argument("--render", type=Path, metavar="JSON", help="write the page of a saved result; measure nothing")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        page = markdown({**{"best": [], "int8_slower": []}, **saved})
        if args.notes:
            page += "\n## Notes\n\n" + args.notes.read_text()
        atomic_write(args.render.with_suffix(".md"), page)
        print(page)
        return

    def log(line: str) -> None:
        print(line, flush=True)

    result: dict[str, Any] = {
        "command": "python benchmarks/deploy.py " + shlex.join(sys.argv[1:]),
        "note": args.note,
        "device": device_name("cpu"),
        "cpu_features": describe_cpu_features(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d"),
        "settings": {"threads": args.threads, "min_run_time": args.min_run_time, "batch_sizes": args.batch_sizes},
        "timing": [],
        "skipped": [],
    }
    if args.keep_timing:
        saved = json.loads(args.keep_timing.read_text())
        timing_keys = ("command", "note", "device", "cpu_features", "versions", "date", "settings", "timing", "skipped")
        result.update({key: saved[key] for key in (*timing_keys, "best", "int8_slower", "profiles") if key in saved})
    elif not args.skip_timing:
        settings = BenchSettings(
            models=args.models.split(","),
            batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
            backends=args.backends.split(","),
            precisions=PRECISIONS,
            threads=args.threads,
            min_run_time=args.min_run_time,
        )
        result["timing"] = bench_models(settings, log=log, skipped=result["skipped"])
        result["best"] = best_paths(result["timing"])
        result["int8_slower"] = int8_slower(result["timing"])
        if "openvino" in settings.backends:
            sizes = {r["model"]: r["input_size"] for r in result["timing"]}
            result["profiles"] = {m: openvino_profile(m, sizes[m], args.threads) for m in sizes}
    if not args.skip_accuracy:
        result["accuracy_data"] = args.data
        sources = shipped_sources() if args.pretrained else run_sources(args.checkpoints, log)
        result["accuracy_source"] = "shipped" if args.pretrained else "runs"
        result["accuracy_command"] = "python benchmarks/deploy.py " + shlex.join(sys.argv[1:])
        result["accuracy_device"], result["accuracy_cpu_features"] = device_name("cpu"), describe_cpu_features()
        result["accuracy_skipped"] = []
        result["accuracy"] = accuracy_rows(sources, args.data, args.threads, log, result["accuracy_skipped"])
        result["accuracy_test_images"] = test_images(args.data)
        paths = {p for acc in result["accuracy"].values() for p in acc["paths"]}
        result["accuracy_paths"] = sorted(paths)
    page = markdown({**{"best": [], "int8_slower": []}, **result})
    if args.notes:
        page += "\n## Notes\n\n" + args.notes.read_text()
    atomic_write(args.out.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
    atomic_write(args.out.with_suffix(".md"), page)
    print(page)
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

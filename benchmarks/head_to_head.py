"""Head-to-head latency on this machine, the contenders taking turns in one process.

Two studies, each a ratio measured in the same run (so a shared, noisy machine moves both sides alike):

- ``deploy``: every family's ImageNet model in its training form against its deploy form (BN folded, and
  for ParNet the 3x3 + 1x1 (+ avg-pool) branches merged into one conv), eager PyTorch.
- ``spgnet``: SPGNet-S2P6 against MobileNetV2 and GhostNet 1.0, all in deploy form, eager and ONNX Runtime:
  SPGNet's claim is that grouped convolutions beat depthwise ones at similar MACs.

Prints a table and, with ``--json``, writes the rows. Not a test:

    python benchmarks/head_to_head.py --study deploy --json docs/results/cpu_bench/deploy_vs_training.json
    python benchmarks/head_to_head.py --study spgnet --json docs/results/cpu_bench/spgnet_vs_depthwise.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from lightnets.measure.counting import count_macs
from lightnets.measure.latency import BenchSettings, interleaved_latencies, make_runner
from lightnets.models import create_model, reparameterize_model

DEPLOY_STUDY = ["parnet_s", "spgnet_s2p6", "shufflenet_v1_g3_x1_0", "asymmnet_large_x1_0"]
SPGNET_STUDY = ["spgnet_s2p6", "tv:mobilenet_v2", "timm:ghostnet_100"]


def deploy_study(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    settings = BenchSettings(threads=args.threads)
    for name in args.models or DEPLOY_STUDY:
        training_form = create_model(name).eval()
        deploy_form = reparameterize_model(training_form)
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, args.input_size, args.input_size)
            calls = {
                "training form": make_runner("eager", training_form, args.input_size, settings, x.device)[0](x),
                "deploy form": make_runner("eager", deploy_form, args.input_size, settings, x.device)[0](x),
            }
            medians = interleaved_latencies(calls, args.threads, args.rounds, args.min_run_time)
            train_ms = 1e3 * statistics.median(medians["training form"])
            deploy_ms = 1e3 * statistics.median(medians["deploy form"])
            row = {
                "model": name,
                "batch_size": batch,
                "input_size": args.input_size,
                "training_form_ms": train_ms,
                "deploy_form_ms": deploy_ms,
                "speedup": train_ms / deploy_ms,
                "training_form_macs": count_macs(training_form, args.input_size),
                "deploy_form_macs": count_macs(deploy_form, args.input_size),
                "round_ms": {label: [1e3 * m for m in values] for label, values in medians.items()},
            }
            rows.append(row)
            print(
                f"{name:24s} batch {batch:3d}: training form {train_ms:9.2f} ms, deploy form {deploy_ms:9.2f} ms, "
                f"speed-up of the deploy form x{row['speedup']:.2f}",
                flush=True,
            )
    return rows


def spgnet_study(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = args.models or SPGNET_STUDY
    reference = names[0]
    settings = BenchSettings(threads=args.threads)
    models = {name: reparameterize_model(create_model(name).eval()) for name in names}
    macs = {name: count_macs(model, args.input_size) for name, model in models.items()}
    rows = []
    for backend in args.backends:
        runners = {
            name: make_runner(backend, model, args.input_size, settings, torch.device("cpu"))
            for name, model in models.items()
        }
        try:
            for batch in args.batch_sizes:
                x = torch.randn(batch, 3, args.input_size, args.input_size)
                calls = {name: runner(x) for name, (runner, _, _) in runners.items()}
                medians = interleaved_latencies(calls, args.threads, args.rounds, args.min_run_time)
                ms = {name: 1e3 * statistics.median(values) for name, values in medians.items()}
                for name in names:
                    row = {
                        "model": name,
                        "backend": backend,
                        "batch_size": batch,
                        "input_size": args.input_size,
                        "macs": macs[name],
                        "latency_ms": ms[name],
                        "images_per_s": 1e3 * batch / ms[name],
                        "time_relative_to": reference,
                        "time_ratio": ms[name] / ms[reference],
                        "round_ms": [1e3 * m for m in medians[name]],
                    }
                    rows.append(row)
                    print(
                        f"{backend:11s} batch {batch:3d} {name:20s} {macs[name] / 1e6:7.1f} MMACs {ms[name]:9.2f} ms "
                        f"{row['images_per_s']:8.1f} img/s  x{ms[name] / ms[reference]:.2f} the time of {reference}",
                        flush=True,
                    )
        finally:
            for _, _, cleanup in runners.values():
                cleanup()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=["deploy", "spgnet"], required=True)
    parser.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], help="override the study's list")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=[1, 32])
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["eager", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3, help="turns each contender takes")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = deploy_study(args) if args.study == "deploy" else spgnet_study(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

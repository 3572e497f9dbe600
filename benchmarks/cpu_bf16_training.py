"""Training images/s with bf16 autocast against float32 on this CPU, the two taking turns in one process.

The default of ``lightnets train --amp`` on CPU follows what this prints on a CPU with native bf16 (AVX512-BF16
or AMX). Each round times a block of training steps (forward, backward, SGD step, the recipe's loss) in float32,
then the same number in bf16 autocast, on the same model and batch (who goes first alternates); the figure is
the median over rounds. Not a test:

    python benchmarks/cpu_bf16_training.py --out docs/results/cpu_bf16     # CIFAR forms at 32, ImageNet forms at 224
    python benchmarks/cpu_bf16_training.py --configs 224x32 --models shufflenet_v1_g3_x1_0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from lightnets.device import describe_cpu_features
from lightnets.measure.latency import device_name
from lightnets.models import create_model
from lightnets.train.optim import parameter_groups

MODELS = {
    32: [
        "shufflenet_v1_g3_x0_5_cifar",
        "shufflenet_v1_g3_x1_0_cifar",
        "spgnet_s2p6_cifar",
        "asymmnet_small_x0_35_cifar",
        "asymmnet_small_x1_0_cifar",
        "asymmnet_large_x1_0_cifar",
        "parnet_s_cifar:32,64,128,512",  # ParNet-S's structure at the width the CPU convergence runs use
    ],
    # ParNet-S at 224 (5.3 GMACs) takes tens of seconds per step on a small CPU.
    224: ["shufflenet_v1_g3_x1_0", "spgnet_s2p6", "asymmnet_small_x0_35", "asymmnet_large_x1_0"],
}


def build(spec: str) -> nn.Module:
    name, _, widths = spec.partition(":")
    kwargs = {"widths": tuple(int(w) for w in widths.split(","))} if widths else {}
    return create_model(name, **kwargs)


def make_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, bf16: bool):
    optimizer = torch.optim.SGD(parameter_groups(model, 5e-4), lr=0.01, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(spec: str, batch: int, size: int, steps: int, rounds: int, channels_last: bool) -> dict:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 10, (batch,))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.contiguous(memory_format=memory_format)
    runs = {}
    for bf16 in (False, True):
        model = build(spec).train().to(memory_format=memory_format)
        runs[bf16] = make_step(model, images, labels, bf16)
        for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
            runs[bf16]()
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for round_index in range(rounds):
        for bf16 in (False, True) if round_index % 2 == 0 else (True, False):  # alternate who goes first
            start = time.perf_counter()
            for _ in range(steps):
                runs[bf16]()
            seconds[bf16].append(time.perf_counter() - start)
    fp32, bf16 = (batch * steps / statistics.median(seconds[k]) for k in (False, True))
    return {"model": spec, "batch_size": batch, "input_size": size, "fp32_img_s": fp32, "bf16_img_s": bf16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated; NAME:W1,W2,W3,W4 sets widths (default: per size)")
    parser.add_argument("--configs", default="32x128,224x32", help="SIZExBATCH list (default 32x128,224x32)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = f"{device_name()} ({describe_cpu_features()}), {args.threads} threads, torch {torch.__version__}"
    print(header)
    rows = []
    for config in args.configs.split(","):
        size, batch = (int(v) for v in config.split("x"))
        print(f"batch {batch} at {size}x{size}, {args.rounds} rounds x {args.steps} steps")
        for spec in _specs(args.models) if args.models else MODELS[size]:
            row = measure(spec, batch, size, args.steps, args.rounds, args.channels_last)
            rows.append(row)
            ratio = row["bf16_img_s"] / row["fp32_img_s"]
            print(f"{spec:36s} fp32 {row['fp32_img_s']:7.1f} img/s  bf16 {row['bf16_img_s']:7.1f} img/s  x{ratio:.2f}")
    if args.out:
        meta = {"cpu": device_name(), "features": describe_cpu_features(), "threads": args.threads}
        record = {**meta, "torch": torch.__version__, "rows": rows}
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        lines = [
            "# bf16 autocast against float32 in CPU training",
            "",
            f"Produced by `python benchmarks/cpu_bf16_training.py --out docs/results/cpu_bf16` on {header}; "
            f"{args.rounds} rounds of {args.steps} training steps each way, taking turns in one process "
            "(images/s of the median round).",
            "",
            "| model | input | batch | fp32 img/s | bf16 img/s | bf16 / fp32 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            ratio = row["bf16_img_s"] / row["fp32_img_s"]
            lines.append(
                f"| `{row['model']}` | {row['input_size']} | {row['batch_size']} | {row['fp32_img_s']:.1f} | "
                f"{row['bf16_img_s']:.1f} | x{ratio:.2f} |"
            )
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _specs(models: str) -> list[str]:
    specs: list[str] = []
    for part in models.split(","):
        if part and part[0].isdigit() and specs:  # the widths of the previous NAME:W1,W2,...
            specs[-1] += "," + part
        elif part:
            specs.append(part)
    return specs


if __name__ == "__main__":
    main()

"""Training speed: lightnets' ``--speed auto`` step against the step a user of the authors' code runs.

For each family, at the 224 ImageNet form and at its CIFAR default (batch 64 for both by default: ParNet-S's
CIFAR form does 1.7 GMAC a forward pass, so a step at batch 256 takes about a minute on 2 cores), this script
times, in one process, the contenders taking turns step by step:

- **authors, plain**: a training step of the authors' own model, built from their released code (imported at run
  time from ``--authors-dir``, as ``authors_compare.py`` does), in plain PyTorch: eager, float32, contiguous
  memory, SGD with momentum, cross-entropy, a float batch. That is what their repositories run. None of the four
  repositories ships a CIFAR form (see ../shared/specs/architectures.md), so at 32x32 the plain contender is the
  lightnets ``_cifar`` network run the same plain way;
- **lightnets, each ``--speed`` candidate**: :func:`lightnets.train.speed.candidate_step`, the very step the probe
  of ``lightnets train --speed auto`` times (uint8 batch normalised on the device, forward, loss, backward, SGD)
  under channels-last or not, ``torch.compile`` or not, bf16 autocast where the CPU computes bf16 natively.

Of the lightnets candidates, the one ``--speed auto`` keeps for a run of ``--planned-steps`` steps is reported
(:func:`lightnets.train.speed.best_for_run`: steps plus compile time), with img/s, its ratio to the authors' plain
step, GMAC/s and the share of the machine's fp32 peak (formula printed). Training MACs per step are counted as
three times the forward MACs (forward, input gradient, weight gradient) times the batch.

    python benchmarks/train_vs_authors.py --authors-dir /work/authors --json docs/results/train_speed.json \\
        --markdown docs/results/train_speed.md

Nothing else may run on the machine meanwhile: the ratios are only as good as the quiet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.device import cpu_features, cpu_fp32_peak, default_amp, describe_cpu_features, device_name
from lightnets.measure.counting import count_macs
from lightnets.measure.training_profile import profile_training
from lightnets.models import create_model
from lightnets.train.speed import Timing, best_for_run, candidate_step, candidates_for

HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")
CIFAR_DEFAULTS = {
    "spgnet": "spgnet_s2p6_cifar",
    "shufflenet_v1": "shufflenet_v1_g3_x1_0_cifar",
    "parnet": "parnet_s_cifar",
    "asymmnet": "asymmnet_large_x1_0_cifar",
}


def plain_step(model: nn.Module, batch: int, size: int, classes: int) -> Callable[[], None]:
    """The step of a plain PyTorch training script: eager, fp32, contiguous, a float batch already normalised."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=4e-5)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, classes, (batch,))
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


Seconds = dict[str, list[float]]


def interleaved(steps: dict[str, Callable[[], None]], warmup: int, rounds: int) -> tuple[Seconds, dict[str, float]]:
    """Seconds per step of each entry over ``rounds`` rounds, the entries taking turns (order rotated each round),
    after ``warmup`` untimed calls each; and what the warm-up calls took (for a compiled entry: its compile)."""
    labels = list(steps)
    first: dict[str, float] = {}
    for label in labels:
        begin = time.perf_counter()
        for _ in range(warmup):
            steps[label]()
        first[label] = time.perf_counter() - begin
        print(f"  warmed {label}: {first[label]:.1f} s", flush=True)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for index in range(rounds):
        shift = index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            begin = time.perf_counter()
            steps[label]()
            times[label].append(time.perf_counter() - begin)
    return times, first


def measure(
    family: str, form: str, authors: Callable[[], nn.Module] | None, ours: str, batch: int, size: int,
    planned_steps: int, warmup: int, rounds: int, use_compile: bool,
) -> dict[str, Any]:  # fmt: skip
    classes = 1000 if form == "224" else 10
    torch.manual_seed(0)
    reference = authors() if authors is not None else create_model(ours, num_classes=classes)
    fixed = {"channels_last": None, "compile": None if use_compile else False, "amp": None}
    candidates = candidates_for(CPU, fixed)
    steps: dict[str, Callable[[], None]] = {"authors, plain": plain_step(reference, batch, size, classes)}
    for candidate in candidates:
        steps[candidate.label()] = candidate_step(
            candidate, lambda: create_model(ours, num_classes=classes), CPU, batch, size, classes
        )
    print(f"{family} {form}: {ours} at batch {batch}, {len(steps)} contenders", flush=True)
    times, first = interleaved(steps, warmup, rounds)
    median = {label: statistics.median(values) for label, values in times.items()}
    timings = {
        c: Timing(c, median[c.label()], max(0.0, first[c.label()] - warmup * median[c.label()]) if c.compile else 0.0)
        for c in candidates
    }
    chosen = best_for_run(timings, planned_steps)
    forward_macs = count_macs(create_model(ours, num_classes=classes), size)
    train_gmac = 3 * forward_macs * batch / 1e9
    peak = cpu_fp32_peak()
    chosen_s, authors_s = chosen.step_seconds, median["authors, plain"]
    target = 3.0 if default_amp(CPU) else 2.0
    limit = None
    if authors_s / chosen_s < target:
        # What holds it back: the layer type that takes the largest share of an (eager) step under the chosen
        # memory format and precision, with the GMAC/s it reaches.
        profile = profile_training(create_model(ours, num_classes=classes), name=ours, batch=batch, input_size=size,
                                   steps=2, warmup=1, channels_last=chosen.candidate.channels_last,
                                   amp=chosen.candidate.amp)  # fmt: skip
        total = sum(row.total_ms for row in profile.rows)
        limit = []
        for row in profile.rows[:3]:
            rate = row.macs / 1e9 / (row.total_ms / 1e3) if row.macs else None
            limit.append({"kind": row.kind, "share": round(row.total_ms / total, 3),
                          "gmac_per_s": round(rate, 1) if rate else None,
                          "of_peak": round(rate / peak[0], 3) if rate and peak else None})  # fmt: skip
    return {
        "family": family,
        "form": form,
        "model": ours,
        "plain_contender": "authors' code" if authors is not None else "lightnets network, run plain",
        "batch": batch,
        "input_size": size,
        "forward_macs": forward_macs,
        "chosen": chosen.candidate.label(),
        "compile_seconds": round(chosen.compile_seconds, 1),
        "img_per_s": {label: round(batch / seconds, 1) for label, seconds in median.items()},
        "step_seconds_per_round": {label: [round(v, 4) for v in values] for label, values in times.items()},
        "authors_img_per_s": round(batch / authors_s, 1),
        "lightnets_img_per_s": round(batch / chosen_s, 1),
        "ratio": round(authors_s / chosen_s, 2),
        "lightnets_gmac_per_s": round(train_gmac / chosen_s, 1),
        "authors_gmac_per_s": round(train_gmac / authors_s, 1),
        "share_of_peak": round(train_gmac / chosen_s / peak[0], 3) if peak else None,
        "target": target,
        "limited_by": limit,
    }


def kept_rows(path: Path, header: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of an earlier run's JSON, when it ran on this CPU with these features and threads (a ratio is only
    comparable within one machine class); its command is carried into each row that lacks one."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    machine = earlier["machine"]
    for key in ("cpu", "features", "threads"):
        if machine.get(key) != header[key]:
            raise SystemExit(
                f"--update: {path} was measured with {key} {machine.get(key)!r}, this machine has {header[key]!r}; "
                "re-measure every row here (drop --update)"
            )
    for row in earlier["rows"]:
        row.setdefault("command", machine.get("command", "unknown"))
    return earlier["rows"]


def in_family_order(earlier: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``earlier`` with each family:form pair measured again replaced by its new row; new pairs are appended."""
    fresh = {(row["family"], row["form"]): row for row in new}
    merged = [fresh.pop((row["family"], row["form"]), row) for row in earlier]
    return merged + list(fresh.values())


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        "# Training speed: lightnets `--speed auto` against the authors' plain training step",
        "",
        f"Machine: {header['cpu']} ({header['features']}), {header['threads']} threads, torch {header['torch']}.",
        f"Peak: {header['peak']}.",
        "",
        "Commands (each row names its own in the JSON):",
        "",
        *[f"- `{command}`" for command in dict.fromkeys(row["command"] for row in rows)],
        "",
        "| family | form | model | plain contender | plain img/s | lightnets img/s | chosen | ratio | GMAC/s "
        "| of peak |",
        "|---|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        share = f"{100 * r['share_of_peak']:.0f}%" if r["share_of_peak"] is not None else "-"
        lines.append(
            f"| {r['family']} | {r['form']} | `{r['model']}` | {r['plain_contender']} | {r['authors_img_per_s']} | "
            f"{r['lightnets_img_per_s']} | {r['chosen']}{'' if r['compile_tried'] else ' (compile not tried)'} | "
            f"{r['ratio']}x | {r['lightnets_gmac_per_s']} | {share} |"
        )
    short = [r for r in rows if r["limited_by"]]
    if short:
        lines += ["", f"## Below the target ({rows[0]['target']:.0f}x on this CPU): what limits them", ""]
        lines.append(
            "The three layer types with the largest share of an eager training step under the chosen memory "
            "format and precision (`lightnets summary NAME --profile train`), with the GMAC/s each reaches:"
        )
        lines.append("")
        for r in short:
            parts = []
            for item in r["limited_by"]:
                rate = (
                    f", {item['gmac_per_s']} GMAC/s ({100 * item['of_peak']:.0f}% of peak)"
                    if item["gmac_per_s"]
                    else ""
                )
                parts.append(f"{item['kind']} {100 * item['share']:.0f}%{rate}")
            lines.append(f"- `{r['model']}` ({r['form']}, {r['ratio']}x): " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-dir", default="/work/authors")
    parser.add_argument("--families", default=",".join(CIFAR_DEFAULTS), help="comma-separated")
    parser.add_argument("--forms", default="cifar,224", help="cifar and/or 224")
    parser.add_argument("--batch-224", type=int, default=64)
    parser.add_argument("--batch-cifar", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender (a compile happens here)")
    parser.add_argument("--rounds", type=int, default=4, help="timed steps per contender, taking turns")
    parser.add_argument(
        "--planned-steps", type=int, default=5850, help="the run --speed auto chooses for (default: 30 CIFAR-10 "
        "epochs at batch 256)",
    )  # fmt: skip
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave compile out")
    parser.add_argument(
        "--no-compile-at", default="", help="family:form pairs timed without the compiled candidates and with 1 "
        "warm-up step (a CPU compile at 224 took over 4 minutes for SPGNet)",
    )  # fmt: skip
    parser.add_argument(
        "--few-rounds-at", default="", help="family:form pairs timed in 2 rounds, e.g. parnet:224 (ParNet-S takes "
        "about a minute a step at 224 on 2 cores)",
    )  # fmt: skip
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument(
        "--update", action="store_true", help="keep the rows of --json for the family:form pairs this run does not "
        "measure (same CPU, features and threads only), so one form can be re-measured without the others",
    )  # fmt: skip
    parser.add_argument("--notes", type=Path, help="a Markdown file of observations appended to the page as they are")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))  # authors_compare.py beside this script builds the authors' models
    import authors_compare as compare

    builders = {family.key: (family.ours, family.build) for family in compare.FAMILIES}
    root = Path(args.authors_dir)
    peak = cpu_fp32_peak()
    header = {
        "cpu": device_name("cpu"),
        "features": describe_cpu_features(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak": peak[1] if peak else "unknown (no clock readable)",
        "native_bf16": default_amp(CPU),
    }
    command = "python benchmarks/train_vs_authors.py " + " ".join(sys.argv[1:])
    print(f"{header['cpu']}: {header['features']}; peak {header['peak']}", flush=True)
    earlier = kept_rows(Path(args.json), header) if args.update and args.json else []
    rows: list[dict[str, Any]] = []
    no_compile = {pair.strip() for pair in args.no_compile_at.split(",") if pair.strip()}
    few_rounds = {pair.strip() for pair in args.few_rounds_at.split(",") if pair.strip()}
    for family in args.families.split(","):
        for form in args.forms.split(","):
            use_compile = args.compile and f"{family}:{form}" not in no_compile
            warmup = args.warmup if use_compile else 1
            rounds = 2 if f"{family}:{form}" in few_rounds else args.rounds
            if form == "224":
                ours, build = builders[family]
                row = measure(family, form, lambda build=build: build(root), ours, args.batch_224, 224,
                              args.planned_steps, warmup, rounds, use_compile)  # fmt: skip
            else:
                row = measure(family, form, None, CIFAR_DEFAULTS[family], args.batch_cifar, 32, args.planned_steps,
                              warmup, rounds, use_compile)  # fmt: skip
            row["rounds"] = rounds
            row["compile_tried"] = use_compile
            row["command"] = command
            print(json.dumps({k: row[k] for k in ("model", "img_per_s", "chosen", "ratio")}), flush=True)
            rows.append(row)
            if args.json:  # after every row: a long run keeps what it measured
                merged = in_family_order(earlier, rows)
                Path(args.json).write_text(json.dumps({"machine": header, "rows": merged}, indent=1) + "\n")
    rows = in_family_order(earlier, rows)
    text = markdown(rows, header)
    if args.notes:
        text += "\n" + args.notes.read_text()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    print(f"CPU features: {' '.join(cpu_features())}")


if __name__ == "__main__":
    main()

"""``lightnets bench --pareto``: the papers' accuracy against the latency measured here, and their speed claims.

Every family's reference ImageNet variants and the usual baselines are benched at batch 1 on each runtime and
precision that runs here (the deploy form for lightnets models); each model's fastest path is its point. The
y axis is the ImageNet top-1 its paper reports (:data:`lightnets.models.reported.REPORTED_TOP1`, source named per
row; nothing is trained here), the x axis the measured latency. The Pareto front (no other model both faster and
more accurate) is marked. Each speed claim of :data:`~lightnets.models.reported.PAPER_CLAIMS` gets a sentence:
holds, or does not hold, on this machine (the papers measured on their own hardware, named in the sentence).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightnets.device import cpu_features, describe_cpu_features, device_name
from lightnets.measure.best import best_paths
from lightnets.measure.latency import BenchSettings, bench_models
from lightnets.models.reported import PAPER_CLAIMS, REPORTED_TOP1
from lightnets.tables import format_table

__all__ = ["PARETO_MODELS", "ParetoResult", "claim_verdicts", "pareto", "pareto_front", "write_pareto"]

PARETO_MODELS = (
    "spgnet_s2p6", "shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x1_0", "shufflenet_v1_g3_x0_5", "parnet_s",
    "asymmnet_large_x1_0", "asymmnet_large_x0_5", "asymmnet_small_x1_0",
    "tv:mobilenet_v2", "tv:mobilenet_v3_large", "tv:shufflenet_v2_x1_0", "tv:resnet18", "timm:ghostnet_100",
    "timm:efficientnet_b0",
)  # fmt: skip


@dataclass
class ParetoResult:
    points: list[dict[str, Any]]  # per model: its fastest path, latency, MACs, reported top-1 and source
    front: list[str]  # model names on the Pareto front, fastest first
    claims: list[str]  # one sentence per paper claim
    machine: str
    skipped: list[dict[str, str]] = field(default_factory=list)

    def format(self, markdown: bool = False) -> str:
        headers = ["model", "fastest path", "latency ms", "MACs (M)", "reported top-1", "front", "source"]
        rows = [
            [p["model"], f"{p['backend']} {p['precision']}", f"{p['latency_ms']:.2f}", f"{p['macs'] / 1e6:.0f}",
             f"{p['top1']:.1f}" if p["top1"] is not None else "-", "yes" if p["model"] in self.front else "",
             p["source"] or "no published top-1"]
            for p in sorted(self.points, key=lambda p: p["latency_ms"])
        ]  # fmt: skip
        parts = [f"batch 1 on {self.machine}", format_table(headers, rows, markdown=markdown), *self.claims]
        return ("\n\n" if markdown else "\n").join(parts)


def pareto_front(points: list[dict[str, Any]]) -> list[str]:
    """The models no other model beats on both latency and reported top-1, fastest first."""
    front, best = [], float("-inf")
    for point in sorted((p for p in points if p["top1"] is not None), key=lambda p: (p["latency_ms"], -p["top1"])):
        if point["top1"] > best:
            front.append(point["model"])
            best = point["top1"]
    return front


def claim_verdicts(points: list[dict[str, Any]], machine: str) -> list[str]:
    """A sentence per paper claim: the measured latency ratio and whether it reaches the claimed one here."""
    latency = {p["model"]: p for p in points}
    sentences = []
    for claim in PAPER_CLAIMS:
        fast, slow = latency.get(claim.fast), latency.get(claim.slow)
        if fast is None or slow is None:
            missing = claim.fast if fast is None else claim.slow
            sentences.append(f'"{claim.claim}" ({claim.source}): not checked, {missing} was not measured.')
            continue
        ratio = slow["latency_ms"] / fast["latency_ms"]
        verdict = "holds" if ratio >= claim.speedup else "does not hold"
        sentences.append(
            f'"{claim.claim}" ({claim.source}, measured on {claim.hardware}) {verdict} here: on {machine} at batch 1, '
            f"{claim.fast} ({fast['backend']} {fast['precision']}, {fast['latency_ms']:.2f} ms) runs "
            f"{ratio:.2f}x as fast as {claim.slow} ({slow['backend']} {slow['precision']}, "
            f"{slow['latency_ms']:.2f} ms); the claim needs {claim.speedup:.1f}x."
        )
    return sentences


def _default_precisions() -> list[str]:
    """fp32 everywhere; bf16 and INT8 only where the CPU computes them natively (elsewhere they are emulated and
    slower, so they could not be anyone's fastest path)."""
    features = set(cpu_features())
    precisions = ["fp32"]
    if {"BF16", "AMX"} & features:
        precisions.append("bf16")
    if {"VNNI", "AMX"} & features:
        precisions.append("int8")
    return precisions


def pareto(
    models: list[str] | None = None,
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    threads: int | None = None,
    min_run_time: float = 1.0,
    log: Any = print,
) -> ParetoResult:
    """Bench ``models`` (default :data:`PARETO_MODELS`) at batch 1 on every backend x precision, keep each model's
    fastest path, and set it against the reported top-1."""
    settings = BenchSettings(
        models=list(models or PARETO_MODELS),
        batch_sizes=[1],
        backends=backends or ["eager", "onnxruntime", "openvino"],
        precisions=precisions or _default_precisions(),
        min_run_time=min_run_time,
        **({"threads": threads} if threads else {}),
    )
    skipped: list[dict[str, str]] = []
    rows = bench_models(settings, log=log, skipped=skipped)
    macs = {row["model"]: row["macs"] for row in rows}
    points = []
    for best in best_paths(rows):
        reported = REPORTED_TOP1.get(best["model"])
        points.append(
            {
                "model": best["model"],
                "backend": best["backend"],
                "precision": best["precision"],
                "latency_ms": best["latency_ms_median"],
                "macs": macs[best["model"]],
                "top1": reported.top1 if reported else None,
                "source": reported.source if reported else None,
            }
        )
    machine = f"{device_name('cpu')} ({describe_cpu_features()}), {settings.threads} threads"
    return ParetoResult(points, pareto_front(points), claim_verdicts(points, machine), machine, skipped)


def write_pareto(result: ParetoResult, out: str | Path) -> list[Path]:
    """``OUT.png`` (reported top-1 against measured latency, the front joined), ``OUT.md`` and ``OUT.json``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    from lightnets.measure.report import FAMILY_COLOURS, family_of, label_points, save_figure

    out = Path(out)
    figure = Figure(figsize=(8, 6))
    axis = figure.subplots()
    placed = [p for p in result.points if p["top1"] is not None]
    seen: set[str] = set()
    for point in placed:
        family = family_of(point["model"])
        axis.scatter(point["latency_ms"], point["top1"], color=FAMILY_COLOURS.get(family, "black"), s=36,
                     label=family if family not in seen else None, zorder=3)  # fmt: skip
        seen.add(family)
    front = [p for name in result.front for p in placed if p["model"] == name]
    axis.plot([p["latency_ms"] for p in front], [p["top1"] for p in front], color="0.3", linewidth=1, linestyle="--",
              label="Pareto front", zorder=2)  # fmt: skip
    axis.set(xscale="log", xlabel="measured latency at batch 1, fastest path (ms, log)",
             ylabel="ImageNet top-1 the paper reports (%)", title=f"batch 1 on {result.machine}")  # fmt: skip
    # Plain millisecond labels at 1-2-5 steps: log-axis minor labels (2x10^0, 3x10^0, ...) run into each other.
    axis.xaxis.set_major_locator(FixedLocator([v * 10**e for e in range(-1, 4) for v in (1, 2, 5)]))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    label_points(axis, [(p["latency_ms"], p["top1"], p["model"]) for p in placed])
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    png, md, js = out.with_suffix(".png"), out.with_suffix(".md"), out.with_suffix(".json")
    save_figure(figure, png)
    unplotted = [p["model"] for p in result.points if p["top1"] is None]
    note = f"\n\nNot plotted (no published ImageNet top-1): {', '.join(unplotted)}." if unplotted else ""
    md.write_text(result.format(markdown=True) + note + "\n")
    js.write_text(json.dumps({"machine": result.machine, "points": result.points, "front": result.front,
                              "claims": result.claims, "skipped": result.skipped}, indent=1) + "\n")  # fmt: skip
    return [png, md, js]

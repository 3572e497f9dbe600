"""``lightnets bench --pareto``: the front, the claim verdicts, and the files it writes."""

from __future__ import annotations

import json

from lightnets.cli import main
from lightnets.measure.pareto import claim_verdicts, pareto_front
from lightnets.models import is_model
from lightnets.models.reported import PAPER_CLAIMS, REPORTED_TOP1


def point(model: str, latency_ms: float, top1: float | None) -> dict:
    return {"model": model, "latency_ms": latency_ms, "top1": top1, "backend": "onnxruntime", "precision": "fp32"}


def test_the_front_keeps_only_models_nothing_beats_on_both_axes() -> None:
    points = [point("a", 5, 60), point("b", 6, 58), point("c", 8, 70), point("d", 9, 70), point("e", 2, None)]
    assert pareto_front(points) == ["a", "c"]  # b is slower and worse than a; d ties c's top-1 but is slower


def test_a_claim_holds_only_at_the_claimed_ratio() -> None:
    claim = PAPER_CLAIMS[0]
    holds = claim_verdicts([point(claim.fast, 1.0, None), point(claim.slow, claim.speedup * 1.0, 72.0)], "here")
    fails = claim_verdicts([point(claim.fast, 1.0, None), point(claim.slow, 1.3, 72.0)], "here")
    assert "holds here" in holds[0] and f"{claim.speedup:.2f}x as fast" in holds[0]
    assert "does not hold here" in fails[0] and "1.30x as fast" in fails[0]
    assert "not checked" in holds[1]  # GhostNet was not in the points


def test_every_reported_figure_names_a_model_and_a_source() -> None:
    for name, reported in REPORTED_TOP1.items():
        assert is_model(name) or name.startswith(("tv:", "timm:")), name
        assert 40 < reported.top1 < 90 and reported.source


def test_the_command_writes_the_plot_table_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "pareto"
    args = ["bench", "--pareto", "--models", "shufflenet_v1_g3_x0_5,asymmnet_small_x1_0", "--backends", "eager",
            "--min-run-time", "0.05", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert {p["model"] for p in data["points"]} == {"shufflenet_v1_g3_x0_5", "asymmnet_small_x1_0"}
    assert data["front"] and all(p["top1"] for p in data["points"])
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "Pareto" not in capsys.readouterr().err
    assert "| shufflenet_v1_g3_x0_5 |" in out.with_suffix(".md").read_text()

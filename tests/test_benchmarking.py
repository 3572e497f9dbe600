"""bench/report on a tiny budget: every field present and sane (figures themselves are not asserted)."""

import json

import pytest

from lightnets.cli import main
from lightnets.measure.latency import ROW_KEYS, BenchSettings, bench_models
from lightnets.measure.operators import operator_study
from lightnets.measure.report import family_of, write_report


def test_bench_rows_have_every_field(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "--models", "shufflenet_v1_g3_x0_25_cifar,tv:mobilenet_v2", "--input-size", "32"]
    args += ["--batch-sizes", "1,2", "--backends", "eager,onnxruntime", "--min-run-time", "0.05", "--out", str(out)]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 2 * 2 and out.with_suffix(".csv").is_file()
    for row in rows:
        assert set(ROW_KEYS) <= set(row)
        assert row["latency_ms_median"] > 0 and row["images_per_s"] > 0 and row["deploy"] is True
        assert row["gmacs_per_s"] == pytest.approx(row["macs"] * row["images_per_s"] / 1e9)
        assert row["peak_memory_mb"] >= 0
    onnx_rows = [r for r in rows if r["backend"] == "onnxruntime"]
    assert all(r["compile_s"] is not None for r in onnx_rows)
    report = write_report([out], tmp_path / "report")
    text = report.read_text()
    assert "shufflenet_v1_g3_x0_25_cifar" in text and "tv:mobilenet_v2" in text
    assert list((tmp_path / "report").glob("latency_vs_macs_*.png"))


def test_training_form_is_benchmarked_when_asked():
    rows = bench_models(
        BenchSettings(models=["parnet_s_cifar"], batch_sizes=[1], backends=["eager"], deploy=False, min_run_time=0.05),
        log=lambda _: None,
    )
    deployed = bench_models(
        BenchSettings(models=["parnet_s_cifar"], batch_sizes=[1], backends=["eager"], min_run_time=0.05),
        log=lambda _: None,
    )
    assert rows[0]["params"] > deployed[0]["params"] and rows[0]["macs"] > deployed[0]["macs"]


def test_operator_study_keeps_macs_equal():
    rows = operator_study(base_channels=32, resolution=4, min_run_time=0.02, log=lambda _: None)
    conv3 = [r for r in rows if r["op"] == "conv3x3"]
    assert next(r["kind"] for r in conv3) == "dense" and conv3[-1]["kind"] == "depthwise"
    for row in conv3:
        assert row["macs"] == pytest.approx(conv3[0]["macs"], rel=0.2)  # channels rounded to a multiple of g
    assert all(r["gmacs_per_s"] > 0 for r in rows)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown backend"):
        BenchSettings(backends=["tensorrt"])
    assert family_of("timm:ghostnet_100") == "timm" and family_of("parnet_s") == "ParNet"

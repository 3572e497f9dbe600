"""Measuring models on the user's machine: params and MACs (per layer too), latency and throughput per runtime and
precision with the fastest path named, the operator study (dense vs grouped vs depthwise), and the report."""

from lightnets.measure.best import best_paths
from lightnets.measure.counting import Complexity, complexity, count_macs, count_params
from lightnets.measure.latency import BenchResult, BenchSettings, bench, bench_models
from lightnets.measure.operators import operator_study
from lightnets.measure.per_layer import ModelSummary, summary

__all__ = [
    "BenchResult",
    "BenchSettings",
    "Complexity",
    "ModelSummary",
    "bench",
    "bench_models",
    "best_paths",
    "complexity",
    "count_macs",
    "count_params",
    "operator_study",
    "summary",
]

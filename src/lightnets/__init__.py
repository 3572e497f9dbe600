"""lightnets: efficient convolutional networks from grouped, serial-parallel and multi-stream convolutions.

The packages, lowest first (each imports only from those before it): ``models`` (the zoo and its weights),
``data``, ``deploy`` (exported files and their runtimes), ``evaluation`` and ``prediction``, ``train`` and
``measure``, and ``cli`` (argument wiring only). The calls a Python user needs are re-exported here.

The model API is imported at once; the rest on first use (``lightnets.evaluate`` imports the evaluation
module then), so that ``import lightnets`` and the command line start without loading the exporters and
benchmark timers, and a command can silence torch's start-up notices before they are imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightnets.device import quiet_cuda_home_notice
from lightnets.models import create_model, is_model, list_models, register_model, reparameterize_model
from lightnets.version import __version__

quiet_cuda_home_notice()  # before anything of lightnets imports torch's extension helper

if TYPE_CHECKING:
    from lightnets.deploy.export import export_model as export
    from lightnets.evaluation import evaluate_checkpoint as evaluate
    from lightnets.measure.counting import Complexity, complexity, count_macs, count_params
    from lightnets.measure.latency import BenchResult, BenchSettings, bench
    from lightnets.measure.per_layer import ModelSummary, summary
    from lightnets.models.timm_bridge import register_with_timm
    from lightnets.prediction import predict

# public name -> (module, name in it)
_ON_FIRST_USE = {
    "evaluate": ("lightnets.evaluation", "evaluate_checkpoint"),
    "predict": ("lightnets.prediction", "predict"),
    "export": ("lightnets.deploy.export", "export_model"),
    "bench": ("lightnets.measure.latency", "bench"),
    "BenchResult": ("lightnets.measure.latency", "BenchResult"),
    "BenchSettings": ("lightnets.measure.latency", "BenchSettings"),
    "Complexity": ("lightnets.measure.counting", "Complexity"),
    "complexity": ("lightnets.measure.counting", "complexity"),
    "count_macs": ("lightnets.measure.counting", "count_macs"),
    "count_params": ("lightnets.measure.counting", "count_params"),
    "ModelSummary": ("lightnets.measure.per_layer", "ModelSummary"),
    "summary": ("lightnets.measure.per_layer", "summary"),
    "register_with_timm": ("lightnets.models.timm_bridge", "register_with_timm"),
}

__all__ = [
    "BenchResult",
    "BenchSettings",
    "Complexity",
    "ModelSummary",
    "__version__",
    "bench",
    "complexity",
    "count_macs",
    "count_params",
    "create_model",
    "evaluate",
    "export",
    "is_model",
    "list_models",
    "predict",
    "register_model",
    "register_with_timm",
    "reparameterize_model",
    "summary",
]


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'lightnets' has no attribute {name!r}")
    module, attribute = _ON_FIRST_USE[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""lightnets: efficient convolutional networks from grouped, serial-parallel and multi-stream convolutions.

The packages, lowest first (each imports only from those before it): ``models`` (the zoo and its weights),
``data``, ``deploy`` (exported files and their runtimes), ``evaluation`` and ``prediction``, ``train`` and
``measure``, and ``cli`` (argument wiring only). The calls a Python user needs are re-exported here.
"""

from lightnets.deploy import export_model as export
from lightnets.evaluation import evaluate_checkpoint as evaluate
from lightnets.measure import (
    BenchResult,
    BenchSettings,
    Complexity,
    ModelSummary,
    bench,
    complexity,
    count_macs,
    count_params,
    summary,
)
from lightnets.models import create_model, is_model, list_models, register_model, reparameterize_model
from lightnets.prediction import predict
from lightnets.version import __version__

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
    "reparameterize_model",
    "summary",
]

"""lightnets: efficient convolutional networks from grouped, serial-parallel and multi-stream convolutions."""

from lightnets.complexity import Complexity, complexity, count_macs, count_params
from lightnets.model_summary import ModelSummary, summary
from lightnets.models import create_model, is_model, list_models, register_model, reparameterize_model

__version__ = "0.1.0"

__all__ = [
    "Complexity",
    "ModelSummary",
    "complexity",
    "count_macs",
    "count_params",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    "reparameterize_model",
    "summary",
]

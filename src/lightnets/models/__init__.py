"""The lightnets model zoo; importing this package registers every family."""

from lightnets.models import asymmnet, parnet, shufflenet_v1, spgnet  # noqa: F401  (registration)
from lightnets.models.registry import create_model, is_model, list_models, register_model
from lightnets.models.reparameterize import reparameterize_model

__all__ = ["create_model", "is_model", "list_models", "register_model", "reparameterize_model"]

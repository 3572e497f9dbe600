"""Model registry: one name -> one builder, plus ``tv:`` and ``timm:`` prefixes for baselines."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from lightnets.models.features import FeatureListNet
from lightnets.models.model_cfg import default_cfg
from lightnets.models.pretrained import describe as describe_pretrained
from lightnets.models.pretrained import pretrained_path
from lightnets.models.weights import load_weights, read_weights

_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
BASELINE_PREFIXES = ("tv:", "timm:")


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name; a name may be registered once."""
    name = builder.__name__
    if name in _MODEL_BUILDERS:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_BUILDERS[name] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    """Registered lightnets names matching a shell-style ``pattern`` (several may be joined with commas)."""
    patterns = [p.strip() for p in pattern.split(",") if p.strip()] or ["*"]
    return sorted(name for name in _MODEL_BUILDERS if any(fnmatch.fnmatchcase(name, p) for p in patterns))


def expand_model_names(pattern: str) -> list[str]:
    """Registered names matching the comma-separated ``pattern``s, in order; ``tv:``/``timm:`` entries pass through.

    A part that matches nothing is an error naming the closest registered names.
    """
    names: list[str] = []
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        if part.startswith(BASELINE_PREFIXES):
            names.append(part)
            continue
        matches = list_models(part)
        if not matches:
            raise unknown_model_error(part)
        names.extend(m for m in matches if m not in names)
    return names


def is_model(name: str) -> bool:
    return name in _MODEL_BUILDERS


def unknown_model_error(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_MODEL_BUILDERS), n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "run `lightnets models` for the list"
    return ValueError(f"unknown model {name!r}; {hint} (baselines: tv:NAME for torchvision, timm:NAME for timm)")


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a model by registered name, or a baseline as ``tv:NAME`` / ``timm:NAME``.

    ``num_classes`` defaults to the form's own (1000 for ImageNet forms, 10 for ``*_cifar``).
    Extra keyword arguments go to the builder (e.g. ``drop_rate``, ``widths``).

    ``checkpoint=PATH`` loads weights from a ``.safetensors`` export (with its JSON sidecar), a lightnets ``.pt``
    checkpoint, or a checkpoint of the authors' own training code (see ``lightnets.models.weights``), whose keys
    the family's ``checkpoint_filter_fn`` converts; ``ema=True`` picks the EMA weights of a file that has both.
    The model's ``pretrained_cfg`` then says which weights were loaded and how inputs must be preprocessed
    for them (the authors' mean, std and channel order for their files).

    ``features_only=True`` returns the backbone as a :class:`~lightnets.models.features.FeatureListNet` (its forward
    gives the list of feature maps at ``out_indices``, default all; ``feature_info`` says their channels and
    reductions), with any checkpoint loaded first. ``timm:`` names pass both to timm.

    ``pretrained=True`` loads the weights lightnets ships for ``name`` (``lightnets.models.pretrained``; sha256
    checked, nothing downloaded unless the entry points elsewhere), and ``pretrained_cfg`` then also records their
    dataset, top-1, recipe, epochs and hardware.

    ``checkpoint=PATH, num_classes=N`` where the file's classifier has another size keeps every weight but the
    classifier, which starts fresh for N classes (``pretrained_cfg["head"]`` says so): fine-tuning onto new classes.
    Any other key that does not fit is still an error naming it.
    """
    features_only, out_indices = False, None
    if not name.startswith("timm:"):  # timm builds its own feature extractors from both
        features_only, out_indices = bool(kwargs.pop("features_only", False)), kwargs.pop("out_indices", None)
        if out_indices is not None and not features_only:
            raise ValueError("out_indices chooses the feature maps of features_only=True; pass that too")
        if features_only and name.startswith("tv:"):
            raise ValueError(f"{name} has no feature_info: features_only=True takes a lightnets name or timm:NAME")
    checkpoint = kwargs.pop("checkpoint", None)
    ema = bool(kwargs.pop("ema", False))
    pretrained = bool(kwargs.pop("pretrained", False))
    if pretrained:
        if checkpoint is not None:
            raise ValueError(
                "pretrained=True loads the weights lightnets ships; checkpoint=PATH loads a file: pass one"
            )
        checkpoint = pretrained_path(name)
    weights = None
    if checkpoint is not None:
        weights = read_weights(checkpoint, ema=ema)
        # The file records the kwargs it was built with (e.g. num_classes); explicit ones still win.
        kwargs = {**weights.model_kwargs, **kwargs}
    elif ema:
        raise ValueError("ema=True selects the EMA weights of a checkpoint; pass checkpoint=PATH too")
    model = _build(name, **{**kwargs, **({"num_classes": num_classes} if num_classes is not None else {})})
    if weights is not None:
        try:
            model = load_weights(model, weights)
        except ValueError:
            if num_classes is None:
                raise
            # Fine-tuning onto other classes: load into the file's own head, then give the model a new one.
            model = _with_new_head(_build(name, **kwargs), weights, num_classes)
    if pretrained:
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **describe_pretrained(name)}
    return FeatureListNet(model, out_indices) if features_only else model


def _with_new_head(model: nn.Module, weights: Any, num_classes: int) -> nn.Module:
    """``model`` (built with the file's classifier) with ``weights`` loaded and a fresh classifier for
    ``num_classes``; ``pretrained_cfg["head"]`` says so. Raises if the weights do not fit even so."""
    model = load_weights(model, weights)
    old = model.get_classifier()
    name = next((qualified for qualified, module in model.named_modules() if module is old), "classifier")
    before = getattr(model, "num_classes", None)
    model.reset_classifier(num_classes)
    model.classes = None  # the file's class names belong to its old head
    model.pretrained_cfg = {
        **getattr(model, "pretrained_cfg", {}),
        "num_classes": num_classes,
        "head": f"a new classifier '{name}' ({before} -> {num_classes} classes); every other weight is the file's",
    }
    return model


def _build(name: str, **kwargs) -> nn.Module:
    if name.startswith("tv:"):
        from lightnets.models.baselines import create_torchvision_model

        return create_torchvision_model(name[3:], **kwargs)
    if name.startswith("timm:"):
        from lightnets.models.baselines import create_timm_model

        return create_timm_model(name[5:], **kwargs)
    if name not in _MODEL_BUILDERS:
        raise unknown_model_error(name)
    model = _MODEL_BUILDERS[name](**kwargs)
    model.model_name = name
    model.pretrained_cfg = default_cfg(model)
    return model

"""lightnets models in timm's registry: ``lightnets.register_with_timm()``, then ``timm.create_model(NAME)``.

After the call every lightnets name that timm does not already have is a timm model: ``timm.create_model``,
``timm.list_models("shufflenet_v1*")``, ``timm.data.resolve_data_config(model=...)`` and timm's training scripts
work with it. Names timm has are left to timm (never shadowed), and calling twice changes nothing. It is an
explicit call, not a side effect of ``import lightnets``, because it imports timm (about a second) and edits
another library's registry.

Each name gets an entry point that builds the model with :func:`lightnets.create_model` (so ``pretrained=True``
loads the weights lightnets ships, sha256-checked, nothing downloaded; ``checkpoint=PATH`` the authors' or your
own files) and a timm ``PretrainedCfg`` made from the model's ``pretrained_cfg`` (``input_size`` 32 for a
``_cifar`` form). timm's ``device`` and ``dtype`` arguments are honoured; ``pretrained_cfg_overlay`` updates the
model's cfg.

timm's data pipeline knows no channel order, so a model whose weights expect BGR input (megvii's ShuffleNet
release) is given RGB input instead: the first conv's input channels and the mean and std are reversed, which
gives the same outputs for the same image, exactly (a conv is linear in its input channels).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch
from torch import nn

from lightnets.models.model_cfg import default_cfg
from lightnets.models.pretrained import WEIGHTS_DIR, list_pretrained, pretrained_cfg
from lightnets.models.registry import create_model, list_models

__all__ = ["register_with_timm", "rgb_input"]

# timm's register_model reads the registering module's ``default_cfgs``: one PretrainedCfg dict per name.
default_cfgs: dict[str, dict[str, Any]] = {}
_TIMM_CFG_KEYS = (
    "input_size",
    "fixed_input_size",
    "pool_size",
    "crop_pct",
    "crop_mode",
    "interpolation",
    "mean",
    "std",
    "num_classes",
    "first_conv",
    "classifier",
)


def rgb_input(model: nn.Module) -> nn.Module:
    """``model`` made to take RGB input when its weights expect BGR (see the module docstring); else unchanged."""
    cfg = getattr(model, "pretrained_cfg", {})
    if cfg.get("channel_order") != "BGR":
        return model
    first = cfg["first_conv"]
    with torch.no_grad():
        for name in (first,) if isinstance(first, str) else first:
            conv = model.get_submodule(name)
            conv.weight.copy_(conv.weight.flip(1))
    model.pretrained_cfg = {
        **cfg,
        "mean": tuple(reversed(cfg["mean"])),
        "std": tuple(reversed(cfg["std"])),
        "channel_order": "RGB",
        "notes": "the weights' BGR input order folded into the first conv, for RGB pipelines",
    }
    return model


def _entrypoint(name: str):
    def build(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        cache_dir: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        place = torch.device(device) if device is not None else contextlib.nullcontext()
        with place:
            model = create_model(name, pretrained=pretrained, **kwargs)
        if dtype is not None:
            model = model.to(dtype)
        model = rgb_input(model)
        if pretrained_cfg_overlay:
            model.pretrained_cfg = {**model.pretrained_cfg, **pretrained_cfg_overlay}
        return model

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = f"lightnets' {name}, built by lightnets.create_model."
    return build


def _timm_cfg(name: str) -> dict[str, Any]:
    with torch.device("meta"):  # the structure is all a cfg needs; no weights are made
        model = create_model(name)
    cfg = {key: value for key, value in default_cfg(model).items() if key in _TIMM_CFG_KEYS}
    cfg.update(architecture=name, source="lightnets", license="apache-2.0")
    if name in list_pretrained():
        shipped = pretrained_cfg(name)
        cfg.update(
            file=str(WEIGHTS_DIR / shipped["file"]) if shipped.get("file") else None,
            url=shipped.get("url", ""),
            notes=(f"{shipped.get('dataset')} top-1 {shipped.get('top1')} % ({shipped.get('epochs')} epochs)",),
        )
    return cfg


def register_with_timm() -> list[str]:
    """Register every lightnets model timm does not have under its lightnets name; returns the names registered
    by this call (none on a second call)."""
    from timm.models import _registry

    registered = []
    for name in list_models():
        if name in _registry._model_entrypoints:
            continue  # timm's own model of that name, or registered by an earlier call
        default_cfgs[name] = _timm_cfg(name)
        entrypoint = _entrypoint(name)
        # timm adds the name to this module's __all__; it is an attribute here too, as timm's entry points are.
        setattr(sys.modules[__name__], name, entrypoint)
        _registry.register_model(entrypoint)
        registered.append(name)
    return registered

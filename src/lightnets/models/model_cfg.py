"""Every model's ``pretrained_cfg`` (alias ``default_cfg``), built the timm way.

timm's data and export tooling (``resolve_data_config``, ``create_transform``, its model tests) read a model's
``pretrained_cfg``: ``input_size`` as ``(C, H, W)``, ``pool_size`` (the unpooled feature map), ``crop_pct``,
``interpolation``, ``mean``, ``std``, ``num_classes``, ``first_conv`` and ``classifier`` (module names). lightnets
builds one for every model at creation (:func:`default_cfg`), and loading weights updates it with the
preprocessing the weights came with (``lightnets.models.weights``).

Defaults: an ImageNet form takes 224x224 inputs resized to 256 and centre-cropped (``crop_pct`` 0.875, bilinear),
normalised with ImageNet's mean and std; a ``_cifar`` form takes 32x32 inputs as they are (``crop_pct`` 1.0),
normalised with CIFAR-10's, which is what ``lightnets train`` uses for CIFAR.

The preprocessing constants are declared here, once: ``lightnets.data`` imports them. This module imports only
torch.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "default_cfg",
    "image_size",
    "with_weights_cfg",
]

# Per-channel statistics on the 0-1 scale.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


def image_size(cfg: dict[str, Any], default: int | None = None) -> int | None:
    """The square input side a cfg records: its ``input_size`` as ``(C, H, W)`` (timm) or a plain int (older
    lightnets files), else ``default``."""
    size = cfg.get("input_size")
    if size is None:
        return default
    return int(size[-1]) if isinstance(size, (tuple, list)) else int(size)


def _classifier(model: nn.Module) -> str:
    head = model.get_classifier()
    return next((name for name, module in model.named_modules() if module is head), "classifier")


def default_cfg(model: nn.Module) -> dict[str, Any]:
    """The ``pretrained_cfg`` of a freshly built lightnets model (no weights loaded): what timm's tooling reads."""
    size = int(getattr(model, "default_input_size", 224))
    cifar = size <= 64
    in_chans = int(getattr(model, "in_chans", 3))
    reduction = int(model.feature_info[-1]["reduction"])
    pool = -(-size // reduction)  # the convs pad, so odd sizes round up
    return {
        "architecture": getattr(model, "model_name", None),
        "input_size": (in_chans, size, size),
        "fixed_input_size": False,
        "pool_size": (pool, pool),
        "crop_pct": 1.0 if cifar else 0.875,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN if cifar else IMAGENET_MEAN,
        "std": CIFAR10_STD if cifar else IMAGENET_STD,
        "channel_order": "RGB",
        "num_classes": int(model.num_classes),
        "first_conv": model.first_conv,  # each family names the convs that read the image
        "classifier": _classifier(model),
    }


def with_weights_cfg(model: nn.Module, described: dict[str, Any]) -> dict[str, Any]:
    """``model``'s cfg updated with what loaded weights say (``described``: their preprocessing, where from).

    ``input_size`` becomes ``(C, H, W)`` whatever form the file gave it in, and ``num_classes`` and
    ``classifier`` follow the model as it now is. A BGR channel order (megvii's ShuffleNet release) stays
    recorded as ``channel_order``: lightnets' eval, predict and export flip the channels; timm's pipeline, which
    has no such key, is served by :func:`lightnets.models.timm_bridge` converting the model to RGB input.
    """
    base = getattr(model, "pretrained_cfg", None)
    if base is None:  # a model built outside the registry: a lightnets class gets its defaults, any other none
        base = default_cfg(model) if hasattr(model, "feature_info") and hasattr(model, "first_conv") else {}
    cfg = {**base, **described}
    size = image_size(cfg)
    if size is not None:
        cfg["input_size"] = (int(getattr(model, "in_chans", 3)), size, size)
    for key in ("mean", "std"):
        if key in cfg:
            cfg[key] = tuple(float(v) for v in cfg[key])
    if hasattr(model, "num_classes"):
        cfg["num_classes"] = int(model.num_classes)
    return cfg

"""Starting a run from weights: ``--weights``, ``--freeze`` and ``--backbone-lr``.

``--weights PATH`` takes any file ``create_model(checkpoint=)`` reads (a lightnets run directory or checkpoint, a
safetensors export, the authors' release formats). When its classifier has another size than the dataset's classes
the classifier starts fresh and every other weight is the file's; any other key that does not fit is an error
naming it. The preprocessing the weights came with (mean, std, channel order and value range) is the run's unless
``--normalize`` says otherwise, and every checkpoint records it, so eval, predict and export apply it.

``--freeze bn`` normalises with the weights' BN statistics and never updates them (the BN scale and shift still
learn); ``--freeze backbone`` also stops every weight but the classifier from learning: a linear probe.
``--backbone-lr F`` multiplies the learning rate of every weight but the classifier by F.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightnets.models import create_model

__all__ = [
    "FREEZE_MODES",
    "FrozenStatisticsBatchNorm2d",
    "classifier_parameters",
    "freeze",
    "start_model",
    "starting_weights",
]

FREEZE_MODES = ("none", "bn", "backbone")


class FrozenStatisticsBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that normalises with its running statistics in training too and never updates them, while its
    scale and shift can still learn. Its state dict is a BatchNorm2d's, so checkpoints load into the plain model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _frozen_copy(bn: nn.modules.batchnorm._BatchNorm) -> FrozenStatisticsBatchNorm2d:
    frozen = FrozenStatisticsBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    frozen.load_state_dict(bn.state_dict())
    return frozen.to(device=bn.running_mean.device if bn.running_mean is not None else "cpu")


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier's parameters (timm's ``get_classifier()``), which ``--freeze backbone`` leaves learning."""
    if not hasattr(model, "get_classifier"):
        raise ValueError(
            f"{type(model).__name__} has no get_classifier(): --freeze backbone and --backbone-lr need one"
        )
    return list(model.get_classifier().parameters())


def freeze(model: nn.Module, mode: str) -> nn.Module:
    """Apply ``--freeze`` to ``model`` in place (2-D BatchNorm layers are swapped for frozen-statistics ones)."""
    if mode == "none":
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) and not isinstance(
            module, FrozenStatisticsBatchNorm2d
        ):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _frozen_copy(module))
    if mode == "backbone":
        keep = {id(p) for p in classifier_parameters(model)}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in keep)
    return model


def start_model(weights: str | Path, model: str, model_kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    """The model built from ``weights`` for the dataset's classes, and the line that says what was loaded."""
    num_classes = model_kwargs.get("num_classes")
    kwargs = {k: v for k, v in model_kwargs.items() if k != "num_classes"}
    built = create_model(model, checkpoint=str(weights), num_classes=num_classes, **kwargs)
    cfg = getattr(built, "pretrained_cfg", {})
    line = f"--weights {weights}: {cfg.get('loaded', 'weights')}"
    if "head" in cfg:
        line += f"; {cfg['head']}"
    if cfg.get("preprocessing_from") == "weights":
        line += (
            f"; their preprocessing: mean {', '.join(f'{v:.4g}' for v in cfg['mean'])}, std "
            f"{', '.join(f'{v:.4g}' for v in cfg['std'])}, {cfg.get('channel_order', 'RGB')}"
        )
    return built, line


def starting_weights(
    weights: str | None, model: str, model_kwargs: dict[str, Any], checkpoint: dict[str, Any] | None, say: Any
) -> tuple[nn.Module | None, dict[str, Any]]:
    """The model ``--weights`` builds (None when not given or when resuming) and the preprocessing the weights came
    with. A resumed run reads that preprocessing from its checkpoint (last.pt already holds the weights)."""
    if not weights:
        return None, {}
    if checkpoint is not None:  # the run's own numbers, which came from the weights when it started
        kept = {key: checkpoint[key] for key in ("mean", "std", "channel_order") if key in checkpoint}
        return None, {**kept, "preprocessing_from": "weights"} if "mean" in kept else kept
    start, line = start_model(weights, model, model_kwargs)
    say(line)
    return start, getattr(start, "pretrained_cfg", {})

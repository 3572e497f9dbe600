"""The optimisation side of the recipe: which weights decay, the learning-rate schedule, and the weight EMA."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEma", "parameter_groups", "set_lr", "warmup_cosine"]


def parameter_groups(model: nn.Module, weight_decay: float, backbone_lr: float = 1.0) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only; BN parameters and biases (1-D) are not decayed. Frozen
    parameters are left out. With ``backbone_lr`` other than 1, every weight but the classifier's is in groups whose
    ``lr_scale`` is ``backbone_lr`` (:func:`set_lr` applies it)."""
    from lightnets.train.finetune import classifier_parameters

    head = {id(p) for p in classifier_parameters(model)} if backbone_lr != 1.0 else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups.setdefault((id(parameter) in head, parameter.ndim > 1), []).append(parameter)
    result = []
    for is_head in (False, True) if head else (False,):
        for decays in (True, False):
            group = {"params": groups.get((is_head, decays), []), "weight_decay": weight_decay if decays else 0.0}
            if head:
                group["lr_scale"] = 1.0 if is_head else backbone_lr
            result.append(group)
    return result


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Per-step multiplier of the peak lr: linear from ~0 to 1 over the warmup, then cosine down to ``min_ratio``.

    A function of the global step alone, so the lr of any step (a resumed one included) is known without replaying
    a scheduler.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class ModelEma:
    """Exponential moving average of the weights, with timm's warm-up of the decay for short runs."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]

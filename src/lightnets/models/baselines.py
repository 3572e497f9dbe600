"""Baselines from torchvision (``tv:NAME``) and timm (``timm:NAME``) behind the lightnets model API.

Weights are never downloaded: baselines are built untrained, like every lightnets model. timm models
already have ``forward_features``/``forward_head``/``reset_classifier``/``num_features``; torchvision
models are wrapped in :class:`TorchvisionModel`, which gives them the same API without changing their
layers (the original module is ``.model``, so its own state-dict keys sit under ``model.``).
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from lightnets.models.layers import global_pool

__all__ = ["TorchvisionModel", "create_timm_model", "create_torchvision_model"]


def _close_matches_error(kind: str, name: str, available: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"{len(available)} {kind} models are available"
    return ValueError(f"unknown {kind} model {name!r}; {hint}")


def create_timm_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    import timm

    if name not in timm.list_models():
        raise _close_matches_error("timm", name, timm.list_models())
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = timm.create_model(name, pretrained=False, **kwargs)
    model.default_input_size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    model.model_name = f"timm:{name}"
    return model


def create_torchvision_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise _close_matches_error("torchvision", name, available)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    wrapped = TorchvisionModel(model)
    wrapped.model_name = f"tv:{name}"
    return wrapped


class TorchvisionModel(nn.Module):
    """Adapts a torchvision classifier to ``forward_features`` / ``forward_head`` / ``reset_classifier``.

    The layout is recognised from the module's attributes: a ``features`` trunk with a ``classifier``
    Sequential (MobileNet, EfficientNet, MNASNet uses ``layers``), or a trunk ending in ``fc``
    (ResNet, RegNet, ShuffleNetV2, GoogLeNet-style). ``forward`` always calls the original model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.default_input_size = 224
        classifier = self.get_classifier()
        self.num_classes = classifier.out_features if isinstance(classifier, nn.Linear) else 0
        self.num_features = self._pooled_features()
        self.head_hidden_size = classifier.in_features if isinstance(classifier, nn.Linear) else self.num_features

    def _classifier_parent(self) -> tuple[nn.Module, str]:
        if hasattr(self.model, "fc"):
            return self.model, "fc"
        head = self.model.classifier
        if isinstance(head, nn.Linear):
            return self.model, "classifier"
        linear_names = [name for name, module in head.named_children() if isinstance(module, nn.Linear)]
        return head, linear_names[-1]

    def get_classifier(self) -> nn.Module:
        parent, name = self._classifier_parent()
        return getattr(parent, name)

    def reset_classifier(self, num_classes: int) -> None:
        parent, name = self._classifier_parent()
        old = getattr(parent, name)
        in_features = old.in_features if isinstance(old, nn.Linear) else self.head_hidden_size
        setattr(parent, name, nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity())
        self.num_classes = num_classes

    def _pooled_features(self) -> int:
        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            features = self.forward_features(torch.zeros(1, 3, 64, 64))
            self.model.train(was_training)
        return features.shape[1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        if hasattr(model, "features"):
            return model.features(x)
        if hasattr(model, "layers"):  # MNASNet
            return model.layers(x)
        if hasattr(model, "trunk_output"):  # RegNet
            return model.trunk_output(model.stem(x))
        if hasattr(model, "conv5"):  # ShuffleNetV2
            x = model.maxpool(model.conv1(x))
            return model.conv5(model.stage4(model.stage3(model.stage2(x))))
        if hasattr(model, "layer4"):  # ResNet, ResNeXt, Wide ResNet
            x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            return model.layer4(model.layer3(model.layer2(model.layer1(x))))
        raise NotImplementedError(
            f"forward_features is not mapped for {type(model).__name__}; use forward() or a timm: baseline"
        )

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        model = self.model
        x = global_pool(x)
        if hasattr(model, "fc"):
            return x if pre_logits else model.fc(x)
        head = model.classifier
        if pre_logits:
            for module in list(head.children())[:-1]:
                x = module(x)
            return x
        return head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

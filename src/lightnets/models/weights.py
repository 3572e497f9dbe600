"""Reading weight files into models: lightnets' own formats and the authors' training checkpoints.

This sits in the model layer, as timm's ``_helpers.py`` does, so that ``create_model(name, checkpoint=PATH)``
needs nothing from the rest of lightnets: it imports only torch (safetensors lazily, in ``_safetensors.py``).
Saving lives above, in ``lightnets.train.rundir`` and ``lightnets.deploy``, which use the readers here.

Files are read with ``torch.load(weights_only=True)`` (``_loading.py``): only tensors and plain containers are
built, so a pickle that names any callable is refused before it runs.

Containers recognised (:func:`read_weights`), the key ``module.`` (DataParallel/DDP) stripped from all:

- a lightnets checkpoint (``lightnets train``): ``model_name``, ``model_kwargs``, ``classes``, ``model``, ...;
- a lightnets ``.safetensors`` export with its JSON sidecar;
- timm's ``CheckpointSaver`` file (``epoch``, ``arch``, ``state_dict``, ``state_dict_ema``, ``optimizer``,
  ``args``, ...): ``state_dict`` by default, as timm's ``validate.py`` loads it, ``state_dict_ema`` on request;
- ``{'state_dict': ...}`` (megvii's ShuffleNet ``train.py``, SPGNet's training script and release);
- ``{'state_dict_ema': ...}`` (SPGNet's separate EMA file);
- a bare state dict (megvii's ``model.mdl``, the AsymmNet PyTorch port).

A family converts its authors' key names in ``checkpoint_filter_fn(state_dict, model)`` in its model file,
the way timm ports foreign weights; :func:`load_weights` applies it and loads strictly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.models.errors import CheckpointError
from lightnets.models.loading import resolve_checkpoint_path, torch_load_safely
from lightnets.models.model_cfg import with_weights_cfg
from lightnets.models.safetensors_io import check_names, is_safetensors, read_safetensors, read_sidecar, sidecar_path

__all__ = [
    "CheckpointError",
    "WeightsFile",
    "adapt_input_conv",
    "load_weights",
    "read_weights",
    "remap_state_dict",
    "torch_load_safely",
]

LIGHTNETS_CHECKPOINT_KEYS = ("model_name", "model_kwargs", "classes", "model")
# Keys that only timm's CheckpointSaver writes beside its state dicts.
_TIMM_SAVER_KEYS = ("epoch", "arch", "optimizer", "args", "version", "metric")
_MODULE_PREFIX = "module."
# What ``model.pretrained_cfg`` says about the inputs the weights expect; lightnets files and exports carry it on.
# mean and std are on the 0-1 scale, x = (pixel / 255 - mean) / std, in the model's channel order.
PRETRAINED_CFG_KEYS = (
    "source",
    "mean",
    "std",
    "channel_order",
    "input_size",
    "crop_pct",
    "eval_resize",
    "interpolation",
)


# ---------------------------------------------------------------------------------------------- weight files


@dataclass
class WeightsFile:
    """The weights read from one file, and what the file said about them."""

    path: Path
    layout: str  # "lightnets", "lightnets-safetensors", "timm-saver", "state_dict", "state_dict_ema", "bare"
    state_dict: dict[str, torch.Tensor]
    key: str | None = None  # the entry the weights came from: "model", "state_dict", "state_dict_ema"
    model_name: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None
    deploy: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # lightnets: mean, std, input_size, eval_resize, ...
    name_from: str = "the checkpoint"  # what ``model_name`` was read from, for messages
    stripped: bool = False  # the keys carried DataParallel's "module." prefix

    @property
    def foreign(self) -> bool:
        """Not written by lightnets: the authors' training code, or any other bare state dict."""
        return self.layout not in ("lightnets", "lightnets-safetensors")

    def describe(self) -> str:
        """Which weights of which kind of file, e.g. "EMA weights 'state_dict_ema' of a timm CheckpointSaver file"."""
        if self.layout == "lightnets":
            return "a lightnets checkpoint"
        if self.layout == "lightnets-safetensors":
            return "a lightnets safetensors export"
        if self.layout == "bare":
            text = "a bare state dict"
        else:
            container = (
                "a timm CheckpointSaver file" if self.layout == "timm-saver" else f"a {{'{self.key}': ...}} file"
            )
            kind = "EMA weights" if self.key == "state_dict_ema" else "weights"
            text = f"{kind} '{self.key}' of {container}"
        return text + (" (DataParallel 'module.' prefix stripped)" if self.stripped else "")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Drop the ``module.`` that DataParallel and DistributedDataParallel put before every key; say if it did."""
    if state_dict and all(key.startswith(_MODULE_PREFIX) for key in state_dict):
        return {key[len(_MODULE_PREFIX) :]: value for key, value in state_dict.items()}, True
    return dict(state_dict), False


def _foreign_weights(path: Path, state: Any, ema: bool) -> WeightsFile:
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not weights; expected a state dict or {{'state_dict': ...}}"
        )
    if "state_dict" in state and any(key in state for key in _TIMM_SAVER_KEYS):
        layout, key = "timm-saver", "state_dict_ema" if ema else "state_dict"
        if key not in state:
            raise CheckpointError(f"{path} has no EMA weights ('state_dict_ema'); drop --ema to load 'state_dict'")
    elif "state_dict" in state or "state_dict_ema" in state:
        key = "state_dict_ema" if ema or "state_dict" not in state else "state_dict"
        if key not in state:
            raise CheckpointError(
                f"{path} has no EMA weights ('state_dict_ema'); drop --ema, or pass the EMA file (SPGNet's "
                "training script writes its EMA weights to a separate ema-*.pth.tar file)"
            )
        layout = key
    elif _is_state_dict(state):
        if ema:
            raise CheckpointError(f"{path} is a bare state dict with no EMA weights; drop --ema")
        layout, key, state = "bare", None, {"": state}
    else:
        keys = ", ".join(repr(k) for k in list(state)[:6])
        raise CheckpointError(
            f"{path} is not a weights file lightnets knows (its keys: {keys}); expected a lightnets checkpoint, "
            "a state dict, or {'state_dict': ...} / {'state_dict_ema': ...} as the authors' training code writes"
        )
    value = state[key or ""]
    if not _is_state_dict(value):
        raise CheckpointError(f"{path}: its '{key}' is not a state dict of tensors; the file is damaged")
    state_dict, stripped = strip_module_prefix(value)
    return WeightsFile(path, layout, state_dict, key=key, stripped=stripped)


def read_weights(path: str | Path, *, ema: bool = False, map_location: str | torch.device = "cpu") -> WeightsFile:
    """Read any supported weights file (see the module docstring); every failure is one line naming it.

    ``ema`` picks the EMA weights of a file that has both. A lightnets checkpoint's ``model`` already holds the
    weights it was evaluated with (the EMA when trained with ``--ema``), so ``ema`` is refused for it.
    """
    path = resolve_checkpoint_path(path)
    if is_safetensors(path):
        if not path.is_file():
            raise ValueError(f"weights file {path} does not exist")
        if ema:
            raise CheckpointError(f"{path} is a safetensors export, which holds one set of weights; drop --ema")
        # Optional here: a built model can take the weights without it.
        sidecar = read_sidecar(path) if sidecar_path(path).is_file() else {}
        tensors, metadata = read_safetensors(path)
        names = [(f"sidecar {sidecar_path(path).name}", sidecar.get("model_name"))]
        check_names(path, *names, ("its metadata", metadata.get("model_name")))
        reserved = ("format", "model_name", "model_kwargs", "classes", "lightnets_version", "deploy")
        return WeightsFile(
            path,
            "lightnets-safetensors",
            tensors,
            model_name=sidecar.get("model_name") or metadata.get("model_name"),
            model_kwargs=dict(sidecar.get("model_kwargs", {})),
            classes=sidecar.get("classes"),
            name_from=f"sidecar {sidecar_path(path).name}" if sidecar else "its metadata",
            deploy=bool(sidecar.get("deploy", metadata.get("deploy") == "true")),
            extra={k: v for k, v in sidecar.items() if k not in reserved},
        )
    state = torch_load_safely(path, map_location)
    if isinstance(state, Mapping) and all(key in state for key in LIGHTNETS_CHECKPOINT_KEYS):
        if ema:
            raise CheckpointError(
                f"{path} is a lightnets checkpoint: its weights are already the evaluated ones (the EMA when "
                "trained with --ema); drop --ema"
            )
        if not isinstance(state["model"], Mapping):
            raise CheckpointError(f"{path} holds no weights dict under 'model'")
        extra = {k: state[k] for k in (*PRETRAINED_CFG_KEYS, "val_split", "seed") if k in state}
        return WeightsFile(
            path,
            "lightnets",
            dict(state["model"]),
            key="model",
            model_name=state["model_name"],
            model_kwargs=dict(state["model_kwargs"]),
            classes=list(state["classes"]),
            extra=extra,
        )
    return _foreign_weights(path, state, ema)


# ------------------------------------------------------------------------------------------- fitting weights


def weights_fit_report(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> str:
    """Why ``weights`` do not fit ``model``, in one line; empty when they do."""
    own = model.state_dict()
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    mismatched = [
        f"{key} {tuple(weights[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in weights and getattr(weights[key], "shape", None) != own[key].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        parts.append(f"{len(mismatched)} with other shapes (file vs model: {'; '.join(mismatched[:2])})")
    return ", ".join(parts)


def first_mismatch(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> str:
    """The first key where ``weights`` and ``model`` disagree, with both shapes; empty when they fit."""
    own = model.state_dict()
    if weights and own and not own.keys() & weights.keys():
        first = next(iter(weights))
        return (
            f"none of its {len(weights)} keys is the model's or its authors' (its first is {first}, the model's "
            f"first {next(iter(own))}): the file holds another network"
        )
    for key, tensor in own.items():
        if key not in weights:
            return f"the file has no {key} {tuple(tensor.shape)}"
        if weights[key].shape != tensor.shape:
            return f"first mismatch {key}: file {tuple(weights[key].shape)} vs model {tuple(tensor.shape)}"
    extra = next((key for key in weights if key not in own), None)
    return f"the model has no {extra} {tuple(weights[extra].shape)}" if extra else ""


def remap_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, key_map: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Rename the authors' keys to the model's: ``key_map`` gives the authors' name of every model key.

    Every key of ``state_dict`` must be used exactly once and every shape must fit; otherwise a ValueError
    names the first key that does not, with both names and shapes. A missing BN ``num_batches_tracked`` (files
    from PyTorch < 0.4.1) keeps the model's own counter: it does not change the output.
    """
    own = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, tensor in own.items():
        theirs = key_map[key]
        if theirs in used:
            raise ValueError(f"two model keys map to the file's {theirs}")  # a bug in the family's key map
        if theirs not in state_dict:
            if key.endswith("num_batches_tracked"):
                converted[key] = tensor
                continue
            raise ValueError(f"the file has no {theirs} for {key} {tuple(tensor.shape)}")
        value = state_dict[theirs]
        if value.shape != tensor.shape:
            raise ValueError(
                f"first mismatch {theirs} (as {key}): file {tuple(value.shape)} vs model {tuple(tensor.shape)}"
            )
        converted[key] = value
        used.add(theirs)
    unused = [key for key in state_dict if key not in used]
    if unused:
        raise ValueError(
            f"{len(unused)} of the file's keys have no place in the model, first {unused[0]} "
            f"{tuple(state_dict[unused[0]].shape)}"
        )
    return converted


def model_label(model: nn.Module) -> str:
    name = getattr(model, "model_name", None)
    return repr(name) if name else type(model).__name__


def _family_hooks(model: nn.Module) -> tuple[Callable | None, Mapping[str, Any] | None]:
    """The ``checkpoint_filter_fn`` and ``AUTHORS_PRETRAINED_CFG`` of the lightnets model file defining ``model``."""
    module = sys.modules.get(type(model).__module__)
    if module is None or not module.__name__.startswith("lightnets.models."):
        return None, None
    return getattr(module, "checkpoint_filter_fn", None), getattr(module, "AUTHORS_PRETRAINED_CFG", None)


def load_weights(model: nn.Module, weights: WeightsFile) -> nn.Module:
    """Load ``weights`` into ``model`` strictly and set ``model.pretrained_cfg``; returns the model.

    A foreign file goes through the ``checkpoint_filter_fn`` of the model's family (its model file); when that
    renamed the keys, the file was the authors' and the family's ``AUTHORS_PRETRAINED_CFG`` (their
    preprocessing) becomes the model's ``pretrained_cfg``. A lightnets file's own preprocessing (mean, std,
    sizes) is carried over instead.
    A deploy-form safetensors export into a training-form model returns the model's deploy form (a new module,
    eval mode); otherwise ``model`` itself is returned with its training flag unchanged.
    """
    path = weights.path
    state_dict = weights.state_dict
    if weights.foreign:
        filter_fn, authors_cfg = _family_hooks(model)
        converted = state_dict
        try:
            converted = filter_fn(state_dict, model) if filter_fn is not None else state_dict
            converted = adapt_input_conv(model, converted)
            problem = first_mismatch(model, converted)
        except ValueError as error:
            problem = str(error)
        if problem:
            raise CheckpointError(
                f"weights in {path} ({weights.describe()}) do not fit model {model_label(model)}: {problem}; "
                "check --model and its arguments (e.g. num_classes)"
            )
        model.load_state_dict(converted, strict=True)
        # The filter renamed the keys: the file is in the authors' layout, so their preprocessing applies.
        authors = authors_cfg is not None and converted.keys() != state_dict.keys()
        loaded = weights.describe() + ("" if authors else ", in lightnets' key names")
        described = {**authors_cfg, "preprocessing_from": "weights"} if authors else {}
        model.pretrained_cfg = with_weights_cfg(model, {**described, "checkpoint": str(path), "loaded": loaded})
        return model

    expected = getattr(model, "model_name", None)
    error_type = ValueError if weights.layout == "lightnets-safetensors" else CheckpointError
    try:
        check_names(path, ("the model", expected), (weights.name_from, weights.model_name))
    except ValueError as error:
        raise error_type(str(error)) from None
    if weights.deploy and weights_fit_report(model, state_dict):
        from lightnets.models.reparameterize import reparameterize_model

        # The file is the deploy form and the model is not (yet): fold it first, then the keys agree.
        model = reparameterize_model(model)
    state_dict = adapt_input_conv(model, state_dict)
    problem = weights_fit_report(model, state_dict)
    if problem:
        raise error_type(f"weights in {path} do not fit model {model_label(model)}: {problem}")
    model.load_state_dict(state_dict, strict=True)
    if weights.classes is not None:
        model.classes = list(weights.classes)
    cfg = {k: weights.extra[k] for k in PRETRAINED_CFG_KEYS if k in weights.extra}
    if "mean" in cfg:
        cfg["preprocessing_from"] = "weights"
    model.pretrained_cfg = with_weights_cfg(model, {**cfg, "checkpoint": str(path), "loaded": weights.describe()})
    return model


def adapt_input_conv(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with its first conv fitted to ``model``'s input channels when they differ (timm's
    ``adapt_input_conv`` rule, so weights for RGB serve ``in_chans=1`` or more): 1 channel takes the sum over the
    file's channels; more are the file's repeated, cut to size and scaled by file channels / new channels, so
    the output keeps its scale. Anything else passes unchanged."""
    first = getattr(model, "pretrained_cfg", {}).get("first_conv") or ()
    adapted = dict(state_dict)
    own = model.state_dict()
    for name in (first,) if isinstance(first, str) else first:
        key = f"{name}.weight"
        if key not in state_dict or key not in own:
            continue
        weight, wanted = state_dict[key], own[key].shape[1]
        have = weight.shape[1]
        if weight.dim() != 4 or have == wanted or weight.shape[0] != own[key].shape[0]:
            continue
        if wanted == 1:
            adapted[key] = weight.sum(dim=1, keepdim=True)
        else:
            adapted[key] = weight.repeat(1, -(-wanted // have), 1, 1)[:, :wanted] * (have / wanted)
    return adapted

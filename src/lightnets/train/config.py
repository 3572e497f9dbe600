"""Training settings, each declared once: its default, its help, and the range it must lie in.

:class:`TrainConfig` is the single source. ``lightnets train``'s flags, their help and the range checks are
generated from its fields' metadata (:func:`add_config_arguments`, :func:`validate_config`); a ``--config`` YAML
file holds the same keys; ``args.yaml`` in a run directory is the resolved config (:func:`resolved_settings`),
which :func:`load_run_config` reads back for ``--resume``.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lightnets.data import AUG_POLICIES, AugmentSpec, batch_augmentation, parse_data_spec
from lightnets.train.finetune import FREEZE_MODES
from lightnets.train.speed import SPEED_MODES

__all__ = [
    "TrainConfig",
    "add_config_arguments",
    "augment_spec",
    "config_from_values",
    "flag",
    "load_config_file",
    "load_run_config",
    "resolved_settings",
    "speed_mode",
    "validate_config",
]

NAN_POLICIES = ("stop", "skip")
NORMALIZE_MODES = ("auto", "imagenet", "dataset")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _at_least(low: int):
    return lambda v: _is_int(v) and v >= low


def _optional(test):
    return lambda v: v is None or test(v)


def setting(default: Any, help: str, check: Any = None, valid: str = "", metavar: str | None = None) -> Any:
    """A config field: ``check(value)`` decides validity and ``valid`` is the range the error states."""
    metadata = {"help": help, "check": check, "valid": valid, "metavar": metavar}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every training setting; ``args.yaml`` in the run directory is this, resolved."""

    # ---- what to train, on what
    model: str = setting(
        "spgnet_s2p6_cifar", "registered name, tv:NAME or timm:NAME", lambda v: isinstance(v, str) and bool(v.strip()),
        "a model name (see `lightnets models`)",
    )  # fmt: skip
    weights: str | None = setting(
        None, "start from these weights: any file create_model(checkpoint=) reads (a run directory or checkpoint, a "
        "safetensors export, the authors' release formats); a classifier of another size than the data's classes "
        "starts fresh, and the weights' preprocessing is the run's unless --normalize says otherwise",
        _optional(_is_text), "a path",
    )  # fmt: skip
    data: str = setting(
        "cifar10", "cifar10, cifar100, cifar10:PATH (archive or folder), folder:PATH", lambda v: isinstance(v, str),
        "cifar10, cifar100, cifar10:PATH, cifar100:PATH or folder:PATH",
    )  # fmt: skip
    data_root: str | None = setting(
        None, "where CIFAR archives are looked for (unset: $LIGHTNETS_DATA or ./data)", _optional(_is_text), "a path"
    )
    input_size: int | None = setting(
        None, "unset: 32 for CIFAR, the model's own size for folders", _optional(_at_least(1)),
        "an integer >= 1 (or unset: the default)",
    )  # fmt: skip
    val_split: float | None = setting(
        None, "held-out fraction of train (unset: the test split for CIFAR, 0.2 for a plain folder)",
        _optional(lambda v: _number(v) and 0 < v < 1), "a fraction strictly between 0 and 1",
    )  # fmt: skip
    normalize: str = setting(
        "auto", "input mean/std: auto (the --weights' own; else CIFAR's constants for CIFAR, ImageNet's for folders), "
        "imagenet, or dataset "
        "(measured on the training images before the first epoch, as `lightnets data stats` prints them); the "
        "numbers go into args.yaml and every checkpoint", lambda v: v in NORMALIZE_MODES, ", ".join(NORMALIZE_MODES),
        metavar="{" + ",".join(NORMALIZE_MODES) + "}",
    )  # fmt: skip
    # ---- the recipe
    epochs: int = setting(30, "training epochs", _at_least(1), "an integer >= 1")
    batch_size: int = setting(256, "global batch (over all processes)", _at_least(1), "an integer >= 1")
    lr: float | None = setting(
        None, "peak learning rate (unset: --lr-base x batch / 256)", _optional(lambda v: _number(v) and v > 0),
        "a number > 0 (or unset: --lr-base x batch / 256)",
    )  # fmt: skip
    lr_base: float = setting(0.1, "learning rate per 256 images", lambda v: _number(v) and v > 0, "a number > 0")
    momentum: float = setting(0.9, "SGD momentum", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
    nesterov: bool = setting(True, "Nesterov momentum")
    weight_decay: float = setting(
        5e-4, "on conv and linear weights only (not BN or biases)", lambda v: _number(v) and v >= 0, "a number >= 0"
    )
    label_smoothing: float = setting(
        0.1, "of the cross-entropy targets", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"
    )
    warmup_epochs: float = setting(
        1.0, "linear warm-up length, then cosine", lambda v: _number(v) and v >= 0, "a number of epochs >= 0"
    )
    min_lr: float = setting(0.0, "floor of the cosine schedule", lambda v: _number(v) and v >= 0, "a number >= 0")
    aug: str = setting(
        "none", "added to crop + flip; randaugment, trivialaugment and autoaugment need a folder dataset",
        lambda v: v in AUG_POLICIES, ", ".join(AUG_POLICIES), metavar="{" + ",".join(AUG_POLICIES) + "}",
    )  # fmt: skip
    aug_ops: int = setting(
        2, "RandAugment: operations per image", lambda v: _is_int(v) and 1 <= v <= 14,
        "an integer from 1 to 14 (RandAugment has 14 operations)",
    )  # fmt: skip
    aug_magnitude: int = setting(
        9, "RandAugment: magnitude on torchvision's 0-30 scale", lambda v: _is_int(v) and 0 <= v <= 30,
        "an integer from 0 to 30",
    )  # fmt: skip
    random_erasing: float = setting(
        0.0, "probability of erasing a random box per image (filled with noise)", lambda v: _number(v) and 0 <= v <= 1,
        "a probability in [0, 1]", metavar="P",
    )  # fmt: skip
    cutout: int = setting(0, "side of one square per image set to the mean (0: off)", _at_least(0),
                          "a side in pixels >= 0 (0: off)", metavar="N")  # fmt: skip
    freeze: str = setting(
        "none", "bn: BN statistics stay the --weights' (scale and shift still learn); backbone: only the classifier "
        "learns, BN statistics frozen too (a linear probe)", lambda v: v in FREEZE_MODES, ", ".join(FREEZE_MODES),
        metavar="{" + ",".join(FREEZE_MODES) + "}",
    )  # fmt: skip
    backbone_lr: float = setting(
        1.0, "multiplies the lr of every weight but the classifier (e.g. 0.1 when fine-tuning from --weights)",
        lambda v: _number(v) and v >= 0, "a number >= 0",
    )  # fmt: skip
    ema: bool = setting(False, "evaluate and save an EMA of the weights")
    ema_decay: float = setting(
        0.9998, "per step, warmed up as in timm", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"
    )
    seed: int = setting(0, "seeds the weights, the data order and the augmentation", _at_least(0), "an integer >= 0")
    # ---- speed
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda or cuda:N", lambda v: isinstance(v, str),
                          "auto, cpu, cuda or cuda:N")  # fmt: skip
    amp: bool | None = setting(
        None, "bf16 autocast (unset: chosen by --speed; under --speed off, on for CUDA and for CPUs with native "
        "bf16, AVX512-BF16 or AMX)", _optional(lambda v: isinstance(v, bool)),
        "true or false (or unset: chosen by --speed)",
    )  # fmt: skip
    amp_dtype: str = setting(
        "bfloat16", "float16 adds a GradScaler (CUDA only)", lambda v: v in ("bfloat16", "float16"),
        "bfloat16 or float16", metavar="{bfloat16,float16}",
    )  # fmt: skip
    speed: str | None = setting(
        None, "auto: before the first epoch, time a few steps of each candidate (channels-last, torch.compile where "
        "the run repays it, bf16 where native) and keep the fastest, cached per model, batch and machine; probe: the "
        "same, ignoring the cache; off: the plain settings (unset: $LIGHTNETS_SPEED, else auto). Explicit "
        "--channels-last, --compile and --amp are not probed", _optional(lambda v: v in SPEED_MODES),
        ", ".join(SPEED_MODES) + " (or unset)", metavar="{" + ",".join(SPEED_MODES) + "}",
    )  # fmt: skip
    channels_last: bool | None = setting(
        None, "channels-last memory format (unset: chosen by --speed)", _optional(lambda v: isinstance(v, bool)),
        "true or false (or unset: chosen by --speed)",
    )  # fmt: skip
    compile: bool | None = setting(
        None, "torch.compile the model (unset: chosen by --speed)", _optional(lambda v: isinstance(v, bool)),
        "true or false (or unset: chosen by --speed)",
    )  # fmt: skip
    workers: int = setting(4, "DataLoader workers for folder datasets", _at_least(0), "an integer >= 0")
    sync_bn: bool = setting(False, "under torchrun on CUDA: BN statistics over the global batch (SyncBatchNorm)")
    # ---- the run
    out: str | None = setting(None, "run directory (unset: runs/MODEL-DATA-TIME)", _optional(_is_text), "a path")
    quiet: bool = setting(False, "no progress bars or per-epoch lines")
    log_every: int = setting(20, "steps between progress-bar updates (host syncs)", _at_least(1), "an integer >= 1")
    max_steps_per_epoch: int | None = setting(
        None, "cap on steps per epoch (smoke tests and benchmarks)", _optional(_at_least(1)),
        "an integer >= 1 (or unset)",
    )  # fmt: skip
    checkpoint_every: int = setting(
        0, "also write last.pt every N steps, so a kill costs at most N steps (0: at epoch ends only)",
        _at_least(0), "an integer >= 0 (0: only at epoch ends)", metavar="N",
    )  # fmt: skip
    deterministic: bool = setting(False, "deterministic kernels: on CPU, killed-and-resumed runs end bitwise equal")
    nan_policy: str = setting(
        "stop", "on a NaN/inf loss: stop (last.pt and best.pt stay the last good ones) or skip the update",
        lambda v: v in NAN_POLICIES, " or ".join(NAN_POLICIES), metavar="{stop,skip}",
    )  # fmt: skip
    strict: bool = setting(False, "an unreadable or non-image file in a folder dataset is an error, not skipped")
    allow_empty_classes: bool = setting(
        False, "a folder-dataset class without a readable train or val image is a warning, not an error"
    )
    model_kwargs: dict[str, Any] = setting(  # noqa: RUF009  (setting() returns a field with a default_factory)
        {}, "builder keyword arguments", lambda v: isinstance(v, dict), "a mapping of builder keyword arguments"
    )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(annotation: str) -> type | None:
    """The flag type of a field from its annotation (a string, under postponed evaluation)."""
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if annotation.startswith(name):
            return kind
    return None  # model_kwargs: set through --model-arg


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, its help and default from the field; every default is None so that a flag given on
    the command line can be told from one that was not (a --config file or args.yaml fills the rest)."""
    for item in fields(TrainConfig):
        kind = _kind(str(item.type))
        if kind is None:
            continue
        meta = item.metadata
        default = item.default if item.default is not MISSING else None
        text = meta["help"] + (f" (default {default})" if default is not None and kind is not bool else "")
        text += " (default on)" if kind is bool and default else ""
        options: dict[str, Any] = {"dest": item.name, "default": None, "help": text.strip()}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            options["metavar"] = meta["metavar"] or item.name.upper()
        parser.add_argument(flag(item.name), **options)


def config_from_values(values: dict[str, Any], base: dict[str, Any] | None = None) -> TrainConfig:
    """A config from ``base`` (e.g. a --config file) overridden by the given ``values`` (None means not given)."""
    merged = dict(base or {})
    merged.update({key: value for key, value in values.items() if value is not None})
    return TrainConfig.from_dict(merged)


def validate_config(config: TrainConfig) -> None:
    """Refuse an invalid setting with one line that gives its valid range; reads no data and builds no model."""
    for item in fields(config):
        value = getattr(config, item.name)
        if _kind(str(item.type)) is bool and item.metadata["check"] is None:
            if not isinstance(value, bool):
                raise ValueError(f"invalid {flag(item.name)} {value!r}: expected true or false")
        elif not item.metadata["check"](value):
            raise ValueError(f"invalid {flag(item.name)} {value!r}: expected {item.metadata['valid']}")
    speed_mode(config)  # refuses a bad $LIGHTNETS_SPEED before any data is read
    if config.weights is not None and not Path(config.weights).exists():
        raise ValueError(
            f"--weights {config.weights} does not exist; pass a checkpoint, a run directory or a weights file"
        )
    if config.freeze != "none" and config.weights is None:
        raise ValueError(f"--freeze {config.freeze} keeps parts of the --weights unchanged; pass --weights PATH too")
    if config.nesterov and config.momentum == 0:
        raise ValueError("--nesterov needs a --momentum > 0 (expected a number in (0, 1)); or pass --no-nesterov")
    if parse_data_spec(config.data).kind != "folder":  # its error lists the valid forms
        batch_augmentation(augment_spec(config), (0.5,) * 3, (0.5,) * 3)  # refuses what cannot run on batches
    if config.device != "auto":
        import torch

        try:
            torch.device(config.device)
        except RuntimeError:
            raise ValueError(f"invalid --device {config.device!r}: expected auto, cpu, cuda or cuda:N") from None


def augment_spec(config: TrainConfig) -> AugmentSpec:
    return AugmentSpec(config.aug, config.aug_ops, config.aug_magnitude, config.random_erasing, config.cutout)


class _RefuseDuplicateKeys(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a recipe that sets one twice is a mistake to show, not to guess."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key} is set twice (lines {seen[key]} and {line}); keep one", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a ``--config`` YAML file (keys as the flags, with - or _), checked for unknown keys and for
    a setting given twice."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path} does not exist")
    try:
        values = yaml.load(path.read_text(), Loader=_RefuseDuplicateKeys)  # a SafeLoader: builds plain data only
    except yaml.constructor.ConstructorError as error:
        raise ValueError(f"--config {path}: {error.problem}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"--config {path} is not readable YAML: {str(error).splitlines()[0]}") from None
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {path} must hold a mapping of settings (KEY: VALUE lines), not a {type(values).__name__}"
        )
    normalized: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in normalized:
            raise ValueError(f"--config {path}: {name} is set twice (as {spelled[name]} and {key}); keep one")
        normalized[name], spelled[name] = value, str(key)
    known = {item.name for item in fields(TrainConfig)}
    unknown = sorted(key for key in normalized if key not in known)
    if unknown:
        raise ValueError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    return normalized


def speed_mode(config: TrainConfig) -> str:
    """--speed, else $LIGHTNETS_SPEED (a test suite or a batch system pins it once for every run), else auto."""
    mode = config.speed or os.environ.get("LIGHTNETS_SPEED") or "auto"
    if mode not in SPEED_MODES:
        raise ValueError(f"invalid LIGHTNETS_SPEED={mode!r}: expected {', '.join(SPEED_MODES)}")
    return mode


def resolved_settings(config: TrainConfig, device: Any, bundle: Any, world_size: int) -> dict[str, Any]:
    """Everything that was decided, for args.yaml: the config with its unset values resolved (``config`` carries
    the speed settings chosen), and the input size and normalisation of ``bundle`` (the DataBundle trained on)."""
    input_size = bundle.input_size
    resolved = asdict(config)
    resolved.update(
        mean=list(bundle.mean),
        std=list(bundle.std),
        device=str(device),
        lr=config.lr if config.lr is not None else config.lr_base * config.batch_size / 256,
        speed=speed_mode(config),
        input_size=input_size,
        global_batch_size=config.batch_size,
        world_size=world_size,
        per_process_batch_size=config.batch_size // world_size,
    )
    return resolved


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run was started with, from its args.yaml (resolved extras are dropped)."""
    path = Path(run_dir) / "args.yaml"
    if not path.is_file():
        raise ValueError(f"cannot resume {run_dir}: {path} is missing (is it a lightnets run directory?)")
    values = yaml.safe_load(path.read_text()) or {}
    known = {item.name for item in fields(TrainConfig)}
    config = TrainConfig.from_dict({key: value for key, value in values.items() if key in known})
    config.out = str(run_dir)
    return config

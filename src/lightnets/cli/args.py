"""Argument helpers the command modules share: KEY=VALUE builder kwargs, lower bounds, integer lists, and the
flags for weights files that do not name their model."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_foreign_weights_flags", "int_list", "model_kwargs_from", "require"]


def model_kwargs_from(items: list[str] | None) -> dict[str, Any]:
    import yaml

    kwargs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def require(value: int, option: str, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"invalid {option} {value}: expected an integer >= {minimum}")


def add_foreign_weights_flags(parser: argparse.ArgumentParser, model_help: str = "") -> None:
    """--model, --model-arg and --ema: for weights files that do not name their model (the authors' checkpoints)."""
    parser.add_argument(
        "--model",
        help=model_help
        or "registered name, for a checkpoint that does not name its model (the authors' files; README, "
        "'Using the authors' weights')",
    )
    parser.add_argument(
        "--model-arg", dest="model_arg", action="append", metavar="KEY=VALUE", help="builder kwarg, repeatable"
    )
    parser.add_argument("--ema", action="store_true", help="load the file's EMA weights (state_dict_ema)")


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values

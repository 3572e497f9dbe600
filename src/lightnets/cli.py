"""The ``lightnets`` command line: ``lightnets models`` lists the zoo with its complexity."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _model_names(pattern: str) -> list[str]:
    """Registered names matching the comma-separated patterns; ``tv:``/``timm:`` entries pass through."""
    from lightnets.models import list_models
    from lightnets.models.registry import BASELINE_PREFIXES

    names: list[str] = []
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        if part.startswith(BASELINE_PREFIXES):
            names.append(part)
            continue
        matches = list_models(part)
        if not matches:
            from lightnets.models.registry import unknown_model_error

            raise unknown_model_error(part)
        names.extend(m for m in matches if m not in names)
    return names


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |" if markdown else "  ".join(padded).rstrip()

    separator = (
        "|" + "|".join(("-" * (w + 1) + ":") if num else "-" * (w + 2) for w, num in zip(widths, numeric)) + "|"
        if markdown
        else "  ".join("-" * w for w in widths)
    )
    return "\n".join([line(headers), separator, *(line(r) for r in cells)])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def cmd_models(args: argparse.Namespace) -> int:
    from lightnets import complexity, create_model

    headers = ["model", "input", "params (M)", "deploy params (M)", "MACs (M)", "deploy MACs (M)"]
    names = _model_names(args.pattern)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    # Plain tables stream a row per model (the big ParNets take seconds each on a small CPU), so the
    # widths are fixed up front: names are known, numbers fit under their headers.
    widths = [max(len(headers[0]), *map(len, names)), *map(len, headers[1:])]
    if not args.markdown:
        print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        print("  ".join("-" * w for w in widths))
    rows = []
    for name in names:
        stats = complexity(create_model(name, **kwargs), args.input_size)
        row = [
            name,
            str(stats.input_size),
            f"{stats.params / 1e6:.3f}",
            f"{stats.deploy_params / 1e6:.3f}",
            f"{stats.macs / 1e6:.1f}",
            f"{stats.deploy_macs / 1e6:.1f}",
        ]
        rows.append(row)
        if not args.markdown:
            print(
                "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))), flush=True
            )
    if args.markdown:
        print(format_table(headers, rows, markdown=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightnets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list models with params and MACs (training and deploy form)")
    models.add_argument("pattern", nargs="?", default="*", help="shell pattern(s), comma-separated; tv:/timm: names")
    models.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's)")
    models.add_argument("--num-classes", type=int, default=None, help="classifier width (default: the form's)")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:
        print(f"lightnets {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

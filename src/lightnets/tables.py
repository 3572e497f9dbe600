"""Plain-text and Markdown tables for the command line: numbers right-aligned, everything else left."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))  # thousands separators: "1,234,567"
    except ValueError:
        return False
    return True


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

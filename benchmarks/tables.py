"""The one table layout the benchmark scripts print: Markdown (for the README) or aligned text."""

from __future__ import annotations

from typing import List, Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool, text_columns: int = 0) -> str:
    """``rows`` of cells under ``header``; in text, the first ``text_columns`` columns are
    left-aligned (labels) and the rest right-aligned (figures), under a rule of dashes."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out: List[str] = [line(header), line(["-" * w for w in widths])]
    return "\n".join(out + [line(row) for row in rows])

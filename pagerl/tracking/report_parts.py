"""Building blocks of the run report: Markdown tables, number formats, and plots.

The report (:mod:`pagerl.app.report`) and every stage's own report section
(:mod:`pagerl.stages`) are written with these, so a table or a plot looks the
same wherever it comes from.

Plots are drawn on :class:`matplotlib.figure.Figure` objects rendered by the
Agg canvas, never through ``pyplot``: no global backend switch, no window,
nothing left open in the caller's process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pagerl.tracking.metrics import METRICS_FILE, metric_series, read_metrics

PLOTS_DIR = "plots"


def skipped(title: str, why: str) -> str:
    return f"## {title}\n\n_Skipped: {why}._"


def curve_section(run_dir: Path, plots: Path, stage: str, title: str) -> str:
    """The training-loss curve of one stage, plotted and summarised."""
    if not (run_dir / METRICS_FILE).exists():
        return skipped(title, f"`{METRICS_FILE}` not found")
    steps, values = metric_series(read_metrics(run_dir, stage=stage), stage, "loss")
    points = [(s, v) for s, v in zip(steps, values) if v is not None]
    if not points:
        return skipped(title, f"no `loss` of stage `{stage}` in `{METRICS_FILE}`")
    nonfinite = len(steps) - len(points)
    png = plot_curve(points, plots / f"{stage}_loss.png", f"{stage.upper()} training loss", "loss")
    losses = [v for _, v in points]
    lines = [
        f"## {title}",
        "",
        f"![{stage} loss]({PLOTS_DIR}/{png.name})",
        "",
        f"Training loss of stage `{stage}` per optimizer step, from `{METRICS_FILE}` "
        "(last value per step, so a resumed stage shows the run that went on).",
        "",
    ]
    lines += markdown_table(
        ["points", "first step", "last step", "first loss", "last loss", "min loss"],
        [[len(points), points[0][0], points[-1][0], fmt(losses[0]), fmt(losses[-1]), fmt(min(losses))]],
    )
    if nonfinite:
        lines += ["", f"**{nonfinite} step(s) logged a non-finite loss** (null in `{METRICS_FILE}`)."]
    return "\n".join(lines)


def plot_panels(panels: Sequence[Tuple[str, Sequence[str]]], stage: str,
                 rows_of: Callable[[str], Sequence[Mapping[str, Any]]], xlabel: str, path: Path) -> Path:
    """Two rows of panels, one curve per metric key; keys named ``eval/*`` are sparse (marked points)."""
    columns = (len(panels) + 1) // 2
    fig = Figure(figsize=(6.0 * columns, 6.4))
    for i, (name, keys) in enumerate(panels):
        ax = fig.add_subplot(2, columns, i + 1)
        for key in keys:
            sparse = key.startswith("eval/")
            steps, values = metric_series(rows_of(key), stage, key)
            ax.plot(steps, [v if v is not None else math.nan for v in values], label=key, linewidth=1.3,
                    marker="o" if sparse else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_curve(points: Sequence[Tuple[int, float]], path: Path, title: str, ylabel: str) -> Path:
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    ax.plot(steps, values, marker="." if len(points) < 60 else None, linewidth=1.5)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def mean_se(mean: Any, se: Any, ci: Any = None) -> str:
    """``0.512 ± 0.010 [0.492, 0.531]``: mean ± standard error [bootstrap interval], fixed decimals
    so a column of means lines up."""
    value = number(mean)
    if value is None:
        return "" if mean is None else fmt(mean)
    text = f"{value:.3f}"
    if number(se) is not None:
        text += f" ± {number(se):.3f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(number(c) is not None for c in ci):
        text += f" [{number(ci[0]):.3f}, {number(ci[1]):.3f}]"
    return text


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if len(value) > 8:
            return f"[{len(value)} values]"
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def union_keys(dicts: Any) -> List[str]:
    keys: List[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return keys


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> List[str]:
    """A GitHub Markdown table, columns padded so it also reads in a terminal."""
    cells = [[_cell(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for n, row in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def _cell(value: Any) -> str:
    return (value if isinstance(value, str) else fmt(value)).replace("|", "\\|").replace("\n", " ")

"""The run report: one Markdown file with PNG plots, and the same sections as one self-contained
HTML page (:mod:`pagerl.tracking.html_report`), written from a run directory.

Why from files and not from objects in memory: the report must be
re-creatable after the fact (``write_report(run_dir)`` on a finished or a
crashed run, on a laptop after copying the run dir back from a cluster), so
it reads only what the stages wrote:

    <run_dir>/recipe.yaml          the resolved recipe            -> "Recipe"
    <run_dir>/data/stats.json      data statistics (a dict)       -> "Data"
    each stage's own files         its report sections            -> (pagerl.stages, registry order)
    <run_dir>/ablation/            pagerl ablate's table          -> "Reward ablation"
    <run_dir>/timings.json         each stage attempt's seconds   -> "Where the time went"

The report names no stage: each stage of :data:`pagerl.stages.STAGES` writes
its own sections (``Stage.report``) and its lines under "Where the time went"
(``Stage.time_report``). A missing input skips its section with a note
saying which file was absent, so a partial run still gets a report. A present
but malformed input raises ValueError naming the file: our own stages wrote
it, so it is a bug to see.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from pagerl.app.ablation_table import ABLATION_DIR, RESULTS_FILE, format_markdown
from pagerl.stages import STAGES
from pagerl.tracking.html_report import render_html
from pagerl.tracking.records import read_json, replace_text
from pagerl.tracking.report_parts import PLOTS_DIR, flatten, fmt, markdown_table, skipped, union_keys
from pagerl.tracking.timings import TIMINGS_FILE, read_stage_times, total_seconds

REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``<run_dir>/report.md``, ``<run_dir>/report.html`` (the same sections as one
    self-contained page) and ``<run_dir>/plots/*.png``; return the Markdown's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist; nothing to report")
    plots = run_dir / PLOTS_DIR
    recipe = _read_yaml(run_dir / "recipe.yaml")
    name = _dig(recipe, "run", "name") if recipe else None
    title = f"Run report: {name or run_dir.name}"
    ablation = read_json(run_dir / ABLATION_DIR / RESULTS_FILE)
    sections: Dict[str, str] = {
        "title": f"# {title}",
        "written": f"Run directory `{run_dir}`, report written "
        f"{_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "recipe": _recipe_section(recipe),
        "data": _data_section(read_json(run_dir / "data" / "stats.json")),
    }
    lead = ["title", "written"]
    for entry in STAGES.values():
        for i, text in enumerate(entry.report(run_dir, plots)):
            key = f"{entry.name}.{i}"
            sections[key] = text
            if entry.report_leads:
                lead.append(key)
    sections["ablation"] = _ablation_section(ablation)
    sections["time"] = _time_section(run_dir, ablation)
    # The page opens on the evaluation and folds the long recipe away; the Markdown keeps run order.
    page = render_html(title, sections, run_dir, lead=lead, folded=("recipe",))
    replace_text(run_dir / REPORT_FILE, "\n\n".join(s for s in sections.values() if s).rstrip() + "\n")
    replace_text(run_dir / HTML_REPORT_FILE, page)
    return run_dir / REPORT_FILE


def _read_yaml(path: Path) -> Optional[Dict[str, Any]]:
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of recipe sections, got {type(data).__name__}")
    return data


def _dig(data: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def _recipe_section(recipe: Optional[Dict[str, Any]]) -> str:
    title = "Recipe"
    if recipe is None:
        return skipped(title, "`recipe.yaml` not found in the run directory")
    lines = [f"## {title}", "", "The resolved recipe (full text in `recipe.yaml`):", ""]
    for section, values in recipe.items():
        if isinstance(values, Mapping):
            flat = flatten(values)
            body = ", ".join(f"{k}={fmt(v)}" for k, v in flat.items()) or "(empty)"
        else:
            body = fmt(values)
        lines.append(f"- **{section}**: {body}")
    return "\n".join(lines)


def _data_section(stats: Optional[Any]) -> str:
    title = "Data"
    if stats is None:
        return skipped(title, "`data/stats.json` not found")
    if not isinstance(stats, dict):
        raise ValueError(f"data/stats.json: expected a JSON object, got {type(stats).__name__}")
    if not stats:
        return skipped(title, "`data/stats.json` is empty")
    lines = [f"## {title}", "", "From `data/stats.json`:"]
    if _is_per_part(stats):
        lines += ["", *_parts_table(stats)]
        return "\n".join(lines)
    # Per-part groups (e.g. "stats": {"train": {...}, "eval": {...}}) get a
    # column per part; everything else goes in one key/value table.
    rest = {}
    for key, value in stats.items():
        if _is_per_part(value):
            lines += ["", f"`{key}`:", "", *_parts_table(value)]
        else:
            rest[key] = value
    if rest:
        lines += ["", *markdown_table(["statistic", "value"], [[k, fmt(v)] for k, v in flatten(rest).items()])]
    return "\n".join(lines)


def _is_per_part(value: Any) -> bool:
    """A non-empty mapping whose values are all mappings: statistics per part."""
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, Mapping) for v in value.values())


def _parts_table(parts: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """One column per part (e.g. train / eval), one row per statistic."""
    names = list(parts)
    flats = {p: flatten(parts[p]) for p in names}
    keys = union_keys(flats[p] for p in names)
    rows = [[k] + [fmt(flats[p].get(k, "")) for p in names] for k in keys]
    return markdown_table(["statistic"] + names, rows)


def _ablation_section(table: Optional[Any]) -> str:
    """The reward ablation's table (``ablation/ablation.json``) when ``pagerl ablate`` ran on this run
    directory (else nothing)."""
    if table is None:
        return ""
    return "\n".join(["## Reward ablation", "", *format_markdown(table)])


def _time_section(run_dir: Path, ablation: Optional[Any]) -> str:
    """Where the run's wall time went: per stage (``timings.json``, written by the pipeline), each
    stage's own lines (``Stage.time_report``: the RL steps' seconds by phase), and the ablation's
    variant runs (their own ``timings.json``)."""
    title = "Where the time went"
    times = read_stage_times(run_dir)
    if not times:
        return skipped(title, f"`{TIMINGS_FILE}` not found")
    total = total_seconds(times)
    rows = []
    for stage, attempts in times.items():
        seconds = total_seconds({stage: attempts})
        outcomes = ", ".join(str(a["outcome"]) for a in attempts)
        rows.append([f"`{stage}`", len(attempts), outcomes, f"{seconds:.1f}", f"{100 * seconds / total:.1f}%"
                     if total > 0 else "-"])
    lines = [f"## {title}", "",
             f"Wall-clock seconds of each stage this run directory ran (`{TIMINGS_FILE}`, written by "
             "`pagerl.app.pipeline.run` around each stage: start-up, loading, checkpoints and end-of-stage "
             "evaluation included; a stage resumed after a stop or a failure has one attempt per run).", ""]
    lines += markdown_table(["stage", "attempts", "outcomes", "seconds", "share"], rows)
    for entry in STAGES.values():
        lines += list(entry.time_report(run_dir))
    lines += _ablation_time_lines(ablation)
    return "\n".join(lines)


def _ablation_time_lines(ablation: Optional[Any]) -> List[str]:
    """The variant runs of ``pagerl ablate`` (each its own run directory and record), summed per variant."""
    runs = ablation.get("runs") if isinstance(ablation, dict) else None
    if not isinstance(runs, dict) or not runs:
        return []
    rows = []
    for variant, by_seed in runs.items():
        seconds = [total_seconds(read_stage_times(path)) for path in by_seed.values()]
        rows.append([f"`{variant}`", len(seconds), f"{sum(seconds):.1f}"])
    return ["", "The reward ablation's variant runs (RL and eval of each variant and seed, in their own run "
            "directories under `ablation/`, each with its own record):", "",
            *markdown_table(["variant", "runs", "seconds"], rows)]

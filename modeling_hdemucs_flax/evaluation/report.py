"""An `Evaluation` for people and programs: a JSON document, a Markdown table, a box plot. Files are written
atomically (a temporary name beside the destination, renamed into place when complete), so a reader never sees
half of one. matplotlib is imported by `plot_evaluation` only (the [evaluate] extra).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..io import tempfiles
from .evaluate import FIGURES, Evaluation

PARTIAL = ".partial"  # the suffix of a file being written (`tempfiles.new_name`)
# The table's columns: (figure, statistic, heading). The MDX SDR is averaged over tracks (the challenge's
# ranking), the BSS-Eval figures take the median over tracks of the per-track medians (SiSEC's).
TABLE_COLUMNS = (
    ("sdr", "mean", "SDR (MDX) mean"),
    ("sdr", "median", "SDR (MDX) median"),
    ("bss_sdr", "median", "SDR (BSS v4) median"),
    ("sir", "median", "SIR median"),
    ("isr", "median", "ISR median"),
    ("sar", "median", "SAR median"),
)


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: both are written as null."""
    return value if math.isfinite(value) else None


def evaluation_json(evaluation: Evaluation, **about: Any) -> dict[str, Any]:
    """The JSON document: {"tracks": {track: {source: {figure: dB}}}, "summary": {source: {figure: {"median",
    "mean"}}}, "overall": {figure: {"median", "mean"}} (means over sources), "sources", "figures", "warnings",
    and `about` (what was scored, how) under "settings"}. Values in dB; NaN and ±inf as null."""
    return {
        "tracks": {
            track: {
                source: {figure: _finite_or_none(value) for figure, value in figures.items()}
                for source, figures in sources.items()
            }
            for track, sources in evaluation.tracks.items()
        },
        "summary": {
            source: {
                figure: {statistic: _finite_or_none(value) for statistic, value in statistics.items()}
                for figure, statistics in figures.items()
            }
            for source, figures in evaluation.summary().items()
        },
        "overall": {
            figure: {statistic: _finite_or_none(value) for statistic, value in statistics.items()}
            for figure, statistics in evaluation.overall().items()
        },
        "sources": list(evaluation.sources),
        "figures": list(FIGURES),
        "warnings": list(evaluation.warnings),
        "settings": about,
    }


def write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` under a temporary name beside it, renamed over `path` only once complete; nothing
    is left behind when writing fails or is interrupted. The folder is made when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = tempfiles.new_name(path, PARTIAL)
    try:
        with os.fdopen(tempfiles.create(temp), "wb") as handle:
            handle.write(data)
        return tempfiles.finish(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, document: dict[str, Any]) -> Path:
    """Write `document` (NaN-free: see `evaluation_json`) as indented JSON, atomically."""
    return write_atomically(path, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode())


def _cell(value: float) -> str:
    return f"{value:.2f}" if not math.isnan(value) else "n/a"


def markdown_table(evaluation: Evaluation) -> str:
    """A Markdown table of the summary: one row per source and one for their mean ("all"), in dB."""
    summary, overall = evaluation.summary(), evaluation.overall()
    lines = [
        "| source | " + " | ".join(heading for _, _, heading in TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    rows = [(source, summary[source]) for source in evaluation.sources] + [("all", overall)]
    for name, figures in rows:
        cells = [_cell(figures[figure][statistic]) for figure, statistic, _ in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What `--plot FILE` writes, by FILE's extension: matplotlib's formats that need nothing beyond it.
PLOT_FORMATS = ("png", "pdf", "svg")


def plot_format(path: str | os.PathLike) -> str | None:
    """The plot format `path`'s extension names (one of `PLOT_FORMATS`), or None."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in PLOT_FORMATS else None


def render_plot(evaluation: Evaluation, title: str = "", format: str = "png") -> bytes:
    """A PNG (or a PDF or SVG: `format`): for each figure a panel with one box per source of the tracks' values
    (NaN left out), in dB. Needs matplotlib (the [evaluate] extra); draws on its Agg canvas, never a window."""
    if format not in PLOT_FORMATS:
        raise ValueError(f"plot format {format!r}: one of {', '.join(PLOT_FORMATS)}")
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # a figure of its own: no pyplot state, no window

    figure = Figure(figsize=(3.2 * len(FIGURES), 4.2), layout="constrained")
    axes = figure.subplots(1, len(FIGURES))
    for axis, name in zip(axes, FIGURES, strict=True):
        data = [
            [v for v in (evaluation.tracks[t][source][name] for t in evaluation.tracks) if math.isfinite(v)]
            for source in evaluation.sources
        ]
        axis.boxplot(data, tick_labels=list(evaluation.sources), showmeans=True)
        axis.set_title({"sdr": "SDR (MDX)", "bss_sdr": "SDR (BSS v4)"}.get(name, name.upper()))
        axis.set_ylabel("dB")
        axis.tick_params(axis="x", labelrotation=30)
        axis.grid(axis="y", alpha=0.3)
    tracks = len(evaluation.tracks)
    counted = f"{tracks} track{'s' if tracks != 1 else ''}"
    figure.suptitle(f"{title} ({counted})" if title else counted)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=format, dpi=100, metadata={"Date": None} if format == "svg" else None)
    return buffer.getvalue()


def plot_evaluation(evaluation: Evaluation, path: str | os.PathLike, title: str = "") -> Path:
    """`render_plot`'s figure written to `path` atomically, in the format its extension names (.png, .pdf, .svg;
    a `ValueError` for any other)."""
    format = plot_format(path)
    if format is None:
        raise ValueError(f"{path}: a plot is written as {', '.join('.' + f for f in PLOT_FORMATS)}; name it so")
    return write_atomically(path, render_plot(evaluation, title, format))

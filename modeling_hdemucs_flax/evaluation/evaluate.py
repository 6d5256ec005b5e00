"""Scoring separations of a multitrack dataset (MUSDB18-HQ's layout, see `io.multitrack`): the run behind
`hdemucs-flax evaluate`.

    plan_evaluation (every track found, every header checked) -> per track: read the references, separate the
    mixture (a `Separator`) or read the estimates on disk -> score_track (bss_eval) -> Evaluation

Each track and source gets the MDX challenge's SDR (`sdr`, over the whole track) and the medians over 1 s frames
of BSS-Eval v4's SDR, SIR, ISR and SAR (`bss_sdr`, `sir`, `isr`, `sar`), as SiSEC 2018 and demucs's papers report
them; `Evaluation.summary` gives, per source and figure, the median and the mean over tracks. Presenting them
(JSON, Markdown, a plot) is `evaluation.report`'s. Imports numpy and the light I/O modules only; a `Separator`
is passed in by the caller.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DatasetError
from ..io.audio_io import AudioInfo
from ..io.multitrack import (
    Multitrack,
    check_multitrack,
    dataset_folder,
    find_estimates,
    find_multitracks,
    header_difference,
    read_multitrack,
)
from .bss_eval import bss_eval_v4, new_sdr, silent_sources

if TYPE_CHECKING:
    from ..separation.separator import Separator

# The figures of each track and source, in the order they are written: the MDX SDR, then BSS-Eval v4's.
FIGURES = ("sdr", "bss_sdr", "sir", "isr", "sar")
MUSDB_SOURCES = ("drums", "bass", "other", "vocals")  # MUSDB18's stems, the sources scored by default on disk
WINDOW_SECONDS = 1.0  # BSS-Eval's frame (and hop), as museval.evaluate and SiSEC use
# (tracks done, tracks in all, the track under way or None at the end); `done` is fractional while a track's
# mixture is being separated (its chunks done, scaled to `SEPARATION_SHARE` of the track).
Progress = Callable[[float, int, "str | None"], None]
SEPARATION_SHARE = (
    0.8  # of a track's progress: a 4-min track takes ~60 s to separate (high HDemucs, 2-core Xeon), ~19 s to score
)


@dataclass(frozen=True)
class EvaluationPlan:
    """What a run scores, checked before any audio is read: the dataset `folder` (after --subset), the `sources`,
    each track's reference files and their common header (`infos`, in track order), and the estimates on disk
    and their common header (`estimates`, `estimate_infos`, in track order) or None where the mixtures are to be
    separated."""

    folder: Path
    sources: tuple[str, ...]
    references: list[Multitrack]
    infos: list[AudioInfo]
    estimates: list[Multitrack] | None
    estimate_infos: list[AudioInfo] | None


def plan_evaluation(
    dataset: str | os.PathLike,
    sources: Sequence[str],
    *,
    estimates: str | os.PathLike | None = None,
    subset: str | None = None,
) -> EvaluationPlan:
    """Find every track of `dataset` (or its `subset`, "train" or "test") with a file per source (and a mixture
    unless `estimates` is given), and every track's estimates under `estimates`; read every header. A
    `DatasetError` naming the track for a missing file, or files of a track (references, mixture, estimates) that
    differ in sample rate, channel count or length."""
    sources = tuple(sources)
    if not sources:
        raise DatasetError("no sources to score")
    folder = dataset_folder(dataset, subset)
    separate = estimates is None
    references = find_multitracks(folder, sources, need_mixture=separate)
    infos = [check_multitrack(track, sources, with_mixture=separate) for track in references]
    if estimates is None:
        return EvaluationPlan(folder, sources, references, infos, None, None)
    found = find_estimates(estimates, references, sources)
    found_infos = [check_multitrack(estimate, sources) for estimate in found]
    for reference, info, estimate_info in zip(references, infos, found_infos, strict=True):
        differs = header_difference(estimate_info, info)
        if differs is not None:
            what, got, want = differs
            raise DatasetError(
                f"track {reference.name!r}: the estimate {estimate_info.path} has {what} {got}, the "
                f"reference {info.path.name} has {want}; estimates must match their references"
            )
    return EvaluationPlan(folder, sources, references, infos, found, found_infos)


def score_track(
    references: np.ndarray, estimates: np.ndarray, sample_rate: int, window: float = WINDOW_SECONDS
) -> dict[str, np.ndarray]:
    """{figure: float64 (sources,)} in dB for one track: `sdr` (MDX, whole track) and the medians over frames of
    `window` seconds of BSS-Eval v4's `bss_sdr`, `sir`, `isr`, `sar` (NaN where every frame held a silent source).
    references, estimates: float (sources, channels, samples) at `sample_rate` Hz."""
    frame = int(window * sample_rate)  # museval.evaluate's int(win * rate)
    medians = bss_eval_v4(references, estimates, window=frame, hop=frame).medians()
    return {
        "sdr": new_sdr(references, estimates),
        "bss_sdr": medians["sdr"],
        "sir": medians["sir"],
        "isr": medians["isr"],
        "sar": medians["sar"],
    }


def _nan_statistic(values: list[float], statistic: Callable[[np.ndarray], float]) -> float:
    kept = np.array([v for v in values if not math.isnan(v)])
    return float(statistic(kept)) if kept.size else math.nan


@dataclass(frozen=True)
class Evaluation:
    """The figures of a run: `tracks` {track: {source: {figure: dB}}} (figures as `FIGURES`; NaN where a figure
    has no value), the `sources` scored in order, and the `warnings` said along the way."""

    sources: tuple[str, ...]
    tracks: dict[str, dict[str, dict[str, float]]]
    warnings: tuple[str, ...] = ()

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """{source: {figure: {"median": ..., "mean": ...}}}: each over the tracks' values (NaN values left out; NaN
        when all are). The median of `bss_sdr` is SiSEC's headline figure, the mean of `sdr` the MDX challenge's."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for source in self.sources:
            out[source] = {}
            for figure in FIGURES:
                values = [self.tracks[track][source][figure] for track in self.tracks]
                out[source][figure] = {
                    "median": _nan_statistic(values, np.median),
                    "mean": _nan_statistic(values, np.mean),
                }
        return out

    def overall(self) -> dict[str, dict[str, float]]:
        """{figure: {"median": ..., "mean": ...}}: the mean over sources of `summary`'s medians and means (demucs's
        "sdr_med" and "sdr"); NaN when a source has none."""
        summary = self.summary()
        return {
            figure: {
                statistic: float(np.mean([summary[source][figure][statistic] for source in self.sources]))
                for statistic in ("median", "mean")
            }
            for figure in FIGURES
        }


def evaluate(
    dataset: str | os.PathLike,
    *,
    separator: Separator | None = None,
    estimates: str | os.PathLike | None = None,
    subset: str | None = None,
    sources: Sequence[str] | None = None,
    window: float = WINDOW_SECONDS,
    out: str | os.PathLike | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> Evaluation:
    """Score separations of the tracks of `dataset` (a folder in MUSDB18-HQ's layout; `subset` "train" or "test"
    picks MUSDB's subfolder) against their reference stems.

    Exactly one of `separator` (each track's mixture.wav is separated in memory) and `estimates` (a folder holding
    `<track>/<source>.<ext>` for every track) says what is scored. `sources`: the stems to score (default: the
    separator's sources, or MUSDB's drums, bass, other, vocals for `estimates`). `window`: BSS-Eval's frame and hop
    in seconds. `out` (with `separator` only): also write each track's estimates there as float32 WAV, in the
    `estimates` layout, so a later run with `estimates=out` scores the very same samples. `progress(done, total,
    track)` is called before each track, as its mixture is separated (`done` fractional), and once at the end
    (track None); `warn(line)` gets each warning (a
    source silent throughout a track, whose BSS-Eval figures are then NaN), also kept in `Evaluation.warnings`.

    Raises `DatasetError` (one line naming the track) for missing or mismatched files, before any audio is read
    where the headers tell."""
    if (separator is None) == (estimates is None):
        raise ValueError("evaluate needs exactly one of separator= (separate the mixtures) and estimates= (a folder)")
    if out is not None and separator is None:
        raise ValueError("out= keeps a separator's estimates; with estimates= they are on disk already")
    if sources is None:
        sources = separator.sources if separator is not None else MUSDB_SOURCES
    elif separator is not None:
        unknown = [name for name in sources if name not in separator.sources]
        if unknown:
            raise DatasetError(
                f"the model has no {', '.join(unknown)} source (it separates {', '.join(separator.sources)})"
            )
    plan = plan_evaluation(dataset, sources, estimates=estimates, subset=subset)
    if separator is not None:
        check_separable(plan, separator)
    if out is not None:
        check_out_folder(out, plan.folder)
    return run_evaluation(plan, separator=separator, window=window, out=out, progress=progress, warn=warn)


def check_separable(plan: EvaluationPlan, separator: Separator) -> None:
    """A `DatasetError` naming the first track of `plan` whose channel count `separator` cannot take."""
    for track, info in zip(plan.references, plan.infos, strict=True):
        try:
            separator.check_channels(info.channels, f"track {track.name!r}")
        except ValueError as error:  # AudioError
            raise DatasetError(str(error)) from None


def check_out_folder(out: str | os.PathLike, folder: Path) -> None:
    """A `DatasetError` for an `out` folder that is the dataset's `folder`, lies in it or holds it: the estimates
    (`<track>/<source>.wav`) would replace the references."""
    resolved, dataset = Path(out).resolve(), folder.resolve()
    if resolved == dataset or resolved.is_relative_to(dataset) or dataset.is_relative_to(resolved):
        raise DatasetError(f"{out}: the estimates would be written over the dataset {folder}; choose another folder")


def run_evaluation(
    plan: EvaluationPlan,
    *,
    separator: Separator | None = None,
    window: float = WINDOW_SECONDS,
    out: str | os.PathLike | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> Evaluation:
    """Score the tracks of a checked `plan` (see `evaluate`, which checks its arguments and calls this)."""
    from ..errors import AudioError
    from ..io.audio_io import write_audio

    sources = list(plan.sources)
    tracks: dict[str, dict[str, dict[str, float]]] = {}
    warnings: list[str] = []
    total = len(plan.references)
    for index, track in enumerate(plan.references):
        if progress is not None:
            progress(index, total, track.name)
        audio = read_multitrack(track, sources, with_mixture=separator is not None, checked=plan.infos[index])
        if separator is not None:
            assert audio.mixture is not None  # plan_evaluation required it

            def chunks(done: int, chunks_total: int, index: int = index, name: str = track.name) -> None:
                if progress is not None:
                    progress(index + SEPARATION_SHARE * done / max(1, chunks_total), total, name)

            try:
                separated = separator.separate(audio.mixture, audio.sample_rate, progress=chunks)
            except AudioError as error:  # worded for an array ("<array>: ..."): name the track instead
                raise DatasetError(f"track {track.name!r}: {str(error).removeprefix('<array>: ')}") from None
            estimates = np.stack([separated[name] for name in sources])
            if out is not None:
                for name, stem in zip(sources, estimates, strict=True):
                    path = Path(out) / track.name / f"{name}.wav"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_audio(path, stem, audio.sample_rate, subtype="FLOAT")
        else:
            assert plan.estimates is not None and plan.estimate_infos is not None
            estimates = read_multitrack(plan.estimates[index], sources, checked=plan.estimate_infos[index]).stems
        for role, audio_set in (("reference", audio.stems), ("estimate", estimates)):
            silent = [name for name, quiet in zip(sources, silent_sources(audio_set), strict=True) if quiet]
            if silent:
                line = (
                    f"track {track.name!r}: the {' and '.join(silent)} {role}{'s are' if len(silent) > 1 else ' is'} "
                    "silent throughout, so every frame holds a silent source: the track's bss_sdr, sir, isr and sar "
                    "are NaN (museval refuses such a track) and left out of the summary"
                )
                warnings.append(line)
                if warn is not None:
                    warn(line)
        scores = score_track(audio.stems, estimates, audio.sample_rate, window)
        tracks[track.name] = {
            name: {figure: float(scores[figure][i]) for figure in FIGURES} for i, name in enumerate(sources)
        }
    if progress is not None:
        progress(total, total, None)
    return Evaluation(tuple(sources), tracks, tuple(warnings))

"""`hdemucs-flax evaluate` and its figures: BSS-Eval v4 against museval's own code (every frame of every source,
within 0.01 dB), the MDX SDR and the BSS figures against demucs's `eval_track`, the --estimates and --model routes
end to end, and one-line errors that leave nothing written.

museval is the reference, not a dependency: its `metrics.py` (numpy and scipy only) is loaded on its own, since
`import museval` needs musdb, stempeg and an ffmpeg binary. demucs's `evaluate.py` is loaded with stand-ins for
what it imports at the top and does not use in `eval_track` (dora, musdb; museval is the standalone metrics).

The references are synthetic songs' stems made genuinely stereo (each channel gets a part of its own): the
synthesizer pans each part as a mono source, and float channels proportional to within float32 rounding make the
normal equations singular to working precision, where museval's ISR/SIR/SAR depend on its own rounding (see
`bss_eval._solve`); dual-mono stems (bit-identical channels) are a case of their own below.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.evaluation.bss_eval import BSSEvalScores, bss_eval_v4, frame_bounds, new_sdr, silent_sources

from .conftest import SEGMENT_SECONDS
from .flows import REPO_ROOT, run_on_terminal
from .multitrack_helpers import track_stems, write_multitracks

RATE = 44100
TOLERANCE_DB = 0.01  # the bound asked for; the cases measure 4e-10 to 4e-7 dB (printed with -s)
MUSDB = ["drums", "bass", "other", "vocals"]


def _load_standalone(package: str, file: str, name: str) -> types.ModuleType:
    """`package`'s `file` as a module of its own, found without importing the package."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    folder = Path(next(iter(spec.submodule_search_locations)))
    file_spec = importlib.util.spec_from_file_location(name, folder / file)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def museval_metrics() -> types.ModuleType:
    """museval 0.4.1's `metrics.py` (BSS-Eval v4 as SiSEC publishes it), loaded alone."""
    return _load_standalone("museval", "metrics.py", "museval_metrics_reference")


def museval_frames(metrics: types.ModuleType, references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    """float64 (4, sources, frames): museval's SDR, ISR, SIR, SAR as museval.evaluate calls `bss_eval` (1 s
    window and hop), from (sources, channels, samples) arrays."""
    sdr, isr, sir, sar, _ = metrics.bss_eval(
        np.asarray(references, np.float64).transpose(0, 2, 1),
        np.asarray(estimates, np.float64).transpose(0, 2, 1),
        window=RATE,
        hop=RATE,
        compute_permutation=False,
        filters_len=512,
        framewise_filters=False,
        bsseval_sources_version=False,
    )
    return np.stack([sdr, isr, sir, sar])


def quiet_nanmedian(frames: np.ndarray) -> np.ndarray:
    """np.nanmedian over the last axis (frames), as demucs and museval take a track's figure; all-NaN rows give
    NaN without the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(frames, axis=-1)


def ours(scores: BSSEvalScores) -> np.ndarray:
    return np.stack([scores.sdr, scores.isr, scores.sir, scores.sar])


def assert_same_frames(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """Same NaN and infinite frames, finite ones within TOLERANCE_DB; returns the largest difference."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert (np.isnan(got) == np.isnan(want)).all(), f"{what}: NaN frames differ"
    assert (np.isinf(got) == np.isinf(want)).all() and (got[np.isinf(got)] == want[np.isinf(want)]).all()
    finite = np.isfinite(want)
    worst = float(np.max(np.abs(got[finite] - want[finite]), initial=0.0))
    assert worst < TOLERANCE_DB, f"{what}: max difference {worst:.3g} dB, tolerance {TOLERANCE_DB} dB"
    return worst


def stereo_stems(index: int, seconds: float, channels: int = 2, sources: int = 4) -> np.ndarray:
    """float64 (sources, channels, samples): track `index`'s synthetic stems, each channel given a decorrelated
    part of its own (a tenth of its level: filtered noise under the same envelope), so no two channels are
    proportional. Mono stays as it is."""
    samples = int(seconds * RATE)
    stems = track_stems(index, samples, RATE, channels)[:sources].astype(np.float64)
    if channels == 1:
        return stems
    rng = np.random.default_rng(500 + index)
    smooth = np.exp(-np.arange(64) / 12.0)
    for source in range(sources):
        envelope = np.convolve(np.abs(stems[source]).mean(0), np.ones(441) / 441, "same")
        for channel in range(channels):
            part = np.convolve(rng.standard_normal(samples), smooth, "same")
            stems[source, channel] += 0.1 * part / part.std() * envelope
    return stems


def degrade(references: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """Estimates: each reference plus noise `snr_db` below it, a tenth of the next source (interference) and a
    3-tap filter (spatial distortion)."""
    rng = np.random.default_rng(seed)
    level = np.sqrt(np.mean(np.square(references), axis=(1, 2), keepdims=True))
    noisy = references + 10 ** (-snr_db / 20) * level * rng.standard_normal(references.shape)
    noisy = noisy + 0.1 * np.roll(references, 1, axis=0)
    filtered = noisy.copy()
    filtered[..., 1:] += 0.2 * noisy[..., :-1]
    filtered[..., 2:] -= 0.05 * noisy[..., :-2]
    return filtered


def _silent_frames_case() -> tuple[np.ndarray, np.ndarray]:
    references = stereo_stems(4, 3.2, sources=3)
    references[1, :, RATE : int(2.2 * RATE)] = 0  # frame 1 silent for the bass, frame 2 in part
    estimates = degrade(references, 10, seed=4)
    estimates[2, :, : RATE // 2 + RATE] = 0  # the estimate silent over frame 0 and half of frame 1
    return references, estimates


def _dual_mono_case() -> tuple[np.ndarray, np.ndarray]:
    references = stereo_stems(5, 2.3, sources=3)
    references[1, 1] = references[1, 0]  # bit-identical channels: the Gram matrix is exactly singular
    return references, degrade(references, 10, seed=5)


def _silent_channel_case() -> tuple[np.ndarray, np.ndarray]:
    references = stereo_stems(15, 2.2, sources=3)
    references[0, 1] = 0  # a source in the left channel only: a zero block in the Gram matrix
    return references, degrade(references, 10, seed=15)


CASES = {
    # name: (references, estimates) made lazily
    "stereo, 0 dB noise": lambda: (r := stereo_stems(0, 2.3), degrade(r, 0, seed=0)),
    "stereo, 3 sources, 30 dB": lambda: (r := stereo_stems(1, 2.3, sources=3), degrade(r, 30, seed=1)),
    "mono, 10 dB, 3.4 s": lambda: (r := stereo_stems(2, 3.4, channels=1), degrade(r, 10, seed=2)),
    "shorter than the window": lambda: (r := stereo_stems(3, 0.6, sources=2), degrade(r, 10, seed=3)),
    "silent in some frames": _silent_frames_case,
    "dual-mono reference": _dual_mono_case,
    "a silent channel": _silent_channel_case,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bss_eval_matches_museval_frame_by_frame(case, museval_metrics):
    """Every frame's SDR, ISR, SIR and SAR, and the track's medians, as museval computes them."""
    references, estimates = CASES[case]()
    want = museval_frames(museval_metrics, references, estimates)
    scores = bss_eval_v4(references, estimates, window=RATE, hop=RATE)
    got = ours(scores)
    worst = assert_same_frames(got, want, case)
    want_medians = quiet_nanmedian(want)
    got_medians = np.stack([scores.medians()[name] for name in ("sdr", "isr", "sir", "sar")])
    assert_same_frames(got_medians, want_medians, f"{case} (medians)")
    print(f"{case}: {scores.frames} frames, max difference to museval {worst:.2g} dB (tolerance {TOLERANCE_DB})")
    if case == "silent in some frames":
        assert np.isnan(got[:, :, :2]).all() and np.isfinite(got[:, :, 2]).all()  # NaN for every source


def test_a_source_silent_throughout_gives_nan_where_museval_refuses(museval_metrics):
    """museval raises for a reference or estimate that is silent over the whole track; every frame of such a track
    holds a silent source, so by museval's own frame rule every BSS figure is NaN, which is what we return. The MDX
    SDR stays finite (its 1e-7 terms)."""
    references = stereo_stems(6, 1.5, sources=3)
    estimates = degrade(references, 10, seed=6)
    for array in ("reference", "estimate"):
        refs, ests = references.copy(), estimates.copy()
        (refs if array == "reference" else ests)[2] = 0
        with pytest.raises(ValueError, match="silent"):
            museval_frames(museval_metrics, refs, ests)
        scores = bss_eval_v4(refs, ests, window=RATE)
        assert np.isnan(ours(scores)).all()
        assert all(np.isnan(m).all() for m in scores.medians().values())
        assert silent_sources(refs if array == "reference" else ests).tolist() == [False, False, True]
        assert np.isfinite(new_sdr(refs, ests)).all()


def test_stable_where_museval_follows_rounding(museval_metrics):
    """Stems of parts panned into stereo and stored as float (the synthesizer's, as written): the delayed channels
    are dependent to within rounding, and museval's ISR, SIR and SAR follow rounding noise (references changed by
    one part in 1e12 move them by decibels); ours, with `_solve`'s relative term, do not move."""
    references = track_stems(1, int(1.5 * RATE), RATE, 2)[:3].astype(np.float64)
    estimates = degrade(references, 20, seed=16)
    nudged = references * (1 + 1e-12 * np.random.default_rng(16).standard_normal(references.shape))
    theirs = np.abs(
        museval_frames(museval_metrics, references, estimates) - museval_frames(museval_metrics, nudged, estimates)
    )
    mine = np.abs(
        ours(bss_eval_v4(references, estimates, window=RATE)) - ours(bss_eval_v4(nudged, estimates, window=RATE))
    )
    print(
        f"a 1e-12 change of the references moves museval's figures by up to {np.nanmax(theirs):.2f} dB, ours by "
        f"{np.nanmax(mine):.2g} dB"
    )
    assert np.nanmax(mine) < 1e-4
    assert np.nanmax(theirs[1:]) > 1.0  # ISR, SIR, SAR (SDR uses no filters: unmoved)


def test_frames_are_museval_frames(museval_metrics):
    for length, window, hop in [(100, 30, 30), (90, 30, 30), (29, 30, 30), (30, 30, 30), (31, 30, 10), (7, 3, 2)]:
        framer = museval_metrics.Framing(window, hop, length)
        want = [(f.start, f.stop) for f in framer]
        assert [tuple(b) for b in frame_bounds(length, window, hop).tolist()] == want, (length, window, hop)


@pytest.fixture
def demucs_evaluate(monkeypatch, museval_metrics) -> types.ModuleType:
    """demucs 4.1.0's `evaluate.py`, loaded with stand-ins for the packages it imports at the top but
    `eval_track` never uses (dora, musdb) and with museval's standalone `metrics.py` as `museval.metrics`."""
    dora = types.ModuleType("dora")
    dora.log = types.ModuleType("dora.log")  # type: ignore[attr-defined]
    dora.log.LogProgress = object  # type: ignore[attr-defined]
    dora.distrib = types.ModuleType("dora.distrib")  # type: ignore[attr-defined]
    museval = types.ModuleType("museval")
    museval.metrics = museval_metrics  # type: ignore[attr-defined]
    stand_ins = {"dora": dora, "dora.log": dora.log, "dora.distrib": dora.distrib, "musdb": types.ModuleType("musdb")}
    for name, module in {**stand_ins, "museval": museval}.items():
        monkeypatch.setitem(sys.modules, name, module)
    had_distrib = "demucs.distrib" in sys.modules
    module = _load_standalone("demucs", "evaluate.py", "demucs.evaluate")
    if not had_distrib:  # demucs.distrib was imported against the stand-in dora: not for other tests
        monkeypatch.delitem(sys.modules, "demucs.distrib")
    return module


def test_sdr_and_bss_figures_match_demucs_eval_track(demucs_evaluate):
    """demucs's own `eval_track` (what its `evaluate.py` scores MUSDB with): `new_sdr` within 1e-6 dB, and its
    museval figures (per frame) within the tolerance."""
    import torch

    references = stereo_stems(7, 2.4, sources=3).astype(np.float32)
    estimates = degrade(references, 12, seed=7).astype(np.float32)
    (sdr, isr, sir, sar), nsdr = demucs_evaluate.eval_track(
        torch.from_numpy(references), torch.from_numpy(estimates), win=RATE, hop=RATE
    )
    got = new_sdr(references, estimates)
    worst_sdr = float(np.max(np.abs(got - nsdr.numpy())))
    assert worst_sdr < 1e-6, f"new_sdr: max difference {worst_sdr:.3g} dB, tolerance 1e-6 dB"
    worst = assert_same_frames(
        ours(bss_eval_v4(references, estimates, window=RATE)), np.stack([sdr, isr, sir, sar]), "eval_track"
    )
    print(f"demucs eval_track: new_sdr max difference {worst_sdr:.2g} dB, museval figures {worst:.2g} dB")


# ---------------------------------------------------------------------------------------------------------------
# The command


def write_dataset(root: Path, tracks: dict[str, np.ndarray], sources=MUSDB, rate: int = RATE) -> None:
    """MUSDB18-HQ's layout: root/<track>/<source>.wav (float32) and mixture.wav."""
    for name, stems in tracks.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for source, stem in zip(sources, stems, strict=True):
            sf.write(folder / f"{source}.wav", stem.T.astype(np.float32), rate, subtype="FLOAT")
        sf.write(folder / "mixture.wav", stems.sum(0).T.astype(np.float32), rate, subtype="FLOAT")


def write_estimates(root: Path, tracks: dict[str, np.ndarray], sources=MUSDB, rate: int = RATE) -> None:
    """The --estimates layout: root/<track>/<source>.wav (float32)."""
    for name, stems in tracks.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for source, stem in zip(sources, stems, strict=True):
            sf.write(root / name / f"{source}.wav", stem.T.astype(np.float32), rate, subtype="FLOAT")


def as_written(audio: np.ndarray) -> np.ndarray:
    return audio.astype(np.float32).astype(np.float64)


@pytest.fixture
def scored_on_disk(tmp_path):
    """A 2-track dataset (3 sources) and estimates of it on disk: (dataset, estimates folder, {track: (references,
    estimates)} as float64 of the float32 files)."""
    references = {"Artist - Song": stereo_stems(8, 2.3, sources=3), "track two": stereo_stems(9, 1.6, sources=3)}
    estimates = {name: degrade(stems, 8, seed=i) for i, (name, stems) in enumerate(references.items())}
    write_dataset(tmp_path / "data", references, MUSDB[:3])
    write_estimates(tmp_path / "est", estimates, MUSDB[:3])
    pairs = {name: (as_written(references[name]), as_written(estimates[name])) for name in references}
    return tmp_path / "data", tmp_path / "est", pairs


def evaluate_cli(*args) -> list[str]:
    return ["evaluate", *map(str, args)]


def run(argv: list) -> int:
    """`main` on `argv` (paths allowed)."""
    return main([str(arg) for arg in argv])


def test_estimates_route_end_to_end(scored_on_disk, museval_metrics, tmp_path, capsys):
    """`evaluate DATASET --estimates DIR --json --plot`: each figure equals one computed independently (the MDX
    formula in numpy, museval's medians), the summary is the median and mean over tracks, the Markdown table
    shows them, the plot is a PNG."""
    dataset, estimates, pairs = scored_on_disk
    out_json, out_png = tmp_path / "results" / "scores.json", tmp_path / "scores.png"
    argv = evaluate_cli(dataset, "--estimates", estimates, "--sources", *MUSDB[:3], "--json", out_json)
    assert run([*argv, "--plot", out_png, "-q"]) == 0
    table = capsys.readouterr().out
    document = json.loads(out_json.read_text())
    assert set(document) >= {"tracks", "summary", "overall", "sources", "settings"}
    assert document["sources"] == MUSDB[:3] and sorted(document["tracks"]) == sorted(pairs)
    worst = 0.0
    for name, (references, ests) in pairs.items():
        mdx = 10 * np.log10(
            (np.sum(references**2, axis=(1, 2)) + 1e-7) / (np.sum((references - ests) ** 2, axis=(1, 2)) + 1e-7)
        )
        medians = quiet_nanmedian(museval_frames(museval_metrics, references, ests))  # (4, sources)
        for i, source in enumerate(MUSDB[:3]):
            figures = document["tracks"][name][source]
            assert list(figures) == ["sdr", "bss_sdr", "sir", "isr", "sar"]
            assert abs(figures["sdr"] - mdx[i]) < 1e-9
            for row, figure in enumerate(["bss_sdr", "isr", "sir", "sar"]):
                worst = max(worst, abs(figures[figure] - medians[row, i]))
    assert worst < TOLERANCE_DB, f"JSON against museval: max difference {worst:.3g} dB, tolerance {TOLERANCE_DB} dB"
    print(f"JSON against museval's medians: max difference {worst:.2g} dB (tolerance {TOLERANCE_DB})")
    lines = table.strip().splitlines()
    assert lines[0].startswith("| source |") and len(lines) == 2 + 3 + 1  # header, rule, sources, all
    for source in MUSDB[:3]:
        values = [document["tracks"][t][source]["bss_sdr"] for t in pairs]
        summary = document["summary"][source]["bss_sdr"]
        assert summary == {"median": pytest.approx(np.median(values)), "mean": pytest.approx(np.mean(values))}
        row = next(line for line in lines if line.startswith(f"| {source} |"))
        assert f"{summary['median']:.2f}" in row
    all_row = next(line for line in lines if line.startswith("| all |"))
    assert f"{document['overall']['sdr']['mean']:.2f}" in all_row
    png = out_png.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    leftovers = [p.name for p in [*out_json.parent.iterdir(), *tmp_path.iterdir()] if p.name.startswith(".")]
    assert leftovers == []  # no temporary left beside the outputs


def test_silent_reference_is_a_warning_and_null(tmp_path, capsys):
    """A source silent throughout a track: one warning line naming the track, its BSS figures null in the JSON
    (the MDX SDR a number), the run still succeeds and the summary is over the other tracks."""
    references = {"quiet one": stereo_stems(10, 1.2, sources=2), "loud one": stereo_stems(11, 1.2, sources=2)}
    references["quiet one"][1] = 0
    write_dataset(tmp_path / "data", references, MUSDB[:2])
    write_estimates(tmp_path / "est", {k: degrade(v, 10, seed=1) for k, v in references.items()}, MUSDB[:2])
    out = tmp_path / "s.json"
    argv = evaluate_cli(tmp_path / "data", "--estimates", tmp_path / "est", "--sources", *MUSDB[:2], "--json", out)
    assert run([*argv, "-q"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'quiet one'" in warnings[0] and "bass reference is silent" in warnings[0]
    document = json.loads(out.read_text())
    assert document["tracks"]["quiet one"]["drums"]["bss_sdr"] is None
    assert isinstance(document["tracks"]["quiet one"]["bass"]["sdr"], float)
    loud = document["tracks"]["loud one"]["drums"]["bss_sdr"]
    assert document["summary"]["drums"]["bss_sdr"] == {"median": loud, "mean": loud}
    assert document["warnings"] == [warnings[0].removeprefix("warning: ")]


def test_python_api(tmp_path):
    """`evaluate(...)` from the package face: the figures of `bss_eval_v4` and `new_sdr` on the arrays as written,
    the summary, MUSDB's test/ subfolder by default and train/ with subset=, exactly one of separator= and
    estimates=."""
    import modeling_hdemucs_flax as package

    references = {"only": stereo_stems(14, 1.4, sources=2)}
    estimates = {"only": degrade(references["only"], 15, seed=14)}
    write_dataset(tmp_path / "data" / "test", references, MUSDB[:2])  # MUSDB's subfolders: test/ is the default
    (tmp_path / "data" / "train").mkdir()
    write_estimates(tmp_path / "est", estimates, MUSDB[:2])
    evaluation = package.evaluate(tmp_path / "data", estimates=tmp_path / "est", sources=MUSDB[:2])
    assert isinstance(evaluation, package.Evaluation) and evaluation.sources == tuple(MUSDB[:2])
    refs, ests = as_written(references["only"]), as_written(estimates["only"])
    medians = package.bss_eval_v4(refs, ests, window=RATE).medians()
    for i, source in enumerate(MUSDB[:2]):
        figures = evaluation.tracks["only"][source]
        assert figures["sdr"] == package.new_sdr(refs, ests)[i]
        assert [figures[f] for f in ("bss_sdr", "sir", "isr", "sar")] == [
            medians[m][i] for m in ("sdr", "sir", "isr", "sar")
        ]
        assert evaluation.summary()[source]["sar"] == {"median": figures["sar"], "mean": figures["sar"]}
    with pytest.raises(ValueError, match="exactly one"):
        package.evaluate(tmp_path / "data")
    with pytest.raises(package.DatasetError, match="train: no tracks"):
        package.evaluate(tmp_path / "data", subset="train", estimates=tmp_path / "est", sources=MUSDB[:2])
    with pytest.raises(package.DatasetError, match="no such folder"):
        package.evaluate(tmp_path / "data", estimates=tmp_path / "nowhere", sources=MUSDB[:2])


def test_model_route_scores_what_the_separator_separates(tiny_pair, tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """`evaluate DATASET --model DIR`: each mixture separated in memory, then scored; the figures equal scoring
    `Separator.separate`'s output directly. --out keeps the estimates in the --estimates layout, and scoring them
    from disk gives the same figures."""
    from modeling_hdemucs_flax import Separator, read_audio

    _, _, model = tiny_pair
    write_multitracks(tmp_path / "data", tracks=2, seconds=1.3)
    out_json, kept = tmp_path / "model.json", tmp_path / "kept"
    argv = evaluate_cli(tmp_path / "data", "--model", tiny_checkpoint_dir, "--segment", SEGMENT_SECONDS)
    argv += ["--compilation-cache", str(jax_cache), "--json", str(out_json), "--out", str(kept), "-q"]
    assert run(argv) == 0
    document = json.loads(out_json.read_text())
    assert document["settings"]["model"] == Path(tiny_checkpoint_dir).name
    separator = Separator(model, segment=SEGMENT_SECONDS)
    for name in ("track00", "track01"):
        mixture, rate = read_audio(tmp_path / "data" / name / "mixture.wav")
        separated = separator.separate(mixture, rate)
        estimates = np.stack([separated[s] for s in MUSDB])
        references = np.stack([read_audio(tmp_path / "data" / name / f"{s}.wav")[0] for s in MUSDB])
        sdr = new_sdr(references, estimates)
        medians = bss_eval_v4(references, estimates, window=rate).medians()
        for i, source in enumerate(MUSDB):
            figures = document["tracks"][name][source]
            assert figures["sdr"] == pytest.approx(sdr[i], abs=1e-9)
            for figure, key in (("bss_sdr", "sdr"), ("sir", "sir"), ("isr", "isr"), ("sar", "sar")):
                assert figures[figure] == pytest.approx(medians[key][i], abs=1e-9), (name, source, figure)
        assert sorted(p.name for p in (kept / name).iterdir()) == sorted(f"{s}.wav" for s in MUSDB)
    capsys.readouterr()
    again = tmp_path / "again.json"
    assert main(evaluate_cli(tmp_path / "data", "--estimates", kept, "--json", again, "-q")) == 0
    assert json.loads(again.read_text())["tracks"] == document["tracks"]


# ---------------------------------------------------------------------------------------------------------------
# Errors: one line naming the track or the problem, exit 1 (2 for usage), nothing written


def _fails(argv: list[str], capsys, status: int = 1) -> str:
    try:
        got = run(argv)
    except SystemExit as stop:  # argparse's own usage errors
        got = int(stop.code or 0)
    err = capsys.readouterr().err
    assert got == status, err
    if status == 1:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err
        return lines[0]
    return err


@pytest.mark.parametrize(
    "damage, words",
    [
        ("missing stem", ["'track two'", "vocals"]),
        ("short estimate", ["'track two'", "length"]),
        ("estimate at 48 kHz", ["'track two'", "sample rate"]),
        ("mono estimate", ["'track two'", "channel count"]),
        ("estimates missing a track", ["'track two'", "no track two/ folder"]),
        ("no tracks", ["no tracks"]),
    ],
)
def test_dataset_errors_are_one_line_and_write_nothing(damage, words, tmp_path, capsys):
    references = {"song one": stereo_stems(12, 0.5), "track two": stereo_stems(13, 0.5)}
    dataset, estimates = tmp_path / "data", tmp_path / "est"
    write_dataset(dataset, references)
    write_estimates(estimates, references)
    broken = estimates / "track two" / "bass.wav"
    if damage == "missing stem":
        (dataset / "track two" / "vocals.wav").unlink()
    elif damage == "short estimate":
        sf.write(broken, references["track two"][1, :, :-10].T, RATE, subtype="FLOAT")
    elif damage == "estimate at 48 kHz":
        sf.write(broken, references["track two"][1].T, 48000, subtype="FLOAT")
    elif damage == "mono estimate":
        sf.write(broken, references["track two"][1, 0], RATE, subtype="FLOAT")
    elif damage == "estimates missing a track":
        for file in (estimates / "track two").iterdir():
            file.unlink()
        (estimates / "track two").rmdir()
    elif damage == "no tracks":
        dataset = tmp_path / "empty"
        dataset.mkdir()
    out = tmp_path / "results.json"
    line = _fails(evaluate_cli(dataset, "--estimates", estimates, "--json", out, "--plot", tmp_path / "p.png"), capsys)
    assert all(word in line for word in words), line
    assert not out.exists() and not (tmp_path / "p.png").exists()


def test_plot_without_matplotlib_is_one_line_before_any_work(scored_on_disk, tmp_path, monkeypatch, capsys):
    dataset, estimates, _ = scored_on_disk
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    out = tmp_path / "scores.json"
    argv = evaluate_cli(dataset, "--estimates", estimates, "--sources", *MUSDB[:3], "--json", out)
    line = _fails([*argv, "--plot", tmp_path / "p.png"], capsys)
    assert "pip install '.[evaluate]'" in line and "matplotlib" in line
    assert not out.exists() and not (tmp_path / "p.png").exists()


def test_usage_errors(scored_on_disk, tmp_path, capsys):
    dataset, estimates, _ = scored_on_disk
    err = _fails(evaluate_cli(dataset, "--estimates", estimates, "--model", "x"), capsys, status=2)
    assert "not both" in err and err.startswith("usage: hdemucs-flax evaluate")
    err = _fails(evaluate_cli(dataset, "--estimates", estimates, "--out", tmp_path / "o"), capsys, status=2)
    assert "--out keeps the estimates of --model" in err
    err = _fails(evaluate_cli(dataset, "--estimates", estimates, "--subset", "valid"), capsys, status=2)
    assert "invalid choice: 'valid'" in err
    err = _fails(evaluate_cli(dataset, "--estimates", estimates, "--json", tmp_path), capsys, status=2)
    assert "is a folder" in err
    err = _fails(evaluate_cli(dataset, "--estimates", estimates, "--plot", tmp_path / "p.txt"), capsys, status=2)
    assert "--plot " in err and "p.txt: name the file .png, .pdf, .svg" in err and not (tmp_path / "p.txt").exists()


def test_the_plot_is_written_in_the_format_its_extension_names(scored_on_disk, tmp_path):
    dataset, estimates, _ = scored_on_disk
    argv = evaluate_cli(dataset, "--estimates", estimates, "--sources", *MUSDB[:3], "-q")
    for name, magic in [("p.pdf", b"%PDF-"), ("p.SVG", b"<?xml"), ("p.png", b"\x89PNG\r\n\x1a\n")]:
        assert run([*argv, "--plot", tmp_path / name]) == 0
        head = (tmp_path / name).read_bytes()[:64]
        assert head.startswith(magic), (name, head)
    assert b"<svg" in (tmp_path / "p.SVG").read_bytes()[:1000]


def test_help_is_light_and_the_estimates_route_never_loads_jax(scored_on_disk):
    """`evaluate --help` imports none of JAX, transformers, torch, matplotlib, tqdm; scoring stems on disk needs
    no JAX either (numpy and the audio readers only)."""
    dataset, estimates, _ = scored_on_disk
    code = (
        "import sys\n"
        "from modeling_hdemucs_flax.apps.cli import main\n"
        "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as stop:\n    status = stop.code\n"
        "heavy = [m for m in ('jax', 'transformers', 'torch', 'flax', 'matplotlib', 'tqdm') if m in sys.modules]\n"
        "print('STATUS', status, 'HEAVY', ','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for argv, status, heavy in (
        (["evaluate", "--help"], 0, ""),
        (["evaluate", str(dataset), "--estimates", str(estimates), "--sources", *MUSDB[:3], "-q"], 0, "tqdm"),
    ):
        result = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True)
        assert f"STATUS {status} HEAVY {heavy}\n" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def test_progress_bar_on_a_terminal_only(scored_on_disk):
    dataset, estimates, _ = scored_on_disk
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "modeling_hdemucs_flax", "evaluate", str(dataset), "--estimates", str(estimates)]
    command += ["--sources", *MUSDB[:3]]
    status, shown = run_on_terminal(command, env, columns=100)
    assert status == 0 and "evaluating" in shown and "2.0/2 tracks" in shown and "tracks scored in" in shown
    status, shown = run_on_terminal([*command, "-q"], env, columns=100)
    assert status == 0 and shown.strip() == ""

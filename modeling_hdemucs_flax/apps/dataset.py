"""Separating a whole library: plan -> per-track job -> publish -> manifest, on any engine.

    plan (driver)    inputs -> tracks {key, source}; markers listed once; done / failed-before / to do
    job (worker)     one track: attempts record -> local copy -> separate into staging -> publish stems ->
                     completion marker (last) -> manifest row
    log (driver)     rows streamed into manifest.jsonl as they arrive; summary.json at the end

Engines only move tracks (paths, never audio) to workers and rows back: `local` runs `TrackWorker` in this
process; `ray` (`dataset_ray`) runs one `TrackWorker` per Ray actor. This module imports neither Ray nor JAX
(a worker loads JAX when it builds its Separator), so a Ray driver never starts JAX before `ray.init`.

The output location (a folder or fsspec URL) holds, besides the stems:

    manifest.jsonl, summary.json        this run's rows and totals (earlier runs' go to _hdemucs/runs/)
    _hdemucs/markers/KEY.HASH.done.json completion marker: stems (sizes, sha256), options, timings, device
    _hdemucs/markers/KEY.HASH.failed.json  the input failed with these options (skipped until --retry-failed)
    _hdemucs/attempts/KEY.json          how many times a worker started this input (left behind by a crash)
    _hdemucs/staging/...                stems being written (file-system outputs; swept at start)
    _hdemucs/lock, _hdemucs/lock.json   held by the run in progress (`Store.lock`): one run per output

HASH is the hash of `job_options`: the model by its identity (`model_identity`: a folder's files by digest, a
Hub repo by commit; never the path as typed), every separation and output option with defaults filled in, the
package version. Markers of earlier versions hashed the model as typed; `_earlier_markers` recognises those
that name this model.

A track's key is its path relative to its input root (the folder given, a glob's fixed part, a file's
folder, or the common folder of a list's paths) without the extension; its stems go to
`OUTPUT/<folder of the key>/<--filename>`, e.g. `rock/song/drums.flac` for `in/rock/song.mp3`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import DatasetError, HDemucsFlaxError, OptionError
from ..io.storage import Store, open_store
from ..options import (
    DEFAULT_MATMUL_PRECISION,
    DEFAULT_SEGMENT,
    SeparationOptions,
    check_io_workers,
    check_matmul_precision,
)
from ..runtime import PLATFORMS
from ..separation.file_output import OutputOptions
from ..zoo.model_identity import ModelSource, describe_change, identify_model, loaded_model_source
from .dataset_plan import MANIFEST, SUMMARY, Track, check_output_paths, plan_tracks
from .dataset_worker import (
    ENGINES,
    ENV_TEST_COMPUTE_ON,
    ENV_TEST_EXIT_ON,
    RAY_MISSING,
    RUNS,
    JobSpec,
    NetworkMaker,
    TrackWorker,
    WorkerResources,
    attempts_path,
    job_options,
    list_markers,
    manifest_row,
    marker_path,
    option_differences,
    options_hash,
    utc_now,
)

if TYPE_CHECKING:
    from ..separation.separator import Separator


# ---------------------------------------------------------------------------------------------------------
# Options hash and markers


# ---------------------------------------------------------------------------------------------------------
# The per-track job (runs on a worker)


# ---------------------------------------------------------------------------------------------------------
# The run log: manifest rows streamed, summary at the end


class RunLog:
    """Writes manifest rows as they arrive and totals them into `summary.json`."""

    def __init__(self, store: Store, run_id: str, on_row: Callable[[dict], None] | None = None):
        self.store, self.run_id, self.on_row = store, run_id, on_row
        self.started = time.perf_counter()
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.audio_s = 0.0
        self.workers: dict[str, dict] = {}
        self.failures: list[dict] = []
        self._sink = store.append_lines(MANIFEST)

    def add(self, row: dict, worker: dict | None = None) -> None:
        self._sink.write(json.dumps(row))
        self.counts[row["status"]] += 1
        if row["status"] == "failed":
            self.failures.append({k: row[k] for k in ("key", "source", "error")})
        if row["status"] == "ok":
            self.audio_s += row["audio_seconds"] or 0.0
        if worker is not None:
            stats = self.workers.setdefault(worker["worker"], {**worker, "tracks": 0, "audio_s": 0.0, "busy_s": 0.0})
            stats["tracks"] += 1
            stats["audio_s"] += row["audio_seconds"] or 0.0
            stats["busy_s"] += row["wall_seconds"] or 0.0
        if self.on_row is not None:
            self.on_row(row)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def close(self, header: dict) -> dict:
        self._sink.close()
        wall = self.elapsed
        workers = {}
        for name, stats in self.workers.items():
            workers[name] = {
                **stats,
                "audio_s": round(stats["audio_s"], 3),
                "busy_s": round(stats["busy_s"], 3),
                "realtime": round(stats["audio_s"] / stats["busy_s"], 6) if stats["busy_s"] else None,
            }
        summary = {
            **header,
            "run_id": self.run_id,
            "counts": {**self.counts, "total": sum(self.counts.values())},
            "audio_hours": round(self.audio_s / 3600, 6),
            "wall_s": round(wall, 3),
            "realtime": round(self.audio_s / wall, 6) if wall else None,
            "audio_hours_per_hour": round(self.audio_s / wall, 6) if wall else None,
            "workers": workers,
            "model_load_s": max((w["model_load_s"] for w in workers.values()), default=None),
            "compile_s": max((w["compile_s"] for w in workers.values()), default=None),
            "finished": utc_now(),
        }
        self.store.write_bytes(SUMMARY, json.dumps(summary, indent=2).encode())
        return summary


def _archive_previous_run(store: Store) -> None:
    """Move the last run's manifest and summary into `_hdemucs/runs/<its run id>/`."""
    if not store.exists(MANIFEST):
        return
    summary = store.read_bytes(SUMMARY)
    run_id = None
    with contextlib.suppress(ValueError, TypeError):
        run_id = json.loads(summary)["run_id"] if summary else None
    run_id = run_id or f"unfinished-{uuid.uuid4().hex[:8]}"
    store.move(MANIFEST, f"{RUNS}/{run_id}/{MANIFEST}")
    if summary is not None:
        store.move(SUMMARY, f"{RUNS}/{run_id}/{SUMMARY}")


# ---------------------------------------------------------------------------------------------------------
# The job


@dataclass
class Report:
    """What `separate_dataset` did. `summary` is summary.json's content; `failures` the failed rows' key, source
    and error; `exit_status` is the command line's (0: every input ok or skipped, 1: any failed)."""

    output: str
    manifest: str
    summary: dict
    failures: list[dict]
    failed_before: int = 0

    @property
    def ok(self) -> int:
        return self.summary["counts"]["ok"]

    @property
    def skipped(self) -> int:
        return self.summary["counts"]["skipped"]

    @property
    def failed(self) -> int:
        return self.summary["counts"]["failed"]

    @property
    def exit_status(self) -> int:
        return 0 if self.failed == 0 else 1


def _model_segment(model: str | os.PathLike | None, revision: str | None) -> float | None:
    """The chunk length the named model separates with by default, when it is not the schedule's 7.8 s (demucs's
    hdemucs_mmi: 44 s; a small HTDemucs: its training segment): the markers then certify the segment the workers
    use. None when it is 7.8 s or unknown before loading (the options keep the segment unset, as before)."""
    from ..zoo.model_facts import read_model_facts

    try:
        facts = read_model_facts(model, revision)
    except HDemucsFlaxError:  # loading the model words it
        return None
    if facts is None or facts.segment is None or facts.segment == DEFAULT_SEGMENT:
        return None
    return facts.segment


def _io_workers(requested: int | None, engine: str, resources: WorkerResources) -> int | None:
    """The host threads each worker runs (`check_io_workers`'s None: the local process's cores): a Ray actor's
    reservation when none is asked for, since the node's cores are shared with the other actors."""
    if requested is not None:
        return check_io_workers(requested)
    if engine == "ray":
        return max(1, round(resources.cpus_per_worker))
    return None


def separate_dataset(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    output: str | os.PathLike,
    *,
    model: str | os.PathLike | Separator | None = None,
    revision: str | None = None,
    dtype: str = "float32",
    matmul_precision: str = DEFAULT_MATMUL_PRECISION,
    schedule: SeparationOptions | None = None,
    output_options: OutputOptions | None = None,
    engine: str = "local",
    resources: WorkerResources | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    max_attempts: int = 3,
    limit: int | None = None,
    compilation_cache: str | os.PathLike | bool | None = None,
    storage_options: dict | None = None,
    scratch_dir: str | os.PathLike | None = None,
    device: str | None = None,
    io_workers: int | None = None,
    network: NetworkMaker | None = None,
    progress: bool | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> Report:
    """Separate every input into `output` (a folder or fsspec URL), skipping what an earlier run finished.

    inputs: files, folders (searched recursively), globs, fsspec URLs, or list / CSV / parquet files with a
        `path` column (see `plan_tracks`). output: where stems, markers and manifest.jsonl go.
    model, revision, dtype, matmul_precision, schedule, output_options: as for `separate` (default format
        FLAC). `model` may be a ready `Separator` (local engine only; its own schedule, dtype and precision are
        used). The model is identified by content (`model_identity`), so finished inputs are skipped however its
        path is typed.
    engine: "local" (this process) or "ray" (`resources` says how many workers and what each reserves).
    overwrite: re-separate inputs whose marker records other options (without it that is a `DatasetError`);
        inputs done with the same options are skipped either way.
    retry_failed: separate only the inputs recorded as failed (by default those are skipped), with fresh
        attempt counts. max_attempts: worker deaths an input may cause before it is recorded as failed
        (an interrupted try does not count).
    limit: separate at most this many of the inputs still to do (in key order).
    compilation_cache: the workers' persistent compilation cache (see `configure_compilation_cache`); None
        leaves this process's JAX configuration alone (local engine) / uses the default folder (Ray workers).
    storage_options: fsspec options for URLs (credentials, `endpoint_url`, ...).
    device: the platform the network runs on: "cpu", "gpu" or "tpu". Each worker computes on every device of it
        that it holds (its batch split over them; the default batch size becomes one chunk per device). None:
        the local engine uses JAX's default platform, the ray engine the one of the devices each worker reserves
        (`resources`: GPUs, TPU chips, else the CPU). A Ray actor sees only the devices it holds, and one holding
        a fraction of a GPU lets JAX take at most 90 % of that fraction of its memory (`dataset_ray`).
    io_workers: host threads decoding and encoding around each worker's network (see `separate_files`); None:
        the cores the local process may use, or a Ray worker's `cpus_per_worker` (rounded, at least 1). They
        change no stem, so they are not part of the options a marker records.
    network: a stand-in for the network (`NetworkMaker`: each worker calls it with the model it loaded and runs
        batches through what it returns), for benchmarks and tests; not a command-line option. The model is still
        loaded: it gives the schedule's shape and the stems' names. Its `repr` is recorded in the options a marker
        certifies (the stems are the stand-in's), so give it a stable one (a dataclass). Not with a ready
        `Separator` (pass one built with `forward=` instead).
    progress: a progress bar on stderr (None: only on a terminal). on_row: called with each manifest row.

    One run at a time per output: the output is locked for the run (`Store.lock`). Returns a `Report`. Raises
    `DatasetError` or `OptionError` for usage problems (before any work; also when another run holds the
    output or it cannot be written), `ModelLoadError` when the model cannot be found or loaded.
    """
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if engine not in ENGINES:
        raise OptionError("engine", engine, f"must be one of {', '.join(ENGINES)}")
    resources = resources or WorkerResources()
    if not (isinstance(max_attempts, int) and max_attempts >= 1):
        raise OptionError("max_attempts", max_attempts, "must be an integer >= 1")
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise OptionError("limit", limit, "must be an integer >= 1")
    if engine == "local" and resources.workers != 1:
        raise OptionError("workers", resources.workers, "the local engine runs one worker; use the ray engine")
    if device is not None and device not in PLATFORMS:
        raise OptionError("device", device, f"must be one of {', '.join(PLATFORMS)}")
    if network is not None and not callable(network):
        raise OptionError("network", repr(network), "must be callable: model -> forward")
    if engine == "ray":
        device = resources.platform(device)
    separator = None
    if model is None or isinstance(model, (str, os.PathLike)):
        named = model
    elif engine != "local":
        raise OptionError("model", type(model).__name__, "a ready Separator works with the local engine only")
    elif device is not None:
        raise OptionError("device", device, "a ready Separator computes where it was built; leave device unset")
    elif network is not None:
        raise OptionError("network", repr(network), "a ready Separator runs its own forward; build it with forward=")
    else:
        named, separator, schedule, dtype = None, model, model.options, model.dtype.name
        matmul_precision = model.model.matmul_precision
    check_matmul_precision(matmul_precision)
    if engine == "ray" and importlib.util.find_spec("ray") is None:  # found, not imported: a re-run may need no Ray
        raise DatasetError(RAY_MISSING)
    schedule = schedule or SeparationOptions()
    if separator is None and schedule.segment is None:
        schedule = schedule.replace(segment=_model_segment(named, revision))
    output_options = output_options or OutputOptions(ext="flac")
    store = open_store(output, storage_options)
    tracks = plan_tracks(inputs, storage_options)
    check_output_paths(tracks, output_options)
    source = loaded_model_source(separator.model) if separator is not None else identify_model(named, revision)
    label = None if network is None else repr(network)
    options = job_options(source.identity, dtype, schedule, output_options, matmul_precision, label)
    digest = options_hash(options)

    with store.lock():
        store.sweep_staging()
        plan = _sort_tracks(store, tracks, options, digest, source, overwrite=overwrite, retry_failed=retry_failed)
        if plan.mismatched:
            raise _mismatch_error(store, plan.mismatched, options, source)
        deferred = plan.todo[limit:] if limit is not None else []
        todo = plan.todo[:limit] if limit is not None else plan.todo
        if retry_failed:
            for track in todo:
                store.remove(attempts_path(track.key))

        _archive_previous_run(store)
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{uuid.uuid4().hex[:6]}"
        log = RunLog(store, run_id, on_row)
        for track in plan.done:
            log.add(manifest_row(track, "skipped"))
        for track in plan.failed_before:
            log.add(manifest_row(track, "skipped", error="failed in an earlier run (--retry-failed retries it)"))
        for track in plan.not_failed:
            log.add(manifest_row(track, "skipped", error="not recorded as failed (--retry-failed runs only those)"))
        spec = JobSpec(
            output=os.fspath(output),
            options=options,
            options_hash=digest,
            model=source.load,
            revision=source.revision,
            model_label=source.label,
            run_id=run_id,
            max_attempts=max_attempts,
            storage_options=storage_options,
            compilation_cache=_cache_setting(compilation_cache),
            scratch_dir=None if scratch_dir is None else os.fspath(scratch_dir),
            device=device,
            io_workers=_io_workers(io_workers, engine, resources),
            network=network,
            test_exit_on=json.loads(os.environ.get(ENV_TEST_EXIT_ON) or "{}"),
            test_compute_on=os.environ.get(ENV_TEST_COMPUTE_ON) or None,
        )
        header = {
            "engine": engine,
            "output": store.root,
            "model": source.label,
            "options": options,
            "options_hash": digest,
            "inputs": len(tracks),
            "to_separate": len(todo),
        }
        for track in deferred:
            log.add(manifest_row(track, "skipped", error=f"left for a later run (--limit {limit})"))
        skipped = len(plan.done) + len(plan.failed_before) + len(plan.not_failed) + len(deferred)
        with _progress_bar(progress, skipped + len(todo), skipped) as bar:
            log.on_row = _chain(on_row, bar.update_row if bar else None)
            try:
                if todo and engine == "local":
                    _run_local(todo, spec, separator, log)
                elif todo:
                    from .dataset_ray import run_ray

                    run_ray(todo, spec, resources, log.add)
            finally:
                summary = log.close(header)
    return Report(store.root, store.url(MANIFEST), summary, log.failures, len(plan.failed_before))


@dataclass
class _Plan:
    """The tracks of a run by what their markers say."""

    done: list[Track] = field(default_factory=list)  # finished with these options: skipped
    failed_before: list[Track] = field(default_factory=list)  # failed with these options: skipped
    not_failed: list[Track] = field(default_factory=list)  # --retry-failed: not recorded as failed, skipped
    todo: list[Track] = field(default_factory=list)
    mismatched: list[tuple[Track, str]] = field(default_factory=list)  # finished with other options (a hash)


def _sort_tracks(
    store: Store,
    tracks: Sequence[Track],
    options: dict,
    digest: str,
    source: ModelSource,
    *,
    overwrite: bool,
    retry_failed: bool,
) -> _Plan:
    """Sort `tracks` by their markers, listed once; earlier versions' markers for these options count as
    this run's."""
    markers = list_markers(store)
    same = {digest} | _earlier_markers(store, markers, digest, options, source)
    plan = _Plan()
    for track in tracks:
        states = markers.get(track.key, {})
        kinds = set().union(*(states.get(h, set()) for h in same))
        others = tuple(h for h, found in states.items() if h not in same and "done" in found)
        if "done" in kinds:
            plan.done.append(track)
        elif others and not overwrite:
            plan.mismatched.append((track, others[0]))
        elif "failed" in kinds and not retry_failed:
            plan.failed_before.append(track)
        elif retry_failed and "failed" not in kinds:
            plan.not_failed.append(track)  # --retry-failed: only the inputs recorded as failed
        else:
            plan.todo.append(dataclasses.replace(track, replaces=others))
    return plan


def _earlier_markers(
    store: Store, markers: dict[str, dict[str, set[str]]], digest: str, options: dict, source: ModelSource
) -> set[str]:
    """The other hashes among `markers` whose markers certify `options` in an earlier version's terms: the model
    as typed (which `source.named_by` checks: the same folder, repo and revision, or the default model) and the
    segment left None for the default. One marker is read per hash (markers of one hash share their options)."""
    first: dict[str, str] = {}
    for key, states in markers.items():
        for other, kinds in states.items():
            if other != digest:
                first.setdefault(other, marker_path(key, other, "done" if "done" in kinds else "failed"))
    equal = set()
    for other, path in first.items():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            old = json.loads(store.read_bytes(path) or b"{}").get("options") or {}
            if _in_current_terms(old, source) == options:
                equal.add(other)
    return equal


def _in_current_terms(old: dict, source: ModelSource) -> dict | None:
    """An earlier version's marker options (model and revision as typed, segment None for the default) as this
    version writes them, if they name `source`'s model; else None."""
    if (
        isinstance(old.get("model"), dict)
        or "revision" not in old
        or not source.named_by(old["model"], old["revision"])
    ):
        return None
    separation = dict(old.get("separation") or {})
    if separation.get("segment") is None:
        separation["segment"] = DEFAULT_SEGMENT
    current = {key: value for key, value in old.items() if key != "revision"}
    return {**current, "model": source.identity, "separation": separation}


def _mismatch_error(store: Store, mismatched: list[tuple[Track, str]], options: dict, source: ModelSource) -> Exception:
    """The usage error for inputs finished with other options, naming what differs (the model first)."""
    track, other = mismatched[0]
    old = json.loads(store.read_bytes(marker_path(track.key, other, "done")) or b"{}").get("options", {})
    changes = []
    if isinstance(old.get("model"), dict):
        if old["model"] != options["model"]:
            changes.append(describe_change(old["model"], source))
    elif "model" in old:
        changes.append(f"model {old['model']!r} (as an earlier version recorded it, typed) -> {source.label}")
    rest = {key: value for key, value in old.items() if key not in ("model", "revision")}
    changes += option_differences(rest, {key: value for key, value in options.items() if key != "model"})
    return DatasetError(
        f"{len(mismatched)} input(s) were separated into {store.root} with other options (e.g. {track.key}: "
        f"{'; '.join(changes[:3]) or 'other options'}); pass --overwrite to separate them again with these options, "
        "or choose another output"
    )


def _cache_setting(value: str | os.PathLike | bool | None) -> str | bool | None:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _run_local(todo: Sequence[Track], spec: JobSpec, separator: Separator | None, log: RunLog) -> None:
    worker = TrackWorker(spec, separator)
    try:
        for track in todo:
            log.add(worker.run(track), worker.info)
    finally:
        worker.close()


def _chain(*callbacks):
    live = [c for c in callbacks if c is not None]

    def call(row: dict) -> None:
        for callback in live:
            callback(row)

    return call


class _Bar:
    """A tqdm bar of tracks with audio-hours per hour (seconds of audio separated per second of wall time)."""

    def __init__(self, total: int, initial: int, disable: bool | None):
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=initial, unit="track", desc="tracks", disable=disable)
        self._started, self._audio = time.perf_counter(), 0.0

    def update_row(self, row: dict) -> None:
        if row["status"] == "skipped":
            return
        self._audio += row.get("audio_seconds") or 0.0
        rate = self._audio / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix_str(f"{rate:.2f} audio-h/h", refresh=False)
        self._bar.update(1)

    def write(self, text: str) -> None:
        self._bar.write(text)

    def close(self) -> None:
        self._bar.close()


@contextlib.contextmanager
def _progress_bar(progress: bool | None, total: int, initial: int):
    if progress is False:
        yield None
        return
    bar = _Bar(total, initial, None if progress is None else not progress)
    try:
        yield bar
    finally:
        bar.close()

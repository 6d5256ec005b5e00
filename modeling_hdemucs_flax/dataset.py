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
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .audio_io import inspect_audio
from .dataset_plan import MANIFEST, RESERVED, SUMMARY, Track, check_output_paths, plan_tracks, stem_pattern
from .errors import DatasetError, HDemucsFlaxError, OptionError, one_line
from .file_output import OutputOptions, separate_file
from .model_identity import ModelSource, describe_change, identify_model, separator_source
from .options import (
    DEFAULT_MATMUL_PRECISION,
    DEFAULT_SEGMENT,
    SeparationOptions,
    check_io_workers,
    check_matmul_precision,
)
from .runtime import PLATFORMS
from .storage import Store, local_copy, open_store
from .tempfiles import process_alive

if TYPE_CHECKING:
    from .separation import Separator

MARKERS, ATTEMPTS, RUNS = f"{RESERVED}/markers", f"{RESERVED}/attempts", f"{RESERVED}/runs"
ENGINES = ("local", "ray")
HASH_LENGTH = 16
# A test hook: JSON {input name (key's last part): n}; a worker separating that input os._exit()s mid-file on
# its first n attempts, as a decoder crash or the out-of-memory killer would. Read by the driver only.
ENV_TEST_EXIT_ON = "HDEMUCS_FLAX_TEST_EXIT_ON"
EXIT_KILLED = 70
# A test hook: the platform workers compute on, whatever their resources imply (the tests' Ray cluster has GPUs
# that exist for Ray's scheduler only). Read by the driver only.
ENV_TEST_COMPUTE_ON = "HDEMUCS_FLAX_TEST_COMPUTE_ON"
# What decides the devices a worker sees and the memory JAX takes on them; each worker records their values.
DEVICE_VARIABLES = (
    "JAX_PLATFORMS",
    "CUDA_VISIBLE_DEVICES",
    "TPU_VISIBLE_CHIPS",
    "XLA_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
)
RAY_MISSING = (
    "the ray engine needs Ray: install the [ray] extra from your checkout of hdemucs-flax: pip install '.[ray]'"
)


# ---------------------------------------------------------------------------------------------------------
# Options hash and markers


def job_options(
    model: dict[str, Any],
    dtype: str,
    schedule: SeparationOptions,
    output: OutputOptions,
    matmul_precision: str = DEFAULT_MATMUL_PRECISION,
) -> dict[str, Any]:
    """What a completion marker certifies: the model's identity (`ModelSource.identity`), its dtype and matmul
    precision, every separation and output option as used (the segment's default filled in), the package version.
    Two runs with equal `job_options` produce the same stems. The matmul precision is recorded only when it is not
    the default, float32, so markers written before it was an option still certify float32 runs."""
    separation = dataclasses.replace(schedule, segment=schedule.segment_seconds)
    options = {
        "model": model,
        "dtype": dtype,
        "separation": dataclasses.asdict(separation),
        "output": dataclasses.asdict(output),
        "version": __version__,
    }
    if matmul_precision != DEFAULT_MATMUL_PRECISION:
        options["matmul_precision"] = matmul_precision
    return options


def options_hash(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:HASH_LENGTH]


def marker_path(key: str, digest: str, kind: str) -> str:
    return f"{MARKERS}/{key}.{digest}.{kind}.json"


def attempts_path(key: str) -> str:
    return f"{ATTEMPTS}/{key}.json"


def forget_attempt(store: Store, key: str, run_id: str) -> None:
    """Take back the attempt run `run_id` counted last for `key`: the try was interrupted (Ctrl-C, SIGTERM),
    which says nothing about the input, so it must not count towards --max-attempts."""
    record = json.loads(store.read_bytes(attempts_path(key)) or b"null")
    if not record or not record["history"] or record["history"][-1].get("run") != run_id:
        return
    record["history"].pop()
    record["attempts"] -= 1
    if record["attempts"] > 0:
        store.write_bytes(attempts_path(key), json.dumps(record).encode())
    else:
        store.remove(attempts_path(key))


def list_markers(store: Store) -> dict[str, dict[str, set[str]]]:
    """{key: {options hash: {"done", "failed"}}} from one recursive listing of the markers folder."""
    found: dict[str, dict[str, set[str]]] = {}
    for name in store.find(MARKERS):
        for kind in ("done", "failed"):
            suffix = f".{kind}.json"
            if name.endswith(suffix):
                key, _, digest = name[: -len(suffix)].rpartition(".")
                if key and len(digest) == HASH_LENGTH:
                    found.setdefault(key, {}).setdefault(digest, set()).add(kind)
    return found


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{name}."))
        elif a != b:
            out.append(f"{prefix}{name} {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------------------------------------------------
# The per-track job (runs on a worker)


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs, as plain data (it travels to Ray actors). `options` is `job_options(...)`;
    `model`, `revision` and `model_label` are the `ModelSource`'s load, revision and label; `run_id` marks this
    run's attempts; `device` is the platform the worker computes on (None: JAX's choice); `io_workers` the host
    threads around its network (None: the cores its process may use)."""

    output: str
    options: dict
    options_hash: str
    model: str | None = None
    revision: str | None = None
    model_label: str = ""
    run_id: str = ""
    max_attempts: int = 3
    storage_options: dict | None = None
    compilation_cache: str | bool | None = None
    scratch_dir: str | None = None
    device: str | None = None
    io_workers: int | None = None
    test_exit_on: dict = field(default_factory=dict)
    test_compute_on: str | None = None

    @property
    def schedule(self) -> SeparationOptions:
        return SeparationOptions(**self.options["separation"])

    @property
    def output_options(self) -> OutputOptions:
        return OutputOptions(**self.options["output"])


def _staging_prefix(track: Track) -> str:
    return hashlib.sha1(track.key.encode()).hexdigest()[:12] + "-"


def worker_scratch(root: str | None) -> Path:
    """This process's scratch folder (downloads, object-store staging) under `root` (default: the system's
    temporary folder), after removing the folders of dead processes of this host (killed workers)."""
    base = Path(root or tempfile.gettempdir()) / "hdemucs-flax-work"
    base.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for folder in base.iterdir():
        owner, _, rest = folder.name.rpartition("@")
        pid = rest.split("-", 1)[0]
        if owner == host and pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    mine = base / f"{host}@{os.getpid()}-{uuid.uuid4().hex[:8]}"
    mine.mkdir()
    return mine


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def worker_devices(platform: str | None) -> list[Any]:
    """The devices a worker computes on: every local device of `platform` ("cpu", "gpu", "tpu"; None: of JAX's
    default platform), e.g. the 4 TPU chips or 2 GPUs a Ray actor holds. In a process where JAX has not started,
    the platform is selected first (`select_platform`: a cpu worker then never initialises a GPU, which JAX
    would take 75 % of); where it has, it must have the platform already. Raises `OptionError` (option
    "device") when there is no such device."""
    import jax

    from .runtime import backends_started, select_platform

    if platform is None:
        return jax.local_devices()
    if not backends_started():
        select_platform(platform)
    try:
        return jax.local_devices(backend=platform)
    except RuntimeError:
        found = ", ".join(sorted({d.platform for d in jax.devices()}))
        rule = f"JAX started in this process before the job without a {platform.upper()} (it has {found})"
        raise OptionError("device", platform, rule) from None


def worker_batch_size(requested: int, devices: int) -> int:
    """Chunks per forward pass for a worker splitting each batch over `devices` devices: the schedule's batch
    size, where the default (one chunk) means one chunk per device, so that every device the worker holds
    computes. Another batch size must be a multiple of `devices` (the `Separator` says so, naming both)."""
    return devices if requested == SeparationOptions.batch_size else requested


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class TrackWorker:
    """Separates tracks one at a time with one Separator (loaded and compiled once, in `__init__`).

    `run(track)` never raises for a bad input: it returns the manifest row. Raises at construction only
    (`ModelLoadError`, `OptionError` for options this model cannot honour), which stops the job.
    """

    def __init__(self, spec: JobSpec, separator: Separator | None = None):
        self.spec = spec
        self.store = open_store(spec.output, spec.storage_options)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.output = spec.output_options
        started = time.perf_counter()
        if separator is None:
            from . import Separator, configure_compilation_cache

            devices = worker_devices(spec.test_compute_on or spec.device)  # first: this may select the platform
            configure_compilation_cache(spec.compilation_cache)
            batch_size = worker_batch_size(spec.schedule.batch_size, len(devices))
            schedule = dataclasses.replace(spec.schedule, batch_size=batch_size)
            separator = Separator.from_pretrained(
                spec.model,
                revision=spec.revision,
                dtype=spec.options["dtype"],
                devices=devices,
                matmul_precision=spec.options.get("matmul_precision", DEFAULT_MATMUL_PRECISION),
                **dataclasses.asdict(schedule),
            )
        self.output.stem_names(separator.sources)  # --two-stems must name one of this model's sources
        loaded = time.perf_counter()
        separator.warmup()
        self.separator = separator
        self.info = {
            "worker": self.worker,
            "device": separator.device,  # where the network runs
            # the devices each batch is split over (None: JAX's default device), and what decided them
            "devices": [f"{d.platform}:{d.id}" for d in separator.devices] if separator.devices else None,
            "batch_size": separator.batch_size,
            "environment": {name: os.environ.get(name) for name in DEVICE_VARIABLES},
            "model_load_s": round(loaded - started, 3),
            "compile_s": round(time.perf_counter() - loaded, 3),
        }
        self.scratch = worker_scratch(spec.scratch_dir)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _row(self, track: Track, status: str, **fields) -> dict:
        return manifest_row(track, status, worker=self.worker, device=self.info["device"], **fields)

    def run(self, track: Track) -> dict:
        """Separate `track` and publish it; the manifest row (status ok or failed)."""
        started = time.perf_counter()
        try:
            row = self._run(track, started)
        except Exception as error:  # the bookkeeping itself failed (store unreachable): still a row
            row = self._row(track, "failed", error=_message(track, error, None))
        row["wall_seconds"] = round(time.perf_counter() - started, 3)
        return row

    def _run(self, track: Track, started: float) -> dict:
        store, digest = self.store, self.spec.options_hash
        store.sweep_staging(_staging_prefix(track))  # what a killed earlier attempt at this track left
        done = store.read_bytes(marker_path(track.key, digest, "done"))
        if done is not None:  # a retried task whose first try got as far as the marker
            marker = json.loads(done)
            return self._row(track, "ok", stems=marker["stems"], audio_seconds=marker["audio_seconds"])
        record = json.loads(store.read_bytes(attempts_path(track.key)) or b'{"attempts": 0, "history": []}')
        if record["attempts"] >= self.spec.max_attempts:
            error = (
                f"{track.source}: its worker died on each of {record['attempts']} attempts (a crash or the "
                f"out-of-memory killer); not tried again (--max-attempts {self.spec.max_attempts})"
            )
            self._write_marker(track, "failed", {"error": error, "attempts": record["history"]})
            store.remove(attempts_path(track.key))  # the failed marker now keeps the history
            return self._row(track, "failed", error=error, attempt=record["attempts"])
        self._copy = None
        record["attempts"] += 1
        entry = {"worker": self.worker, "device": self.info["device"], "started": _now(), "run": self.spec.run_id}
        record["history"].append(entry)
        try:
            store.write_bytes(attempts_path(track.key), json.dumps(record).encode())
            try:
                stems, seconds, timings = self._separate(track, record["attempts"])
            except Exception as error:
                message = _message(track, error, self._copy)
                self._write_marker(track, "failed", {"error": message})
                store.remove(attempts_path(track.key))
                return self._row(track, "failed", error=message, attempt=record["attempts"])
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as `runtime.Terminated`: not the input's doing
            forget_attempt(store, track.key, self.spec.run_id)
            raise
        timings["wall_s"] = round(time.perf_counter() - started, 3)
        marker = {"stems": stems, "audio_seconds": seconds, "timings": timings, "attempt": record["attempts"]}
        self._write_marker(track, "done", marker)  # last: the track counts as done from here on
        store.remove(marker_path(track.key, digest, "failed"))
        store.remove(attempts_path(track.key))
        return self._row(track, "ok", stems=stems, audio_seconds=seconds, attempt=record["attempts"])

    def _write_marker(self, track: Track, kind: str, fields: dict) -> None:
        marker = {
            "key": track.key,
            "source": track.source,
            "options_hash": self.spec.options_hash,
            "options": self.spec.options,
            "model": self.spec.model_label,  # the model for people (the options hold its identity)
            "worker": self.worker,
            "device": self.info["device"],
            "finished": _now(),
            **fields,
        }
        self.store.write_bytes(marker_path(track.key, self.spec.options_hash, kind), json.dumps(marker).encode())

    def _separate(self, track: Track, attempt: int) -> tuple[dict, float, dict]:
        """Separate into a fresh staging folder and publish; ({stem: {path, bytes, sha256}}, seconds, timings)."""
        store = self.store
        token = f"{_staging_prefix(track)}{uuid.uuid4().hex[:8]}"
        staging = store.staging_dir(token, self.scratch)
        progress = self._test_hook(track, attempt)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        name = track.source.rsplit("/", 1)[-1]
        try:
            with local_copy(track.source, self.scratch / "inputs" / token, name, self.spec.storage_options) as local:
                self._copy = str(local)  # messages name the source, not this copy
                timings["fetch_s"] = round(time.perf_counter() - clock, 3)
                seconds = inspect_audio(local).duration
                clock = time.perf_counter()
                pattern = stem_pattern(track, self.output)
                written = separate_file(
                    self.separator,
                    local,
                    staging,
                    self.output.replace(filename=pattern),
                    progress=progress,
                    io_workers=self.spec.io_workers,
                )
            timings["separate_s"] = round(time.perf_counter() - clock, 3)
            clock = time.perf_counter()
            stems = {}
            for stem, path in written.items():
                rel = path.relative_to(staging).as_posix()
                stems[stem] = {"path": rel, "bytes": path.stat().st_size, "sha256": _sha256(path)}
            self._publish(track, staging, stems)
            timings["publish_s"] = round(time.perf_counter() - clock, 3)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return stems, round(seconds, 6), timings

    def _publish(self, track: Track, staging: Path, stems: dict) -> None:
        """Stems into place, all or none. Markers of other options this run replaces (--overwrite) go first, so
        no marker ever vouches for stems being swapped; their stems that the new options no longer write go
        after."""
        store, old_stems = self.store, set()
        for digest in track.replaces:
            old = store.read_bytes(marker_path(track.key, digest, "done"))
            if old is not None:
                old_stems.update(stem["path"] for stem in json.loads(old)["stems"].values())
            store.remove(marker_path(track.key, digest, "done"))
        published: list[str] = []
        try:
            for stem in stems.values():
                store.publish(staging / stem["path"], stem["path"])
                published.append(stem["path"])
        except BaseException:
            for rel in published:
                with contextlib.suppress(Exception):
                    store.remove(rel)
            raise
        for rel in old_stems - set(published):
            store.remove(rel)

    def _test_hook(self, track: Track, attempt: int):
        if attempt > int(self.spec.test_exit_on.get(track.name, 0)):
            return None

        def die_mid_file(done: int, total: int) -> None:
            if done >= 1:
                os._exit(EXIT_KILLED)

        return die_mid_file


def manifest_row(track: Track, status: str, **fields: Any) -> dict:
    """A manifest row: key, source, status (ok / skipped / failed), error, stems ({stem: {path, bytes,
    sha256}}), audio_seconds, wall_seconds, worker, device (and `attempt` for separated inputs)."""
    row: dict[str, Any] = {"key": track.key, "source": track.source, "status": status}
    row.update(dict.fromkeys(("error", "stems", "audio_seconds", "wall_seconds", "worker", "device")))
    row.update(fields)
    return row


def _message(track: Track, error: BaseException, copy: str | None) -> str:
    """The command line's one-line wording, naming the input by its source (not the local `copy` of it)."""
    text = one_line(error) if isinstance(error, HDemucsFlaxError) else f"{type(error).__name__}: {one_line(error)}"
    if copy is not None and copy != track.source:
        text = text.replace(f"{copy}: ", "").replace(copy, track.source)
    return text if text.startswith(track.source) else f"{track.source}: {text}"


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
            "finished": _now(),
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


# The TPU chips a Ray actor may hold (Ray refuses other counts when the actor is created).
TPU_CHIPS = (1, 2, 4, 8)
_RESOURCE_FLAGS = {"gpu": "--gpus-per-worker", "tpu": "--tpus-per-worker"}


@dataclass(frozen=True)
class WorkerResources:
    """What each worker of the `ray` engine reserves: a fraction of one GPU or whole GPUs, or TPU chips."""

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    memory_per_worker: int | None = None
    tpus_per_worker: int = 0
    ray_address: str | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, rule: str) -> None:
            if not ok:
                raise OptionError(option, getattr(self, option), rule)

        need(isinstance(self.workers, int) and self.workers >= 1, "workers", "must be an integer >= 1")
        gpus, tpus = self.gpus_per_worker, self.tpus_per_worker
        need(gpus >= 0, "gpus_per_worker", "must be >= 0")
        need(gpus <= 1 or float(gpus).is_integer(), "gpus_per_worker", "must be a fraction of one GPU or whole GPUs")
        need(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        need(self.memory_per_worker is None or self.memory_per_worker > 0, "memory_per_worker", "must be > 0 bytes")
        chips = ", ".join(map(str, TPU_CHIPS))
        need(isinstance(tpus, int) and tpus in (0, *TPU_CHIPS), "tpus_per_worker", f"must be 0 or one of {chips}")
        need(not (gpus and tpus), "tpus_per_worker", "a worker holds GPUs or TPU chips, not both")

    @property
    def held_platform(self) -> str:
        """The platform of the devices each worker holds: "gpu", "tpu" or "cpu" (none)."""
        return "gpu" if self.gpus_per_worker else "tpu" if self.tpus_per_worker else "cpu"

    def platform(self, device: str | None) -> str:
        """The platform each worker computes on: `device` (cpu, gpu, tpu), or the one of the devices it holds
        (None). A device the workers hold none of, or CPU computing beside accelerators they hold, is an
        `OptionError` (option "device")."""
        held = self.held_platform
        if device is None or device == held:
            return held
        if held == "cpu":
            rule = f"the workers hold no {device.upper()}: reserve some with {_RESOURCE_FLAGS[device]}"
        else:
            flag = _RESOURCE_FLAGS[held]
            rule = f"the workers hold {held.upper()}s ({flag}) they would not use: drop {flag} or --device"
        raise OptionError("device", device, rule)


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
    if engine == "ray":
        device = resources.platform(device)
    separator = None
    if model is None or isinstance(model, (str, os.PathLike)):
        named = model
    elif engine != "local":
        raise OptionError("model", type(model).__name__, "a ready Separator works with the local engine only")
    elif device is not None:
        raise OptionError("device", device, "a ready Separator computes where it was built; leave device unset")
    else:
        named, separator, schedule, dtype = None, model, model.options, model.dtype.name
        matmul_precision = model.model.matmul_precision
    check_matmul_precision(matmul_precision)
    if engine == "ray" and importlib.util.find_spec("ray") is None:  # found, not imported: a re-run may need no Ray
        raise DatasetError(RAY_MISSING)
    schedule = schedule or SeparationOptions()
    output_options = output_options or OutputOptions(ext="flac")
    store = open_store(output, storage_options)
    tracks = plan_tracks(inputs, storage_options)
    check_output_paths(tracks, output_options)
    source = separator_source(separator) if separator is not None else identify_model(named, revision)
    options = job_options(source.identity, dtype, schedule, output_options, matmul_precision)
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
    changes += _differences(rest, {key: value for key, value in options.items() if key != "model"})
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

"""One track's job, as a worker runs it on any engine: the options hash and markers that make a run resumable,
the `JobSpec` a worker is built from, the `TrackWorker` (attempts record -> local copy -> separate into staging
-> publish stems -> completion marker -> manifest row) and the `WorkerResources` one worker holds.

Imported by the driver (`dataset`) and by each Ray actor (`dataset_ray`); imports neither Ray nor JAX (the worker
loads JAX when it builds its Separator).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import HDemucsFlaxError, OptionError, one_line
from ..io.audio_io import inspect_audio
from ..io.storage import Store, local_copy, open_store
from ..io.tempfiles import process_alive
from ..options import (
    DEFAULT_MATMUL_PRECISION,
    SeparationOptions,
)
from ..separation.file_output import OutputOptions, separate_file
from .dataset_plan import RESERVED, Track, stem_pattern

if TYPE_CHECKING:
    from ..models.family import SeparationModel
    from ..separation.separator import Forward, Separator

# What runs a worker's batches in place of the model's own forward pass: called once per worker with the loaded
# model, it returns the `Forward` (see `Separator`). For benchmarks and tests (a stand-in network); on a Ray
# cluster it travels to the actors pickled, so it must be picklable (a module-level class or function).
NetworkMaker = Callable[["SeparationModel"], "Forward"]

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


def job_options(
    model: dict[str, Any],
    dtype: str,
    schedule: SeparationOptions,
    output: OutputOptions,
    matmul_precision: str = DEFAULT_MATMUL_PRECISION,
    network: str | None = None,
) -> dict[str, Any]:
    """What a completion marker certifies: the model's identity (`ModelSource.identity`), its dtype and matmul
    precision, every separation and output option as used (the segment's default filled in), the package version.
    Two runs with equal `job_options` produce the same stems. The matmul precision is recorded only when it is not
    the default, float32, so markers written before it was an option still certify float32 runs. `network` names
    a stand-in that ran in place of the model's forward pass (`separate_dataset`'s `network`), recorded only then:
    its stems are not the model's."""
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
    if network is not None:
        options["network"] = network
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


def option_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(option_differences(a, b, f"{prefix}{name}."))
        elif a != b:
            out.append(f"{prefix}{name} {a!r} -> {b!r}")
    return out


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs, as plain data (it travels to Ray actors). `options` is `job_options(...)`;
    `model`, `revision` and `model_label` are the `ModelSource`'s load, revision and label; `run_id` marks this
    run's attempts; `device` is the platform the worker computes on (None: JAX's choice); `io_workers` the host
    threads around its network (None: the cores its process may use); `network` makes a stand-in for the model's
    forward pass (`NetworkMaker`; None: the model's own)."""

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
    network: NetworkMaker | None = None
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

    from ..runtime import backends_started, select_platform

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


def utc_now() -> str:
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
            from .. import Separator, configure_compilation_cache

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
            if spec.network is not None:  # a stand-in: the model still gives the schedule's shape and sources
                separator.forward = spec.network(separator.model)
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
        entry = {"worker": self.worker, "device": self.info["device"], "started": utc_now(), "run": self.spec.run_id}
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
            "finished": utc_now(),
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

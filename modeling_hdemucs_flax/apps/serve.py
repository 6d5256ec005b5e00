"""`hdemucs-flax serve`: separation over HTTP, with FastAPI and uvicorn (the optional `[serve]` extra).

    hdemucs-flax serve                                  # http://127.0.0.1:8000, the default model
    curl -F file=@song.mp3 -F two_stems=vocals http://127.0.0.1:8000/v1/separate -o stems.zip

The model is loaded and compiled once, in the background, while `/v1/health` answers 503; then one worker
thread runs the separations one at a time (one compiled program shared by every request, each batch split over
the devices the Separator holds: every GPU or TPU of the machine unless --devices says fewer), taking them from a
bounded queue. Endpoints (every error is a JSON body `{"error": "<one line>"}`):

    GET    /v1/health             200 {status, model, device (`Separator.device`), version} once warm; 503 while
                                  warming
    GET    /v1/models             the model: sources, sample rate, formats, the output defaults, limits
    POST   /v1/separate           multipart `file` (+ fields below) -> application/zip of the stems
    POST   /v1/jobs               the same fields -> 202 {id, status, ...}
    GET    /v1/jobs/{id}          status (queued, running, done, failed, cancelled), stage and progress
    GET    /v1/jobs/{id}/result   the zip (409 until done); results expire `job_ttl` s after they finish
    DELETE /v1/jobs/{id}          cancel the job and remove its files

The server's `OutputOptions` (the command's --flac, --int24, --two-stems, --clip-mode, ...) are every request's
defaults; the form fields `two_stems` (a source name) and `format` (wav, flac, mp3, ogg) override them, and
`shifts` and `overlap` the schedule's. They are validated by `SeparationOptions` / `OutputOptions` (the
package's one validation) and a bad value is 422. Statuses: 400 unusable audio, 401 missing/wrong token, 403
a cross-site browser request, 404 unknown or expired job, 408 an upload too slow, 413 upload or duration over
the limit, 415 not audio (or not multipart), 421 a Host header naming none of the server's addresses, 422 bad
option, 429 queue full, 503 warming up or shutting down.

Uploads are streamed to the server's own work folder and counted as they arrive: a declared `Content-Length`
over the limit is refused before any byte is read, a body that grows past it is cut off and deleted, and one
that takes longer than `upload_timeout` (or pauses longer than `upload_idle_timeout`) is refused and deleted.
A request takes its place in the queue only once its upload has arrived. The duration is read from the file's
header before anything is queued and counted again in decoded samples while the job runs (a header may
understate it). A `/v1/separate` client that disconnects cancels its job. No response carries a server path or
a traceback. SIGTERM cancels the running and queued jobs and removes every temporary file; the work folder of
a server killed outright is removed by the next one started on the same `workdir`.

Without a token, requests sent by web browsers are checked (the API has no page of its own): a Host header
must name the server by an IP address, `localhost` or an `allowed_hosts` name (a DNS-rebinding page names its
own domain), and a POST or DELETE from a page of another origin is refused (a cross-site form post).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import ipaddress
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

# Not the package face: `Separator` would import JAX, and the command checks its options before that.
from .. import __version__
from ..errors import AudioError, AudioFormatError, AudioTooLongError, HDemucsFlaxError, OptionError, one_line
from ..io import tempfiles
from ..io.audio_io import inspect_audio
from ..options import SeparationOptions
from ..separation.file_output import DEFAULT_FILENAME, OutputOptions, separate_file

if TYPE_CHECKING:
    from ..separation.separator import Separator

logger = logging.getLogger("hdemucs_flax.serve")

ENV_TOKEN = "HDEMUCS_API_TOKEN"
ENV_ALLOWED_HOSTS = "HDEMUCS_API_ALLOWED_HOSTS"  # comma-separated names, beside the command's --allowed-host
PUBLIC_PATHS = ("/v1/health",)  # answered without a token (container health checks)
FIELDS = ("two_stems", "format", "shifts", "overlap")
_FIELD_BYTES = 1000  # longest accepted form-field value
_FORM_OVERHEAD = 1 << 16  # bytes a multipart body may hold beyond the file (boundaries, headers, fields)
# After refusing a body that outgrew the limit, up to this much more is read and dropped: closing a connection
# with unread data resets it, and the client would lose the 413. Beyond it the connection is simply closed.
_DRAIN_BYTES = 4 << 20
# Upload names are cut to this many UTF-8 bytes (their extension kept), so that every name a job derives from
# one (`<track>.zip`, the `<track>` folder, a writer's `.<name>.<pid>-<random>.partial`) fits the 255 bytes a
# file name may have on Linux and macOS file systems.
_NAME_BYTES = 200
_EXTENSION_BYTES = 16  # a longer "extension" is part of the name
# The server's work folder: `<workdir>/.hdemucs-serve.<pid>-<random>.work` (see `tempfiles.new_folder`); a
# server killed outright leaves it behind, and the next one started on the same workdir removes it.
_WORK_NAME, _WORK_SUFFIX = "hdemucs-serve", ".work"
_STARTED = time.time()  # before this module made any work folder (see `tempfiles.sweep_stale_folders`)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_size(value: str | int) -> int:
    """Bytes from `200000000`, `"200mb"`, `"1.5GiB"` (decimal k/m/g, binary ki/mi/gi); ValueError otherwise."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r}")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class ServeLimits:
    """What the server accepts, validated when built (a bad value raises `OptionError` naming it).

    max_upload_bytes: largest uploaded file (413 above it, refused before it is stored).
    max_duration: longest song in seconds, from the file's header and again from its decoded samples (413).
    queue_size: requests that may wait while one runs (429 beyond); an upload takes a place once it has arrived.
    job_ttl: seconds a finished job's result is kept before its files are removed.
    upload_timeout: seconds an upload's body may take, from the request's headers to its last byte (408 beyond).
    upload_idle_timeout: longest pause in seconds between two pieces of an upload's body (408 beyond).
    max_uploads: uploads that may arrive at once (429 beyond): with `max_upload_bytes`, it bounds the disk the
        uploads in flight can take, and with the timeouts, how long stalled clients can hold those places.
    """

    max_upload_bytes: int = 200 * 10**6
    max_duration: float = 600.0
    queue_size: int = 8
    job_ttl: float = 3600.0
    upload_timeout: float = 900.0  # 200 MB in 15 minutes is about 1.8 Mbit/s
    upload_idle_timeout: float = 60.0
    max_uploads: int = 16

    # option name -> environment variable read by `from_env`
    ENV = {
        "max_upload_bytes": "HDEMUCS_API_MAX_UPLOAD",
        "max_duration": "HDEMUCS_API_MAX_DURATION",
        "queue_size": "HDEMUCS_API_QUEUE_SIZE",
        "job_ttl": "HDEMUCS_API_JOB_TTL",
        "upload_timeout": "HDEMUCS_API_UPLOAD_TIMEOUT",
        "upload_idle_timeout": "HDEMUCS_API_UPLOAD_IDLE_TIMEOUT",
        "max_uploads": "HDEMUCS_API_MAX_UPLOADS",
    }

    def __post_init__(self) -> None:
        def positive(name: str, integer: bool) -> None:
            value = getattr(self, name)
            number = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not number or not math.isfinite(value) or value <= 0:
                raise OptionError(name, value, f"must be {'an integer' if integer else 'a number'} > 0")

        positive("max_upload_bytes", True)
        positive("max_duration", False)
        positive("queue_size", True)
        positive("job_ttl", False)
        positive("upload_timeout", False)
        positive("upload_idle_timeout", False)
        positive("max_uploads", True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **given: object) -> ServeLimits:
        """Limits from `given` values (None: not given), else the environment (`ENV`), else the defaults.
        A value that does not parse raises `OptionError` naming the option or the variable."""
        values: dict[str, object] = {}
        for name, variable in cls.ENV.items():
            raw = given.get(name)
            source = name
            if raw is None and env.get(variable, "").strip():
                raw, source = env[variable], variable
            if raw is None:
                continue
            counts = name in ("queue_size", "max_uploads")
            kind = parse_size if name == "max_upload_bytes" else (int if counts else float)
            try:
                values[name] = kind(raw) if isinstance(raw, str) else raw
            except ValueError:
                rule = "must be a size in bytes (e.g. 200mb)" if kind is parse_size else f"must be {kind.__name__}"
                raise OptionError(source, raw, rule) from None
        return cls(**values)  # type: ignore[arg-type]  # validated in __post_init__

    def describe(self) -> dict[str, float | int]:
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_duration_seconds": self.max_duration,
            "queue_size": self.queue_size,
            "job_ttl_seconds": self.job_ttl,
            "upload_timeout_seconds": self.upload_timeout,
            "upload_idle_timeout_seconds": self.upload_idle_timeout,
            "max_uploads": self.max_uploads,
        }


class ApiError(Exception):
    """An answer to the client: HTTP `status` with `{"error": message}` (one line, no server path)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, one_line(message), dict(headers or {})


class JobCancelled(Exception):
    """Raised inside a running separation (from its progress callback) to stop it."""


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=dict(headers or {}))


def _safe_name(filename: str | None) -> str:
    """The client's file name reduced to a plain base name (no folders, no hidden-file dot, no odd characters)
    of at most `_NAME_BYTES` bytes in UTF-8, cut at a character and keeping its extension."""
    name = Path((filename or "").replace("\\", "/")).name
    name = re.sub(r"[^\w.\- ]", "_", name).strip(" .")
    suffix = Path(name).suffix
    if len(suffix.encode()) > _EXTENSION_BYTES:
        suffix = ""
    stem = name[: len(name) - len(suffix)]
    stem = stem.encode()[: _NAME_BYTES - len(suffix.encode())].decode("utf-8", "ignore").rstrip(" .")
    return f"{stem or 'audio'}{suffix}"


def _too_long(name: str, limit: float, seconds: float, *, decoded: bool = False) -> str:
    """The 413 message for a song over the duration limit, told by its header or by its decoded samples."""
    length = f"more than {limit:g} s of audio (its header says {seconds:.1f} s)" if decoded else f"{seconds:.1f} s long"
    return f"{name}: {length}; this server separates up to {limit:g} s"


def _public(message: str, folder: Path, upload: Path, name: str) -> str:
    """`message` with a job's server paths replaced: the upload by the client's file name, the rest by <job>."""
    message = message.replace(str(upload), name)
    message = message.replace(str(folder / "out") + os.sep, "")
    return message.replace(str(folder), "<job>")


@dataclass
class Job:
    """One separation: the upload, its options, its state and its files (all under `folder`). It holds no
    `Separator`: the worker makes the request's variant (`Separator.with_options`, which carries a chunk-sized
    weight array) when the job runs and drops it when it ends, so a finished job waiting for its client is
    small."""

    id: str
    folder: Path
    upload: Path
    name: str  # the client's file name (what error messages show instead of the server path)
    schedule: SeparationOptions  # the server's, with this request's overlap and shifts
    output: OutputOptions  # the server's, with this request's format and two_stems
    duration: float  # seconds, as the file's header says
    status: str = "queued"  # queued -> running -> done | failed | cancelled
    chunks_done: int = 0
    chunks_total: int = 0
    error: str | None = None
    error_status: int = 500
    result: Path | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    @property
    def track(self) -> str:
        return self.upload.stem if self.upload.suffix else self.upload.name

    @property
    def stage(self) -> str:
        """While running: "separating" (the chunks go through the network), then "finishing" (the stems are
        completed and encoded, which for the default clip mode means a second pass over each, and zipped).
        Otherwise the status."""
        if self.status != "running":
            return self.status
        return "finishing" if self.chunks_total and self.chunks_done >= self.chunks_total else "separating"

    @property
    def progress(self) -> float:
        """The fraction of the job's steps done: each chunk is a step and finishing one more, so it is 1.0
        only once the result is ready."""
        if self.status == "done":
            return 1.0
        return round(self.chunks_done / (self.chunks_total + 1), 4) if self.chunks_total else 0.0

    def public(self, message: str) -> str:
        """`message` with this job's server paths replaced by what the client knows."""
        return _public(message, self.folder, self.upload, self.name)

    def describe(self, ttl: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "stage": self.stage,
            "file": self.name,
            "progress": self.progress,
            "chunks_done": self.chunks_done,
            "chunks_total": self.chunks_total,
        }
        if self.error is not None:
            body["error"] = self.error
        if self.status == "done":
            body["result"] = f"/v1/jobs/{self.id}/result"
        if self.finished is not None:
            body["expires_in_seconds"] = round(max(0.0, self.finished + ttl - time.time()), 1)
        return body


class SeparationService:
    """The work behind the app, free of HTTP: loads and warms the model once, then runs one job at a time in a
    worker thread, from a queue holding at most `limits.queue_size` waiting jobs. Finished jobs expire after
    `limits.job_ttl` seconds; `shutdown()` cancels what is left and removes the work folder.

    `load` is a `Separator` (warmed up here) or a callable returning a warmed-up one (called in the worker
    thread; it may return an int exit status after reporting its own error, or raise `ModelLoadError`).
    `output` is every job's `OutputOptions` before its request's changes. The work folder is made under
    `workdir` (default: the system temp folder), after removing those of earlier servers that were killed.
    """

    def __init__(
        self,
        load: Separator | Callable[[], Separator | int],
        limits: ServeLimits,
        *,
        output: OutputOptions | None = None,
        workdir: str | os.PathLike | None = None,
        model_id: str = "hdemucs",
        on_fatal: Callable[[int], None] | None = None,
        on_ready: Callable[[SeparationService], None] | None = None,
    ):
        self.limits = limits
        self.output = output or OutputOptions()
        self.model_id = model_id
        self.on_fatal, self.on_ready = on_fatal, on_ready
        self._load = load
        base = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        for stale in tempfiles.sweep_stale_folders(base, _WORK_SUFFIX, _STARTED):
            logger.warning("removed %s, the work folder of a server that was killed", stale)
        self.workdir = tempfiles.new_folder(base / _WORK_NAME, _WORK_SUFFIX)
        self.separator: Separator | None = None
        self.state = "warming"  # -> ready | failed | stopped
        self.device = "unknown"
        self.exit_status = 0
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._uploads = 0  # uploads in flight (see `uploading`)
        self._jobs: dict[str, Job] = {}
        self._running: Job | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="hdemucs-serve-worker", daemon=True)

    # -- life cycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _warm(self) -> bool:
        from ..separation.separator import Separator  # JAX, in the worker thread once the server listens

        try:
            if isinstance(self._load, Separator):
                loaded = self._load
                loaded.warmup()
            else:
                loaded = self._load()  # a loader hands over a warmed-up Separator
                if isinstance(loaded, int):  # ... or the exit status after reporting its own one-line error
                    raise _LoadFailed(loaded)
        except _LoadFailed as failed:
            return self._fail(failed.status, None)
        except HDemucsFlaxError as error:
            return self._fail(1, one_line(error))
        except Exception as error:  # never a traceback for a user; the log keeps it
            logger.exception("model failed to load")
            return self._fail(1, f"{type(error).__name__}: {one_line(error)}")
        self.device = loaded.device  # where the network runs: every device a batch is split over
        self.separator = loaded
        with self._lock:
            if self.state == "warming":
                self.state = "ready"
        if self.on_ready is not None:
            self.on_ready(self)
        return True

    def _fail(self, status: int, message: str | None) -> bool:
        if message:
            print(f"error: {message}", file=sys.stderr, flush=True)
        self.state, self.exit_status = "failed", status
        if self.on_fatal is not None:
            self.on_fatal(status)
        return False

    def _work(self) -> None:
        if not self._warm():
            return
        tick = min(1.0, self.limits.job_ttl / 4)
        while not self._stopping.is_set():
            with self._lock:
                if not self._waiting:
                    self._lock.wait(tick)
                job = self._waiting.popleft() if self._waiting else None
                if job is not None:
                    self._running = job
            self.expire()
            if job is not None:
                try:
                    self._run(job)
                finally:
                    with self._lock:
                        self._running = None
                        # deleted while it ran (see `delete`), or the server is stopping: nobody will fetch it
                        orphan = job.id not in self._jobs or self._stopping.is_set()
                    if orphan:
                        self.remove(job)

    def begin_shutdown(self) -> None:
        """Stop taking jobs and cancel the running and the waiting ones (their clients get 503)."""
        with self._lock:
            self.state = "stopped" if self.state != "failed" else self.state
            self._stopping.set()
            if self._running is not None:
                self._running.cancel.set()
            while self._waiting:
                self._finish(self._waiting.popleft(), "cancelled", 503, "the server is shutting down; job cancelled")
            self._lock.notify_all()

    def shutdown(self, timeout: float = 30.0) -> None:
        """`begin_shutdown`, wait for the worker to stop, remove every file of every job."""
        self.begin_shutdown()
        if self._thread.is_alive() and self.state != "failed":
            self._thread.join(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the queue -------------------------------------------------------------------------------------------

    def check_ready(self) -> Separator:
        if self.state == "warming":
            raise ApiError(503, "the model is warming up (loading and compiling); retry in a few seconds")
        if self.state != "ready" or self.separator is None:
            raise ApiError(503, "the server is shutting down")
        return self.separator

    def check_room(self) -> None:
        """429 when the queue is full: a request is refused before its upload is read. No place is held while
        the upload arrives (a client that stalls would keep it from everyone): `submit` takes it."""
        with self._lock:
            self._check_room()

    def _check_room(self) -> None:
        if len(self._waiting) >= self.limits.queue_size:
            raise ApiError(429, f"the queue is full ({self.limits.queue_size} waiting); retry later")

    @contextlib.contextmanager
    def uploading(self) -> Iterator[None]:
        """One of the `limits.max_uploads` places for an upload in flight (429 when none is free), held until
        the upload has arrived and been queued or refused."""
        with self._lock:
            if self._uploads >= self.limits.max_uploads:
                raise ApiError(429, f"too many uploads in progress ({self.limits.max_uploads}); retry later")
            self._uploads += 1
        try:
            yield
        finally:
            with self._lock:
                self._uploads -= 1

    def new_folder(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex
        folder = self.workdir / job_id
        (folder / "in").mkdir(parents=True)
        return job_id, folder

    def submit(self, job: Job) -> None:
        """Queue `job` (its upload has arrived and been checked): 429 when the queue filled meanwhile."""
        with self._lock:
            if self.state != "ready":
                raise ApiError(503, "the server is shutting down")
            self._check_room()
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._lock.notify_all()

    def get(self, job_id: str) -> Job:
        self.expire()
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} (unknown, deleted or expired)")
        return job

    def delete(self, job_id: str) -> str:
        """Cancel a waiting or running job ("cancelled") or forget a finished one ("deleted"); remove its files
        (a running one's once it has stopped)."""
        job = self.get(job_id)
        with self._lock:
            self._jobs.pop(job.id, None)
            answer = "cancelled" if job.status in ("queued", "running") else "deleted"
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, "cancelled", 409, "job cancelled")
            elif job is self._running:
                job.cancel.set()
                return answer  # the worker removes the files once the separation has stopped (`_work`)
        self.remove(job)
        return answer

    def remove(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def expire(self) -> None:
        """Forget finished jobs older than the time to live and remove their files."""
        now = time.time()
        with self._lock:
            old = [j for j in self._jobs.values() if j.finished is not None and now - j.finished > self.limits.job_ttl]
        for job in old:
            self.remove(job)

    # -- running a job ---------------------------------------------------------------------------------------

    def _finish(self, job: Job, status: str, error_status: int = 500, error: str | None = None) -> None:
        job.status, job.error_status, job.error = status, error_status, error
        job.finished = time.time()
        if not job.outcome.done():
            job.outcome.set_result(job)

    def _run(self, job: Job) -> None:
        job.status = "running"
        assert self.separator is not None  # jobs are accepted once it is loaded

        def progress(done: int, total: int) -> None:
            job.chunks_done, job.chunks_total = done, total
            if job.cancel.is_set():
                raise JobCancelled()

        try:
            separator = self.separator.with_options(overlap=job.schedule.overlap, shifts=job.schedule.shifts)
            out = job.folder / "out"
            limit = self.limits.max_duration  # counted again in decoded samples: a header may understate it
            stems = separate_file(separator, job.upload, out, job.output, progress=progress, max_seconds=limit)
            archive = job.folder / f"{job.track}.zip"
            compression = zipfile.ZIP_DEFLATED if job.output.ext == "wav" else zipfile.ZIP_STORED
            with zipfile.ZipFile(archive, "w", compression) as bundle:
                for path in stems.values():
                    bundle.write(path, path.relative_to(out).as_posix())
            shutil.rmtree(out, ignore_errors=True)  # the zip holds them now
            job.upload.unlink(missing_ok=True)
            job.result = archive
            self._finish(job, "done")
        except JobCancelled:
            stopping = self._stopping.is_set()
            reason = "the server is shutting down; job cancelled" if stopping else "job cancelled"
            self._finish(job, "cancelled", 503 if stopping else 409, reason)
        except OptionError as error:
            self._finish(job, "failed", 422, job.public(one_line(error)))
        except AudioTooLongError:
            message = _too_long(job.name, self.limits.max_duration, job.duration, decoded=True)
            self._finish(job, "failed", 413, message)
        except AudioError as error:
            status = 415 if isinstance(error, AudioFormatError) else 400
            self._finish(job, "failed", status, job.public(one_line(error)))
        except Exception as error:
            logger.exception("job %s failed", job.id)
            self._finish(job, "failed", 500, f"internal error ({type(error).__name__}); the server log has details")


class _LoadFailed(Exception):
    def __init__(self, status: int):
        self.status = status


# ---------------------------------------------------------------------------------------------------------
# Reading a request


@dataclass
class _Form:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_bytes: int = 0


async def _body(request: Request, limits: ServeLimits) -> AsyncGenerator[bytes, None]:
    """The request's body as it arrives, bounded in time: 408 once it has taken `upload_timeout` seconds, or
    nothing has come for `upload_idle_timeout` seconds (a client that stalls would hold its connection and its
    partial file for ever; it holds no queue place, see `SeparationService.check_room`)."""
    stream = request.stream()
    clock = asyncio.get_running_loop().time
    deadline = clock() + limits.upload_timeout
    try:
        while True:
            left = deadline - clock()
            wait = min(limits.upload_idle_timeout, left)
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if wait < limits.upload_idle_timeout:
                    message = f"upload too slow: not complete after {limits.upload_timeout:g} s; send it faster"
                else:
                    message = f"upload stalled: nothing received for {limits.upload_idle_timeout:g} s; send it again"
                raise ApiError(408, message, {"Connection": "close"}) from None
            except ClientDisconnect:
                raise ApiError(400, "the client closed the connection during the upload") from None
            yield chunk
    finally:
        await stream.aclose()


async def receive_upload(request: Request, folder: Path, limits: ServeLimits) -> tuple[_Form, Path | None]:
    """Stream a multipart/form-data body: the `file` part into `folder/in/<name>`, the other fields into
    memory. Refuses (413) a declared or actual size over the limit before storing more than the limit, and
    (408) an upload too slow (see `_body`); the caller removes `folder` on any error."""
    kind, params = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(415, "send multipart/form-data with the audio file in a field named 'file'")
    most = limits.max_upload_bytes + _FORM_OVERHEAD
    declared = request.headers.get("content-length")
    too_big = f"upload larger than the limit of {limits.max_upload_bytes} bytes"
    if declared is not None and declared.isdigit() and int(declared) > most:
        raise ApiError(413, too_big)  # before reading a byte (a client sending `Expect: 100-continue` sends none)

    form = _Form()
    state: dict[str, Any] = {"headers": {}, "name": None, "value": bytearray(), "handle": None, "path": None}
    header_name, header_value = bytearray(), bytearray()

    def on_part_begin() -> None:
        state["headers"], state["name"], state["value"] = {}, None, bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        state["headers"][bytes(header_name).lower()] = bytes(header_value).strip()
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(state["headers"].get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == "file":
            if state["path"] is not None:
                raise ApiError(400, "more than one 'file' field; send one file per request")
            filename = options.get(b"filename")
            form.filename = filename.decode("utf-8", "replace") if filename is not None else None
            state["path"] = folder / "in" / _safe_name(form.filename)
            state["handle"] = open(state["path"], "wb")  # noqa: SIM115 (closed in on_part_end or below)
        elif name not in FIELDS:
            raise ApiError(422, f"unknown form field {name!r}; the fields are file, {', '.join(FIELDS)}")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["handle"] is not None:
            form.file_bytes += end - start
            if form.file_bytes > limits.max_upload_bytes:
                raise ApiError(413, too_big)
            state["handle"].write(data[start:end])
        else:
            state["value"].extend(data[start:end])
            if len(state["value"]) > _FIELD_BYTES:
                raise ApiError(422, f"form field {state['name']!r} is longer than {_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if state["handle"] is not None:
            state["handle"].close()
            state["handle"] = None
        elif state["name"] is not None:
            form.fields[state["name"]] = bytes(state["value"]).decode("utf-8", "replace").strip()

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    body = _body(request, limits)
    try:
        async for chunk in body:
            received += len(chunk)
            if received > most:
                raise ApiError(413, too_big)
            parser.write(chunk)
        parser.finalize()
    except ValueError as error:  # python-multipart's parse errors
        raise ApiError(400, f"malformed multipart body ({one_line(error)})") from None
    except ApiError as error:
        if error.status == 413:  # read (and drop) a little more, so the client is still listening for the answer
            with contextlib.suppress(ApiError):  # a stall or a disconnect while draining: the 413 stands
                async for chunk in body:
                    received += len(chunk)
                    if received > most + _DRAIN_BYTES:
                        break
        raise
    finally:
        if state["handle"] is not None:
            state["handle"].close()
        await body.aclose()
    return form, state["path"]


def _number(text: str | None, kind: type) -> object:
    """A form value as `kind`, or the text itself when it is not one (the options' validation then names it)."""
    if text is None or text == "":
        return None
    try:
        return kind(text)
    except ValueError:
        return text


def request_output(defaults: OutputOptions, fields: Mapping[str, str]) -> OutputOptions:
    """The request's `OutputOptions`: the server's `defaults` with the request's `two_stems` and `format`. A
    format that cannot hold the server's sample format gets its own default one (a server started with --int24
    still writes `format=mp3`). Raises `OptionError`."""
    changes: dict[str, object] = {}
    if fields.get("two_stems"):
        changes["two_stems"] = fields["two_stems"]
    if fields.get("format"):
        changes["ext"] = fields["format"]
    try:
        return defaults.replace(**changes)
    except OptionError as error:
        if error.option != "subtype" or "ext" not in changes:
            raise
        return defaults.replace(**changes, subtype=None)


def build_job(service: SeparationService, job_id: str, folder: Path, form: _Form, upload: Path | None) -> Job:
    """Validate the request's options and the upload's header (blocking file I/O: run it in a thread)."""
    separator = service.check_ready()
    values = form.fields
    try:
        schedule = separator.options.replace(
            shifts=_number(values.get("shifts"), int),  # type: ignore[arg-type]  # checked by SeparationOptions
            overlap=_number(values.get("overlap"), float),  # type: ignore[arg-type]
        )
        output = request_output(service.output, values)
        output.stem_names(separator.sources)
    except OptionError as error:  # worded with the form field's name: `format`, not OutputOptions' `ext`
        option = "format" if error.option == "ext" else error.option
        raise ApiError(422, f"{option}={error.value!r}: {error.rule}") from None
    if upload is None:
        raise ApiError(400, "no file: send the audio in a multipart field named 'file'")
    name = _safe_name(form.filename)
    try:
        info = inspect_audio(upload)  # the header only: nothing is decoded yet
        if info.duration > service.limits.max_duration:
            raise ApiError(413, _too_long(name, service.limits.max_duration, info.duration))
        separator.check_channels(info.channels, name)
    except AudioError as error:
        status = 415 if isinstance(error, AudioFormatError) else 400
        raise ApiError(status, _public(one_line(error), folder, upload, name)) from None
    return Job(job_id, folder, upload, name, schedule, output, info.duration)


# ---------------------------------------------------------------------------------------------------------
# The app


class TokenAuth:
    """ASGI middleware: with a token set, every request but `PUBLIC_PATHS` needs `Authorization: Bearer <token>`
    (compared in constant time); others get 401 before their body is read."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, credential = given.partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token)):
                response = error_response(
                    401, "missing or wrong token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """The name in a Host header, lower case, without its port or a final dot: `[::1]:8000` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, _, port = host.rpartition(":")
    return (name if name and port.isdigit() else host).rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserGuard:
    """ASGI middleware for a server without a token: what a visitor's web browser may be made to send. A
    Host header must name the server by an IP address, `localhost` or one of `allowed_hosts` (421 otherwise):
    a DNS-rebinding page reaches the server under its own domain name, and no page can forge an address. A
    POST or DELETE whose `Sec-Fetch-Site` or `Origin` shows it comes from a page of another origin is 403
    (a cross-site form post needs no script). Programs (curl, httpx, requests) send neither header."""

    SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = ()):
        self.app = app
        self.allowed = {"localhost", *(_host_name(host) for host in allowed_hosts)}

    def refusal(self, method: str, headers: Mapping[bytes, bytes]) -> JSONResponse | None:
        host = headers.get(b"host", b"").decode("latin-1")
        name = _host_name(host)
        if host and not (_is_address(name) or name in self.allowed):
            return error_response(
                421,
                f"Host {host!r} is not a name of this server: use its IP address or localhost, or start the server "
                f"with --allowed-host {name} (or a token, HDEMUCS_API_TOKEN)",
            )
        if method in self.SAFE_METHODS:
            return None
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
        origin = headers.get(b"origin", b"").decode("latin-1")
        foreign_origin = bool(origin) and urlsplit(origin).netloc.lower() != host.strip().lower()
        if site not in ("", "same-origin", "none") or foreign_origin:
            return error_response(
                403,
                f"cross-site {method} refused: a page of another origin ({origin or site}) may not use this server "
                "without a token; send requests from a program, or give the server a token (HDEMUCS_API_TOKEN)",
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = self.refusal(scope["method"], dict(scope["headers"]))
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "two_stems": {
                            "type": "string",
                            "description": "write only this stem and no_<stem> (default: the server's)",
                        },
                        "format": {
                            "type": "string",
                            "enum": ["wav", "flac", "mp3", "ogg"],
                            "description": "the stems' format (default: the server's)",
                        },
                        "shifts": {"type": "integer", "minimum": 0},
                        "overlap": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                    },
                }
            }
        },
    }
}


async def _outcome_unless_disconnected(request: Request, outcome: concurrent.futures.Future) -> bool:
    """Wait for a job's `outcome`; False when the client disconnects first. Starlette does not cancel a
    handler whose client went away: after the body, the next ASGI message is `http.disconnect`, which uvicorn
    delivers only when the connection closes."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    finished = asyncio.wrap_future(outcome)
    gone = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return finished.done()


def create_app(
    separator: Separator | Callable[[], Separator | int],
    limits: ServeLimits | None = None,
    *,
    output: OutputOptions | None = None,
    token: str | None = None,
    allowed_hosts: Iterable[str] = (),
    workdir: str | os.PathLike | None = None,
    model_id: str = "hdemucs",
    on_fatal: Callable[[int], None] | None = None,
    on_ready: Callable[[SeparationService], None] | None = None,
) -> FastAPI:
    """The HTTP API around `separator` (or a loader returning one, run in the background while the health check
    answers 503). `output`: every request's stem options before its `format` and `two_stems` fields (its
    `filename` is not used: a zip holds `<track>/<stem>.<ext>`). `token`: require `Authorization: Bearer
    <token>` on every route but /v1/health (an empty token raises `OptionError`); without one, browsers'
    requests are checked (`BrowserGuard`; `allowed_hosts`: names the Host header may give besides addresses
    and localhost). `workdir`: where a per-process folder of uploads and results is made (default: the system
    temp folder). `model_id` is what /v1/health and /v1/models call the model (never a server path).
    `on_fatal(status)` is called if the model cannot be loaded, `on_ready(service)` once it is warm. The
    service is `app.state.service`; it starts and stops with the app.
    """
    if token is not None and not token.strip():
        raise OptionError("token", token, "must not be empty (None serves without a token)")
    limits = limits or ServeLimits()
    output = (output or OutputOptions()).replace(filename=DEFAULT_FILENAME)
    service = SeparationService(
        separator, limits, output=output, workdir=workdir, model_id=model_id, on_fatal=on_fatal, on_ready=on_ready
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.shutdown)

    app = FastAPI(
        title="hdemucs-flax",
        version=__version__,
        description="Music source separation (Hybrid Demucs in JAX/Flax) over HTTP.",
        docs_url=None,  # the interactive page would load scripts from a CDN
        redoc_url=None,
        openapi_url="/v1/openapi.json",
        lifespan=lifespan,
    )
    app.state.service = service
    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    else:
        app.add_middleware(BrowserGuard, allowed_hosts=tuple(allowed_hosts))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
        return error_response(422, problems or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.error("unexpected error", exc_info=error)
        return error_response(500, f"internal error ({type(error).__name__}); the server log has details")

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        if service.state != "ready":
            try:
                service.check_ready()
            except ApiError as error:
                return error_response(error.status, error.message)
        return JSONResponse({"status": "ok", "model": model_id, "device": service.device, "version": __version__})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        separator = service.check_ready()
        return JSONResponse(
            {
                "models": [
                    {
                        "id": model_id,
                        "sources": separator.sources,
                        "sample_rate": separator.sample_rate,
                        "audio_channels": separator.audio_channels,
                        "segment_seconds": separator.options.segment_seconds,
                        "dtype": str(separator.dtype),
                        "formats": ["wav", "flac", "mp3", "ogg"],
                        "two_stems": separator.sources,
                        "defaults": {"format": output.ext, "two_stems": output.two_stems},
                    }
                ],
                "limits": limits.describe(),
            }
        )

    async def accept(request: Request) -> Job:
        """Read and check one separation request and queue it: 429 at once when the queue is full, but the
        place is taken only when the upload has arrived (`submit`)."""
        service.check_ready()
        service.check_room()
        with service.uploading():
            job_id, folder = service.new_folder()
            try:
                form, upload = await receive_upload(request, folder, limits)
                job = await asyncio.to_thread(build_job, service, job_id, folder, form, upload)
                service.submit(job)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return job

    def result_response(job: Job, *, remove_after: bool) -> FileResponse:
        assert job.result is not None
        cleanup = BackgroundTask(service.remove, job) if remove_after else None
        return FileResponse(job.result, media_type="application/zip", filename=job.result.name, background=cleanup)

    @app.post("/v1/separate", openapi_extra=_FORM_SCHEMA)
    async def separate(request: Request) -> FileResponse:
        job = await accept(request)
        try:
            finished = await _outcome_unless_disconnected(request, job.outcome)
        except asyncio.CancelledError:  # the server is stopping: stop the work
            with contextlib.suppress(ApiError):
                service.delete(job.id)
            raise
        if not finished:  # the client went away: nobody will read the stems
            with contextlib.suppress(ApiError):  # unless the job ended meanwhile and is already gone
                service.delete(job.id)
            raise ApiError(409, "job cancelled: the client disconnected")
        if job.status != "done":
            service.remove(job)
            raise ApiError(job.error_status, job.error or job.status)
        return result_response(job, remove_after=True)

    @app.post("/v1/jobs", status_code=202, openapi_extra=_FORM_SCHEMA)
    async def submit(request: Request) -> JSONResponse:
        job = await accept(request)
        return JSONResponse(job.describe(limits.job_ttl), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs/{job_id}")
    async def status(job_id: str) -> JSONResponse:
        return JSONResponse(service.get(job_id).describe(limits.job_ttl))

    @app.get("/v1/jobs/{job_id}/result")
    async def result(job_id: str) -> FileResponse:
        job = service.get(job_id)
        if job.status in ("queued", "running"):
            raise ApiError(409, f"job {job_id} is {job.status}; poll /v1/jobs/{job_id} until it is done")
        if job.status != "done":
            raise ApiError(job.error_status if job.status == "failed" else 410, job.error or job.status)
        return result_response(job, remove_after=False)

    @app.delete("/v1/jobs/{job_id}")
    async def delete(job_id: str) -> JSONResponse:
        return JSONResponse({"id": job_id, "status": service.delete(job_id)})

    return app


# ---------------------------------------------------------------------------------------------------------
# Running it


class _Server(uvicorn.Server):
    """uvicorn's server, which on SIGTERM/SIGINT first cancels the running and waiting jobs, so the graceful
    shutdown does not wait for a whole song."""

    def __init__(self, config: uvicorn.Config, service: SeparationService):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.service.begin_shutdown()
        super().handle_exit(sig, frame)


def serve(
    load: Separator | Callable[[], Separator | int],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
    output: OutputOptions | None = None,
    token: str | None = None,
    allowed_hosts: Iterable[str] = (),
    workdir: str | os.PathLike | None = None,
    model_id: str = "hdemucs",
    quiet: bool = False,
) -> int:
    """Run the API (`create_app`, whose arguments these are) until SIGTERM/SIGINT; returns the exit status: 0
    (the server stopped by itself), 1 when the model could not be loaded, 128 + the signal's number after a
    graceful shutdown on SIGTERM/SIGHUP/SIGINT (the command line's rule for every command). Every temporary
    file is removed before it returns."""
    holder: dict[str, _Server] = {}

    def fatal(_: int) -> None:
        holder["server"].should_exit = True

    def ready(service: SeparationService) -> None:
        if not quiet:
            where = f"[{host}]" if ":" in host else host
            print(
                f"hdemucs-flax serve: ready on http://{where}:{port} (model {model_id}, device {service.device})",
                file=sys.stderr,
                flush=True,
            )

    app = create_app(
        load,
        limits,
        output=output,
        token=token,
        allowed_hosts=allowed_hosts,
        workdir=workdir,
        model_id=model_id,
        on_fatal=fatal,
        on_ready=ready,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning" if quiet else "info",
        access_log=not quiet,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    server = holder["server"] = _Server(config, app.state.service)
    service: SeparationService = app.state.service
    try:
        server.run()
    except KeyboardInterrupt as stop:
        # uvicorn shuts down gracefully on the signal, then raises it again with the handler it found, which
        # is Ctrl-C's KeyboardInterrupt or, under the command line, `runtime.Terminated` (SIGTERM/SIGHUP).
        return 128 + getattr(stop, "signum", signal.SIGINT)
    finally:
        shutil.rmtree(service.workdir, ignore_errors=True)  # also when uvicorn could not bind its port
    if service.exit_status:
        return service.exit_status
    return 0 if server.started else 1

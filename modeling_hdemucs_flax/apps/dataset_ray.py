"""The `ray` engine of `separate_dataset`: a pool of Ray actors, each holding one `TrackWorker` (one Separator,
loaded and compiled once per process); the driver gives each idle actor the next track and adds the manifest
row it returns.

    actors = RayTrackWorker x workers (num_cpus, num_gpus, memory, resources={"TPU": n},
             max_restarts=-1, max_task_retries=-1)
    actor:  environment (visible devices, memory share)  ->  TrackWorker (JAX starts: devices, model, compile)
    driver: actor.run(track) for each idle actor  ->  ray.wait  ->  RunLog.add  ->  the next track

Each actor computes on every device it holds (`TrackWorker`: `worker_devices`) and sees no other: before it
starts JAX it sets the variables of `actor_environment`, beside those Ray sets itself (CUDA_VISIBLE_DEVICES for
the GPUs it holds; TPU_VISIBLE_CHIPS and the TPU bounds variables for fewer chips than its node has).

Only paths travel (a decoded 10-minute song would be 212 MB of float32). Ray restarts an actor that dies and
retries its task without limit; `TrackWorker` counts attempts in the output store, so a poison input is
recorded as failed after `max_attempts` deaths and the job goes on. An actor's constructor argument is the
small `JobSpec`, sent inline with its creation task: nothing of it lives in the object store, so a restart cannot
lose it. (Ray Data's actor pool, which this engine used before, hands every actor object-store references of its
own, and Ray core reports each such restartable actor with an error-level line on stderr: ray-project/ray#57733.)

A local cluster this command starts for itself runs with token authentication and a fresh token of its own in
the environment (`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN`; `_import_ray`), unless the user chose a mode: no
warning, and no token file written to ~/.ray. This module imports Ray only inside `run_ray`, and the driver never
imports JAX: actors are fresh processes that load it themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace
from typing import Any

from ..errors import DatasetError, ModelLoadError, OptionError, one_line
from ..io.storage import open_store
from ..runtime import gpu_memory_settings, set_environment
from .dataset_plan import Track
from .dataset_worker import RAY_MISSING, JobSpec, WorkerResources, forget_attempt

# An actor holding a fraction of a GPU lets JAX's memory pool grow to this part of its share: the fraction bounds
# XLA's pool only, and each process sharing the GPU also has its own CUDA context and cuDNN/cuBLAS workspaces
# (hundreds of MB), which the remaining 10 % of its share leaves room for.
GPU_SHARE_MARGIN = 0.9


def actor_environment(platform: str, resources: WorkerResources) -> dict[str, str | None]:
    """The environment variables (None: unset) an actor holding `resources` and computing on `platform` sets
    before it starts JAX:

    - no GPU held: CUDA_VISIBLE_DEVICES="" (Ray 2.60 leaves it unset for such an actor, ray#54868, and JAX
      would see every GPU of the node and take 75 % of each);
    - computing on the CPU: JAX_PLATFORMS=cpu (no GPU or TPU backend starts). On a GPU or TPU the worker selects
      the platform itself (`select_platform`, whose error says what is missing), so a JAX_PLATFORMS the node's
      environment may hold is removed (JAX's alias "gpu" there would also demand every GPU backend: cuda, rocm);
    - a fraction of a GPU: JAX's memory pool capped at `GPU_SHARE_MARGIN` of that fraction, taken as needed
      (`runtime.gpu_memory_settings`). Whole GPUs keep JAX's default (75 % of each, the actor's alone)."""
    environment: dict[str, str | None] = {"JAX_PLATFORMS": "cpu" if platform == "cpu" else None}
    if not resources.gpus_per_worker:
        environment["CUDA_VISIBLE_DEVICES"] = ""
    elif resources.gpus_per_worker < 1:
        environment.update(gpu_memory_settings(GPU_SHARE_MARGIN * resources.gpus_per_worker))
    return environment


class RayTrackWorker:
    """The actor class: one `TrackWorker`, in a process that sees the devices it holds (`actor_environment`). A
    model that cannot be loaded is not retried track after track: every call then returns the fatal error, and
    the driver stops."""

    def __init__(self, spec: dict, environment: dict[str, str | None]):
        set_environment(environment)  # before JAX starts (the TrackWorker imports it)
        from ..errors import HDemucsFlaxError
        from .dataset_worker import TrackWorker

        self.worker, self.fatal = None, None
        try:
            self.worker = TrackWorker(JobSpec(**spec))
        except HDemucsFlaxError as error:
            fatal = {"error": one_line(error), "kind": type(error).__name__}
            if isinstance(error, OptionError):
                fatal.update(option=error.option, value=str(error.value), rule=error.rule)
            self.fatal = fatal

    def run(self, track: Track) -> dict:
        """{"row": manifest row, "info": worker info}, or {"fatal": ...} when the model could not be loaded."""
        if self.fatal is not None or self.worker is None:
            return {"fatal": self.fatal}
        return {"row": self.worker.run(track), "info": self.worker.info}


def _fatal(fatal: dict) -> Exception:
    if fatal.get("kind") == "OptionError":
        return OptionError(fatal["option"], fatal["value"], fatal["rule"])
    return ModelLoadError(fatal["error"])


def _import_ray(address: str) -> Any:
    """Ray, imported for a run on the cluster at `address` ("local": one this command starts). For a cluster of
    its own, token authentication (the cluster listens on the machine's address) with a fresh token in this
    process's environment and its children's: Ray reads both when it is imported, so they are set first. (When
    the caller imported Ray earlier, Ray's own default applies: a token file in ~/.ray and a warning.)"""
    if address == "local" and "ray" not in sys.modules and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    try:
        import ray
    except ImportError:
        raise DatasetError(RAY_MISSING) from None
    return ray


def _connect(ray: Any, address: str) -> None:
    """Join the cluster at `address`, or start a local one ("local")."""
    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"Ray cluster {address}" if address != "local" else "a local Ray cluster"
        raise DatasetError(f"{where}: cannot start or join it ({one_line(error)})") from None
    finally:
        if on_sigterm is not None:  # ray.init makes SIGTERM exit at once; keep the command's handler (clean-up)
            signal.signal(signal.SIGTERM, on_sigterm)


def run_ray(
    todo: Sequence[Track], spec: JobSpec, resources: WorkerResources, add: Callable[[dict, dict | None], None]
) -> None:
    """Separate `todo` on a Ray cluster (`resources.ray_address`, else $RAY_ADDRESS, else a new local one),
    calling `add(row, worker info)` for each manifest row as it arrives. On an interrupt the actors are killed
    and the attempts of the tracks they held are taken back (`forget_attempt`)."""
    address = resources.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    ray = _import_ray(address)
    if not ray.is_initialized():
        _connect(ray, address)
    if spec.compilation_cache is None:  # actors are this job's own processes: give them the default cache
        spec = replace(spec, compilation_cache=True)
    options: dict[str, Any] = {
        "num_cpus": resources.cpus_per_worker,
        "num_gpus": resources.gpus_per_worker,
        "max_restarts": -1,
        "max_task_retries": -1,
    }
    if resources.memory_per_worker:
        options["memory"] = resources.memory_per_worker
    if resources.tpus_per_worker:
        options["resources"] = {"TPU": resources.tpus_per_worker}
    worker_class = ray.remote(RayTrackWorker).options(**options)
    # field by field, not `asdict`: that would turn a dataclass `network` (a stand-in's maker) into a dict
    fields_of_spec = {field.name: getattr(spec, field.name) for field in fields(spec)}
    arguments = (fields_of_spec, actor_environment(spec.device or resources.held_platform, resources))
    actors = [worker_class.remote(*arguments) for _ in range(min(resources.workers, len(todo)))]
    waiting = deque(todo)
    running: dict[Any, tuple[Any, Track]] = {}  # task -> (actor, track)

    def give(actor: Any) -> None:
        if waiting:
            track = waiting.popleft()
            running[actor.run.remote(track)] = (actor, track)

    with _signals_between_ray_calls() as deliver:
        try:
            for actor in actors:
                give(actor)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                deliver()
                if not ready:
                    continue
                actor, _ = running.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as error:  # an actor that cannot even start (Ray's own failure)
                    raise DatasetError(f"a Ray worker failed: {one_line(error)}") from None
                if "fatal" in result:
                    raise _fatal(result["fatal"])
                add(result["row"], result["info"])
                give(actor)
        except KeyboardInterrupt:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            store = open_store(spec.output, spec.storage_options)
            for _, track in running.values():
                # The try in progress, if it began; if its actor was still restarting after a crash, the crash is
                # taken back instead (an input gets one try more, never one less).
                forget_attempt(store, track.key, spec.run_id)
            raise
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)


@contextlib.contextmanager
def _signals_between_ray_calls() -> Iterator[Callable[[], None]]:
    """Ray's blocking calls turn whatever a signal handler raises into a plain KeyboardInterrupt, so SIGTERM would
    lose its `runtime.Terminated` (its message and exit status 143). Inside this block the process's own handlers
    of SIGINT, SIGTERM and SIGHUP are not run by a signal; it is noted, and the `deliver()` this yields runs the
    handler, outside Ray's calls. Signals arriving during the clean-up after an interrupt wait for its end."""
    noted: list[int] = []
    handlers: dict[int, Callable] = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            handler = signal.getsignal(number)
            if callable(handler):
                handlers[number] = handler
                signal.signal(number, lambda signum, frame: noted.append(signum))

    def deliver() -> None:
        if noted:
            number = noted.pop(0)
            handlers[number](number, None)

    try:
        yield deliver
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)

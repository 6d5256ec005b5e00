"""The `ray` engine of `separate_dataset`: Ray Data streams track paths to a pool of actors, each holding one
`TrackWorker` (one Separator, loaded and compiled once per process), and the manifest rows back.

    from_items([{key, source, replaces}])  ->  map_batches(RayTrackWorker, batch_size=1,
        compute=ActorPoolStrategy(size=workers), num_cpus, num_gpus, memory, resources={"TPU": n})
        ->  iter_rows()  ->  RunLog.add

Only paths travel between stages (a decoded 10-minute song would be 212 MB of float32). Ray restarts an
actor that dies and retries its task without limit; `TrackWorker` counts attempts in the output store, so a
poison input is recorded as failed after `max_attempts` deaths and the job goes on. This module imports Ray
only inside `run_ray`, and the driver never imports JAX: actors are fresh processes that load it themselves.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace

from .dataset import JobSpec, WorkerResources
from .dataset_plan import Track
from .errors import DatasetError, ModelLoadError, OptionError, one_line

# Ray Data keeps its blocks in the object store; more than this many blocks cost more than they help. A block
# holds ceil(tracks / blocks) paths, and a task (the unit Ray retries) takes one block at a time.
MAX_BLOCKS = 20_000


class RayTrackWorker:
    """A Ray Data callable class: one `TrackWorker` per actor. A model that cannot be loaded is not retried
    track after track: every row the actor returns then carries the fatal error, and the driver stops."""

    def __init__(self, spec: dict, fractional_gpu: bool = False):
        if fractional_gpu:  # several actors share a GPU: JAX must not take 75 % of its memory each
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        from .dataset import TrackWorker
        from .errors import HDemucsFlaxError, one_line

        self.worker, self.fatal = None, None
        try:
            self.worker = TrackWorker(JobSpec(**spec))
        except HDemucsFlaxError as error:
            fatal = {"error": one_line(error), "kind": type(error).__name__}
            if isinstance(error, OptionError):
                fatal.update(option=error.option, value=str(error.value), rule=error.rule)
            self.fatal = fatal

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        results = []
        for key, source, replaces in zip(batch["key"], batch["source"], batch["replaces"], strict=True):
            if self.fatal is not None or self.worker is None:
                results.append(json.dumps({"fatal": self.fatal}))
                continue
            track = Track(str(key), str(source), tuple(json.loads(str(replaces))))
            results.append(json.dumps({"row": self.worker.run(track), "info": self.worker.info}))
        return {"result": np.array(results, dtype=object)}


def _fatal(fatal: dict) -> Exception:
    if fatal.get("kind") == "OptionError":
        return OptionError(fatal["option"], fatal["value"], fatal["rule"])
    return ModelLoadError(fatal["error"])


def run_ray(
    todo: Sequence[Track], spec: JobSpec, resources: WorkerResources, add: Callable[[dict, dict | None], None]
) -> None:
    """Separate `todo` on a Ray cluster (`resources.ray_address`, else a new local one), calling `add(row,
    worker info)` for each manifest row as it arrives."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise DatasetError("the ray engine needs Ray: pip install 'hdemucs-flax[ray]'") from None

    if not ray.is_initialized():
        try:
            ray.init(
                address=resources.ray_address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"--ray-address {resources.ray_address}" if resources.ray_address else "a local Ray cluster"
            raise DatasetError(f"{where}: cannot start or join it ({one_line(error)})") from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no "progress bars disabled" notice
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command line draws its own bar of tracks
    context.print_on_execution_start = False

    if spec.compilation_cache is None:  # actors are this job's own processes: give them the default cache
        spec = replace(spec, compilation_cache=True)
    items = [{"key": t.key, "source": t.source, "replaces": json.dumps(list(t.replaces))} for t in todo]
    remote: dict = {}
    if resources.tpus_per_worker:
        remote["resources"] = {"TPU": resources.tpus_per_worker}
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS)).map_batches(
        RayTrackWorker,
        batch_size=1,
        fn_constructor_kwargs={"spec": asdict(spec), "fractional_gpu": 0 < resources.gpus_per_worker < 1},
        compute=ray.data.ActorPoolStrategy(size=resources.workers, max_tasks_in_flight_per_actor=1),
        num_cpus=resources.cpus_per_worker,
        num_gpus=resources.gpus_per_worker or None,
        memory=resources.memory_per_worker,
        **remote,
    )
    for record in dataset.iter_rows():
        result = json.loads(record["result"])
        if "fatal" in result:
            raise _fatal(result["fatal"])
        add(result["row"], result["info"])

"""`--batch-size auto`: the batch size a device runs fastest, measured once and cached.

On CPU the answer is `options.default_batch_size("cpu")` (1, measured: larger batches are no faster there). On a
GPU or TPU the fastest batch size depends on the device, the model, the segment and the precision, and nobody can
know it beforehand; so the first run measures it: the network's throughput (chunks per second, two batches in
flight as the schedule runs them) at batch sizes 1, 2, 4, 8, ... until doubling gains less than `MIN_GAIN`, the
device runs out of memory (XLA's RESOURCE_EXHAUSTED) or `MAX_BATCH_SIZE` is passed, and keeps the fastest. Each
size costs one compilation (seconds to tens of seconds on a GPU, persisted by the compilation cache, so the size
chosen is compiled already). The result is cached per (device kind, model config, segment, dtype, precision,
versions) as JSON in `cache_dir()/batch-size/`; later runs read it and measure nothing. Delete the folder to
measure again.

The batch size is per device: a caller that splits batches over N devices multiplies it by N.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..io import tempfiles
from ..options import MAX_BATCH_SIZE, SeparationOptions, default_batch_size
from ..runtime import cache_dir

TUNED_PLATFORMS = ("gpu", "tpu")  # where `--batch-size auto` measures; elsewhere it is `default_batch_size`
MIN_GAIN = 0.10  # doubling the batch size must raise the throughput by this fraction to be worth its memory
REPEATS = 3  # timed forward passes per batch size, after one untimed (compiling) pass


@dataclass(frozen=True)
class BatchChoice:
    """The batch size `choose_batch_size` settled on, and why.

    how: "default" (not measured: the platform's `default_batch_size`), "measured" (now) or "cached" (measured
    by an earlier run). throughput: chunks per second per batch size measured (now or then). stopped: why the
    measurement stopped at its last size. path: the cache file (None for "default")."""

    batch_size: int
    how: str
    device: str
    throughput: dict[int, float] = field(default_factory=dict)
    stopped: str = ""
    path: Path | None = None

    def status(self) -> str:
        """One status line: the batch size and where it comes from."""
        if self.how == "default":
            return f"batch size: {self.batch_size} (the default on {self.device}; --batch-size N sets another)"
        rates = ", ".join(f"{size}: {rate:.3g}" for size, rate in sorted(self.throughput.items()))
        when = "measured now" if self.how == "measured" else "measured by an earlier run"
        return (
            f"batch size: {self.batch_size}, the fastest on {self.device}, {when} (chunks per second by batch size: "
            f"{rates}; {self.stopped}); cached in {self.path}"
        )


def choose_batch_size(
    model: Any,
    schedule: SeparationOptions,
    *,
    device: Any = None,
    folder: str | os.PathLike | None = None,
    announce: Callable[[str], None] | None = None,
) -> BatchChoice:
    """The batch size (per device) for `model` (a model of the family) separating with `schedule`'s segment on
    `device` (a `jax.Device`; None: JAX's default device): `default_batch_size` of its platform, or on a GPU or
    TPU the fastest size, measured once (`tune_batch_size`) and cached in `folder` (None: `cache_dir()/batch-size`),
    keyed by the device kind, the model's config, dtype and matmul precision, the segment and the versions.
    `announce(message)` is told before a measurement starts (it takes a few compilations)."""
    import jax

    from ..runtime import default_device, describe_devices
    from .separator import network_forward

    device = device if device is not None else default_device()
    name = describe_devices([device])
    if schedule.segment is None:  # the Separator will run the model's own segment
        schedule = schedule.replace(segment=model.default_segment)
    if device.platform not in TUNED_PLATFORMS:
        return BatchChoice(default_batch_size(device.platform), "default", device.platform)
    rate = int(model.config.sampling_rate)
    key = {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "config": config_digest(model.config),
        "segment_samples": schedule.segment_samples(rate),
        "dtype": str(np.dtype(model.dtype)),
        "precision": model.matmul_precision,
        "jax": jax.__version__,
        "hdemucs_flax": __version__,
    }
    chunk = (int(model.config.audio_channels), schedule.segment_samples(rate))
    path = Path(folder) if folder is not None else cache_dir() / "batch-size"
    return tune_batch_size(network_forward(model, [device]), chunk, key, path, device=name, announce=announce)


def config_digest(config: Any) -> str:
    """sha256 of a model config's fields (not where it was loaded from): what the network computes."""
    fields = {
        key: value
        for key, value in config.to_dict().items()
        if not key.startswith("_") and key != "transformers_version"
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def tune_batch_size(
    forward: Callable[[np.ndarray], Any],
    chunk: tuple[int, int],
    key: dict[str, Any],
    folder: Path,
    *,
    device: str = "the device",
    announce: Callable[[str], None] | None = None,
    most: int = MAX_BATCH_SIZE,
    min_gain: float = MIN_GAIN,
    repeats: int = REPEATS,
    clock: Callable[[], float] = time.perf_counter,
) -> BatchChoice:
    """The cached choice for `key` in `folder`, or measure `forward` (float32 (batch, *chunk) -> output, numpy or
    a `jax.Array`) at batch sizes 1, 2, 4, ... up to `most`, keep the fastest in chunks per second, and cache it.
    A size is dropped, and the measurement stops, when it runs out of memory (XLA's RESOURCE_EXHAUSTED) or gains
    less than `min_gain` over the fastest so far. Running out of memory at batch size 1 raises that error."""
    path = folder / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]}.json"
    cached = _read_choice(path, key, device)
    if cached is not None:
        return cached
    if announce is not None:
        announce(f"measuring the fastest batch size on {device} (once; the result is cached) ...")
    rng = np.random.default_rng(0)
    throughput: dict[int, float] = {}
    best, size, stopped = 1, 1, f"stopped at the batch size limit {most}"
    while size <= most:
        batch = rng.standard_normal((size, *chunk)).astype(np.float32)
        try:
            throughput[size] = size * repeats / _time_forward(forward, batch, repeats, clock)
        except RuntimeError as error:  # XLA's out-of-memory error is a `jax.errors.JaxRuntimeError`
            if "RESOURCE_EXHAUSTED" not in str(error) or size == 1:
                raise
            stopped = f"batch size {size} ran out of memory"
            break
        if size > 1 and throughput[size] < (1 + min_gain) * throughput[best]:
            stopped = f"batch size {size} gained less than {min_gain:.0%}"
            break
        best = size
        size *= 2
    choice = BatchChoice(best, "measured", device, throughput, stopped, path)
    _write_choice(path, key, choice)
    return choice


def _time_forward(forward: Callable[[np.ndarray], Any], batch: np.ndarray, repeats: int, clock) -> float:
    """Seconds for `repeats` forward passes of `batch` after an untimed one (compiling), each dispatched before
    the previous output is fetched, as `separation.run_schedule` runs them."""
    np.asarray(forward(batch))
    start = clock()
    pending = forward(batch)
    for _ in range(repeats - 1):
        following = forward(batch)
        np.asarray(pending)
        pending = following
    np.asarray(pending)
    return max(clock() - start, 1e-9)


def _read_choice(path: Path, key: dict[str, Any], device: str) -> BatchChoice | None:
    """The choice cached at `path` for exactly `key`, or None (absent, unreadable or not for this key)."""
    try:
        entry = json.loads(path.read_text())
        size = entry["batch_size"]
        throughput = {int(k): float(v) for k, v in entry["throughput"].items()}
        if entry["key"] != key or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
            return None
        return BatchChoice(size, "cached", device, throughput, str(entry["stopped"]), path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_choice(path: Path, key: dict[str, Any], choice: BatchChoice) -> None:
    """Cache `choice` at `path` (written under a temporary name and renamed: a reader never sees half of it). A
    cache that cannot be written is no error: the next run measures again."""
    entry = {
        "key": key,
        "batch_size": choice.batch_size,
        "throughput": {str(size): rate for size, rate in choice.throughput.items()},
        "stopped": choice.stopped,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    temp = tempfiles.new_name(path, ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(tempfiles.create(temp), "w") as out:
            json.dump(entry, out, indent=1)
        tempfiles.finish(temp, path)
    except OSError:
        temp.unlink(missing_ok=True)

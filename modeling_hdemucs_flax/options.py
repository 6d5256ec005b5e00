"""The separation schedule's options and their one validation.

`SeparationOptions` is checked once, when it is built: the `Separator`, `Separator.with_options`, the command
line and every other front end construct one, so a rule and its wording live here only. A bad value raises
`OptionError`, whose message names the option and the value (`overlap=1.0: must be in [0, 1)`); the command
line re-words the same rule with its flag (`--overlap 1.0: must be in [0, 1)`). Standard library only, so a
usage error is reported before JAX is imported.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Integral, Real

from .errors import OptionError

DEFAULT_SEGMENT = 7.8  # seconds: demucs's segment for Hybrid Demucs at 44.1 kHz
WEIGHTINGS = ("triangle", "linear")

# Bounds that keep a typo from becoming an hour-long hang or a 100 GB allocation (each value beyond them is
# a usage error, not a traceback):
# - segment: below 0.05 s a chunk is shorter than the model's own STFT window (4096 samples = 93 ms) and a
#   song needs tens of thousands of forward passes; above 600 s one forward pass of the high model needs
#   tens of GB (its activations grow linearly with the segment) and is longer than a song anyway.
SEGMENT_SECONDS = (0.05, 600.0)
# - shifts: each shift is one more full pass; demucs's useful range is 1-10, 100 passes is already 100x time.
MAX_SHIFTS = 100
# - batch_size: chunks in one forward pass; memory grows with it, and 256 chunks of 7.8 s is half an hour
#   of audio per pass, beyond any device's memory for this model.
MAX_BATCH_SIZE = 256
# - seed: `jax.random.key` takes a signed 64-bit integer.
SEED_RANGE = (-(2**63), 2**63 - 1)

# Chunks per forward pass when none is given, per device of each JAX platform, before anything was measured on
# this machine:
# - cpu: 1, measured (docs/performance.md, benchmarks/bench_batch_size.py): batch 2 is within noise of batch 1,
#   batch 4 is 14 % slower (its working set leaves the cache), and every chunk more holds more memory.
# - gpu, tpu: 8, what `--batch-size auto` starts from and falls back to until it has measured the device
#   (`batch_tuning`). XLA's memory analysis of the full-size model's forward pass on 7.8 s chunks counts 0.26 GB of
#   temporaries per chunk, so 8 chunks (about 2 GB with the weights) fit the 75 % of an 8 GB GPU that JAX takes;
#   whether 8 is the fastest is what the tuner measures.
DEFAULT_BATCH_SIZES = {"cpu": 1, "gpu": 8, "tpu": 8}
AUTO_BATCH_SIZE = "auto"  # the command line's default `--batch-size`: see `default_batch_size` and `batch_tuning`
_PLATFORM_NAMES = {"cuda": "gpu", "rocm": "gpu"}  # JAX's backend names for its "gpu" platform


def default_batch_size(platform: str) -> int:
    """Chunks per forward pass, per device, on JAX platform `platform` ("cpu", "gpu" — or "cuda"/"rocm" — "tpu",
    as `jax.Device.platform` or `jax.default_backend()` names it) when the user gives none and nothing has been
    measured: 1 on CPU (measured), 8 on an accelerator (see `DEFAULT_BATCH_SIZES`), 1 on a platform this package
    does not know."""
    name = platform.lower()
    return DEFAULT_BATCH_SIZES.get(_PLATFORM_NAMES.get(name, name), 1)


# How the network's convolutions and matrix products on float32 values are computed, by the names of JAX's
# `jax_default_matmul_precision`: "float32" is float32 throughout (precision HIGHEST); "tensorfloat32" (HIGH)
# rounds the products' inputs to TF32 on NVIDIA GPUs from Ampere on, or takes 3 bfloat16 passes on TPU;
# "bfloat16" (DEFAULT) is what JAX does when nothing is said: TF32 on those GPUs, one bfloat16 pass on TPU.
# CPUs compute float32 whatever the setting.
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16")
DEFAULT_MATMUL_PRECISION = "float32"


def check_matmul_precision(value: object) -> str:
    """`value` if it names one of `MATMUL_PRECISIONS`; else `OptionError` (option "matmul_precision")."""
    if value not in MATMUL_PRECISIONS:
        raise OptionError("matmul_precision", value, f"must be one of {', '.join(MATMUL_PRECISIONS)}")
    return str(value)


MAX_IO_WORKERS = 64  # host threads decoding, resampling and encoding around the network


def check_io_workers(value: object) -> int:
    """The number of host workers `value` asks for, None meaning the cores this process may use
    (`runtime.available_cores`); else `OptionError` (option "io_workers")."""
    if value is None:
        from .runtime import available_cores

        return min(available_cores(), MAX_IO_WORKERS)
    if isinstance(value, bool) or not isinstance(value, Integral) or not 1 <= int(value) <= MAX_IO_WORKERS:
        raise OptionError("io_workers", value, f"must be an integer in [1, {MAX_IO_WORKERS}]")
    return int(value)


def check_batch_split(batch_size: int, devices: int) -> None:
    """A batch is split evenly over the devices the network runs on: `OptionError` (option "batch_size") unless
    `batch_size` is a multiple of their number."""
    if batch_size % devices:
        rule = f"must be a multiple of the {devices} devices a batch is split over"
        raise OptionError("batch_size", batch_size, rule)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclass(frozen=True)
class SeparationOptions:
    """How a song is cut, batched and blended (see `separation` for the schedule).

    segment: chunk length in seconds (None: 7.8 s, demucs's choice for Hybrid Demucs).
    overlap: fraction of a chunk shared with the next one, in [0, 1).
    shifts: demucs's random-shift averaging: this many passes, each on the song delayed by a random 0..0.5 s,
        averaged (0: one pass, no delay). Deterministic given `seed`.
    seed: seed of the shift delays.
    batch_size: chunks per forward pass.
    weighting: "triangle" (demucs) or "linear" (torchaudio tutorial's linear fade).
    transition_power: exponent applied to the weight; larger values give sharper transitions.
    """

    segment: float | None = None
    overlap: float = 0.25
    shifts: int = 0
    seed: int = 0
    batch_size: int = 1
    weighting: str = "triangle"
    transition_power: float = 1.0

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, rule: str) -> None:
            if not ok:
                raise OptionError(option, getattr(self, option), rule)

        low, high = SEGMENT_SECONDS
        need(
            self.segment is None or (_is_number(self.segment) and low <= self.segment <= high),
            "segment",
            f"must be between {low:g} and {high:g} seconds",
        )
        need(_is_number(self.overlap) and 0 <= self.overlap < 1, "overlap", "must be in [0, 1)")
        need(
            _is_int(self.shifts) and 0 <= self.shifts <= MAX_SHIFTS,
            "shifts",
            f"must be an integer in [0, {MAX_SHIFTS}]",
        )
        need(_is_int(self.seed) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1], "seed", "must be a 64-bit integer")
        need(
            _is_int(self.batch_size) and 1 <= self.batch_size <= MAX_BATCH_SIZE,
            "batch_size",
            f"must be an integer in [1, {MAX_BATCH_SIZE}]",
        )
        need(self.weighting in WEIGHTINGS, "weighting", f"must be one of {', '.join(WEIGHTINGS)}")
        need(_is_number(self.transition_power) and self.transition_power > 0, "transition_power", "must be > 0")

    @property
    def segment_seconds(self) -> float:
        """The chunk length in seconds, the default filled in."""
        return DEFAULT_SEGMENT if self.segment is None else float(self.segment)

    def segment_samples(self, sample_rate: int) -> int:
        """The chunk length in samples at `sample_rate` Hz; at least one sample."""
        samples = int(round(self.segment_seconds * sample_rate))
        if samples < 1:
            raise OptionError("segment", self.segment, f"is shorter than one sample at {sample_rate} Hz")
        return samples

    def stride(self, sample_rate: int) -> int:
        """Samples between the starts of consecutive chunks: (1 - overlap) * segment, at least 1."""
        return max(1, int((1 - self.overlap) * self.segment_samples(sample_rate)))

    def replace(self, **changes: object) -> SeparationOptions:
        """A copy with `changes` applied (and validated); None values keep the current setting."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

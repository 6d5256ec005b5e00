"""Stand-in models, a compile counter and a straightforward demucs-style reference for the separation tests."""

from __future__ import annotations

import threading

import jax
import numpy as np
import torch

FORWARD_NAME = "jit(hdemucs_forward)"  # FlaxHDemucs's jitted forward pass, as JAX names it in events


class AffineStandIn:
    """An identity-like model: source i = gains[i] * x + offsets[i], elementwise. Where its input is exactly
    0 (padding: the test signals never contain 0) it outputs NaN, so any padding that leaked into the result
    shows up (`poison=False` turns that off for signals that may contain 0). Checks it always receives the
    same shape and counts its calls."""

    def __init__(self, gains, offsets, shape: tuple[int, int, int], poison: bool = True):
        self.poison = poison
        self.gains = np.asarray(gains, np.float32)[:, None, None]
        self.offsets = np.asarray(offsets, np.float32)[:, None, None]
        self.shape = shape
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.shape == self.shape and batch.dtype == np.float32, (batch.shape, batch.dtype)
        self.calls += 1
        y = self.gains[None] * batch[:, None] + self.offsets[None]
        return np.where(batch[:, None] == 0, np.float32(np.nan), y) if self.poison else y

    def expected(self, x: np.ndarray) -> np.ndarray:
        """(sources, channels, n) for input (channels, n)."""
        return self.gains * x[None] + self.offsets


def nonzero_signal(channels: int, length: int, seed: int) -> np.ndarray:
    """float32 (channels, length) with every |sample| in [0.25, 1.25]: never exactly 0."""
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(0.25, 1.25, (channels, length))
    return (magnitude * rng.choice([-1.0, 1.0], (channels, length))).astype(np.float32)


class CompileCounter:
    """While active (a `with` block), counts executables JAX produces for the function `fun_name` (None: any
    function) — fresh compiles and persistent-cache loads alike, both reported as
    `/jax/core/compile/backend_compile_duration` — plus persistent-cache hits."""

    def __init__(self, fun_name: str | None = FORWARD_NAME):
        self.fun_name = fun_name
        self.compiles = 0
        self.cache_hits = 0

    def _duration(self, event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration" and self.fun_name in (None, kwargs.get("fun_name")):
            self.compiles += 1

    def _event(self, event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._duration)
        jax.monitoring.unregister_event_listener(self._event)


def demucs_triangle(segment: int, transition_power: float) -> np.ndarray:
    """demucs apply.py's weight, written out: a triangle 1..segment//2 then down to 1, max-normalised, powered."""
    weight = np.concatenate([np.arange(1, segment // 2 + 1), np.arange(segment - segment // 2, 0, -1)]).astype(
        np.float64
    )
    return (weight / weight.max()) ** transition_power


@torch.no_grad()
def demucs_reference(
    model, mix: np.ndarray, *, segment: int, overlap: float, delays=(0,), transition_power=1.0
) -> np.ndarray:
    """A plain, non-streaming implementation of demucs's separation on torchaudio's model.

    mix: (channels, length) at the model's rate. Returns float64 (sources, channels, length).
    demucs: normalise by the mono mix's mean / std (ddof=1, + 1e-8 as in demucs's api.py); for each shift
    delay d run the chunked model on [d zeros, mix] and keep the output from d on; average the shifts; undo
    the normalisation on every source. Chunking: chunks of `segment` samples every int((1 - overlap) *
    segment) samples, the model applied to each (the song's end zero-padded to the segment length, as the
    Separator does), outputs summed with the triangle weight and divided by the summed weight. Chunks stop
    once one reaches the end.
    """
    ref = mix.astype(np.float64).mean(axis=0)
    mean, std = ref.mean(), (ref.std(ddof=1) if ref.size > 1 else 0.0)
    x = (mix.astype(np.float64) - mean) / (std + 1e-8)
    stride = int((1 - overlap) * segment)
    weight = demucs_triangle(segment, transition_power)
    total = 0.0
    for d in delays:
        shifted = np.concatenate([np.zeros((x.shape[0], d)), x], axis=1)
        length = shifted.shape[1]
        out = None
        weight_sum = np.zeros(length)
        offset = 0
        while True:
            chunk = np.zeros((x.shape[0], segment))
            piece = shifted[:, offset : offset + segment]
            chunk[:, : piece.shape[1]] = piece
            y = model(torch.from_numpy(chunk[None]).float())[0].double().numpy()[..., : piece.shape[1]]
            if out is None:
                out = np.zeros((y.shape[0], y.shape[1], length))
            out[..., offset : offset + piece.shape[1]] += weight[: piece.shape[1]] * y
            weight_sum[offset : offset + piece.shape[1]] += weight[: piece.shape[1]]
            if offset + segment >= length:
                break
            offset += stride
        total = total + (out / weight_sum)[..., d:]
    return total / len(delays) * (std + 1e-8) + mean


class FailingForward:
    """A stand-in forward pass (identity-like, `AffineStandIn` without poison) that raises
    `RuntimeError("device lost")` on its `fail_at`-th call, as a device failing mid-song would."""

    def __init__(self, fail_at: int = 3):
        self.fail_at, self.calls = fail_at, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("device lost")
        return AffineStandIn([1, 1, 1, 1], [0, 0, 0, 0], batch.shape, poison=False)(batch)


class EventLog:
    """Events from several threads, in the order they happened, for tests that show an overlap by the order of
    events rather than by timing: a thread may wait (at most `wait` seconds) for another's events."""

    def __init__(self, wait: float = 3.0):
        self.events: list[tuple[str, object]] = []
        self.changed = threading.Condition()
        self.wait = wait

    def add(self, kind: str, what: object) -> None:
        with self.changed:
            self.events.append((kind, what))
            self.changed.notify_all()

    def wait_for(self, *events: tuple[str, object]) -> None:
        """Block until every one of `events` is logged (or `wait` seconds pass)."""
        with self.changed:
            self.changed.wait_for(lambda: all(e in self.events for e in events), timeout=self.wait)

    def position(self, event: tuple[str, object]) -> int:
        """Where `event` was first logged."""
        return self.events.index(event)

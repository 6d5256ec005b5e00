"""The training loop: `TrainOptions` (demucs's recipe and what people change), the jitted step, validation with
the challenge SDR, checkpoints and exact resumption (`Trainer`).

The state is one value, `(params, opt_state, ema, ema_count)`, replaced whole after each step; a batch is a pure
function of `(seed, step)` (`data.TrainingSet.batch`). A checkpoint after step n holds the state and n, so a run
resumed from it makes the same steps on the same batches: on one CPU its final parameters equal an uninterrupted
run's bit for bit. Data-parallel over devices: the batch split along its first axis, the state replicated; XLA
sums the gradients over the devices (float32 round-off apart, the numbers of one device).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core.frozen_dict import unfreeze
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..errors import HDemucsFlaxError, OptionError
from ..io.multitrack import Multitrack, read_multitrack
from ..models.family import FlaxSeparationModel, SeparationModel
from ..separation.separator import Separator
from . import checkpoints
from .data import BatchLoader, TrainingSet
from .metrics_log import MetricsLog

# What `--resume` must find unchanged, but the learning rate (lowered after a diverged run; the run is then no longer
# the one an uninterrupted run would have been). The rest (steps, how often to validate and checkpoint) may change.
_RECIPE = (
    "batch_size",
    "lr",
    "beta1",
    "beta2",
    "weight_decay",
    "clip_grad",
    "ema",
    "segment",
    "shift",
    "sources",
    "freeze",
    "seed",
    "remix_group",
)


class TrainingDiverged(HDemucsFlaxError, RuntimeError):
    """The loss or the gradients became NaN or infinite; the message names the step and the last checkpoint."""


class ResumeError(HDemucsFlaxError, ValueError):
    """`--resume` cannot continue the run in the output folder as asked (no checkpoint, another recipe)."""


@dataclass(frozen=True)
class TrainOptions:
    """The recipe. Defaults are demucs's (conf/config.yaml): Adam at 3e-4 with betas (0.9, 0.999), no weight
    decay, no gradient clipping, no EMA, a random shift of 1 s, remix groups of 4; `segment` None is the model's
    own (`default_segment`). `batch_size` is demucs's 64 divided for one CPU.

    sources: the sources the loss counts (demucs's per-source `weights`: 1 for these, 0 for the others); empty:
        all. The network still computes every source.
    freeze: parts of the network left as they are: each a substring of top-level module names
        (`encoder`, `freq_decoder`, `crosstransformer`, `time_encoder_0`).
    ema: decay of an exponential moving average of the weights, kept beside them and saved as the model
        (demucs's batch EMA, unbiased); 0: none.
    """

    steps: int = 1000
    batch_size: int = 4
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    clip_grad: float = 0.0
    ema: float = 0.0
    segment: float | None = None
    shift: float = 1.0
    sources: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    seed: int = 0
    valid_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    remix_group: int = 4

    def __post_init__(self) -> None:
        positive_ints = ("steps", "batch_size", "valid_every", "checkpoint_every", "keep_checkpoints", "remix_group")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OptionError(name, value, "must be a whole number >= 1")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise OptionError("lr", self.lr, "must be a number > 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise OptionError(name, getattr(self, name), "must be in [0, 1)")
        for name in ("weight_decay", "clip_grad", "shift"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise OptionError(name, value, "must be a number >= 0")
        if not 0 <= self.ema < 1:
            raise OptionError("ema", self.ema, "must be in [0, 1) (0: no EMA)")
        if self.segment is not None and not (math.isfinite(self.segment) and self.segment > 0):
            raise OptionError("segment", self.segment, "must be a number of seconds > 0")

    def recipe(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        return {key: list(record[key]) if isinstance(record[key], tuple) else record[key] for key in _RECIPE}


@dataclass
class FitResult:
    """What `Trainer.fit` did: the steps done, whether a stop request ended it early, the last checkpoint, the
    final model folder (None when stopped early), the last validation figures and the fraction of the step time
    spent waiting for data."""

    step: int
    stopped: bool
    checkpoint: Path | None
    model_folder: Path | None
    valid: dict[str, float]
    data_wait: float


def _labels(params: Any, freeze: Sequence[str]) -> Any:
    """'frozen' or 'train' for every leaf of `params`, by its top-level module; an `OptionError` for a pattern
    that matches nothing."""
    names = list(params)
    for pattern in freeze:
        if not any(pattern in name for name in names):
            raise OptionError("freeze", pattern, f"matches no part of the network ({', '.join(names)})")
    labels = {}
    for name, tree in params.items():
        label = "frozen" if any(pattern in name for pattern in freeze) else "train"
        labels[name] = jax.tree.map(lambda _, label=label: label, tree)
    return labels


def make_optimizer(options: TrainOptions, params: Any) -> optax.GradientTransformation:
    """Adam's update direction (AdamW's with a weight decay: optax's `adamw` less its last stage, the scaling by
    the learning rate, which the step applies with the rate as an argument, so one compiled step serves any
    rate), after clipping the global gradient norm (when asked), with the frozen parts' updates set to zero."""
    stages = [optax.clip_by_global_norm(options.clip_grad)] if options.clip_grad else []
    stages.append(optax.scale_by_adam(options.beta1, options.beta2))
    if options.weight_decay:
        stages.append(optax.add_decayed_weights(options.weight_decay))
    direction = optax.chain(*stages)
    if not options.freeze:
        return direction
    return optax.multi_transform({"train": direction, "frozen": optax.set_to_zero()}, _labels(params, options.freeze))


def source_weights(model_sources: Sequence[str], chosen: Sequence[str]) -> np.ndarray:
    """float32 (sources,): 1 for the sources the loss counts, 0 for the others; an `OptionError` names an unknown
    source."""
    for name in chosen:
        if name not in model_sources:
            raise OptionError("sources", name, f"is not a source of the model ({', '.join(model_sources)})")
    return np.array([1.0 if not chosen or s in chosen else 0.0 for s in model_sources], np.float32)


def challenge_sdr(references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    """float64 (sources,): demucs's `new_sdr` per source of (sources, channels, samples) arrays."""
    from ..evaluation.bss_eval import new_sdr

    return new_sdr(references, estimates)


class Trainer:
    """Trains `model` (a network of the family, `FlaxHDemucs` or `FlaxHTDemucs`) on the `train` tracks, validating
    on `valid`, writing checkpoints, metrics and the final model under `out`.

    Args:
        devices: the JAX devices the batch is split over (its size must be a multiple of their number); None:
            JAX's default device.
        workers: threads making batches ahead (reading, cutting, augmenting); None: the cores this process may use.
        announce: where one-line status messages go (default: nowhere).
    """

    def __init__(
        self,
        model: SeparationModel,
        train: Sequence[Multitrack],
        valid: Sequence[Multitrack],
        out: str | os.PathLike,
        options: TrainOptions,
        *,
        devices: Sequence[Any] | None = None,
        workers: int | None = None,
        described: dict[str, Any] | None = None,
        announce: Callable[[str], None] = lambda message: None,
    ):
        if not isinstance(model, FlaxSeparationModel):
            raise OptionError("model", type(model).__name__, "train one network at a time (not a bag of models)")
        self.model: FlaxSeparationModel = model
        self.options, self.out = options, Path(out)
        self.announce = announce
        self.sources = list(model.config.sources)
        self.weights = source_weights(self.sources, options.sources)
        rate, channels = int(model.config.sampling_rate), int(model.config.audio_channels)
        segment_seconds = model.default_segment if options.segment is None else options.segment
        limit = model.max_segment
        if limit is not None and segment_seconds > limit + 1e-9:
            raise OptionError("segment", segment_seconds, f"is longer than the model accepts: at most {limit:g} s")
        self.segment = round(segment_seconds * rate)
        self.devices = list(devices) if devices else [jax.devices()[0]]
        if options.batch_size % len(self.devices):
            raise OptionError(
                "batch_size", options.batch_size, f"must be a multiple of the number of devices ({len(self.devices)})"
            )
        self.group_size = options.remix_group if options.batch_size % options.remix_group == 0 else options.batch_size
        self.workers = workers or max(1, len(os.sched_getaffinity(0)))
        shift = round(options.shift * rate)
        self.data = TrainingSet(
            train, self.sources, rate, channels, self.segment, shift, shift or self.segment, self.workers
        )
        self.valid = list(valid)
        self.described = described or {}
        self.optimizer = make_optimizer(options, model.params)
        mesh = Mesh(np.asarray(self.devices), ("batch",))
        self.rows, self.replicated = NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())
        self._step = jax.jit(self._train_step)
        self._apply = jax.jit(lambda params, waveform: model(waveform, params=params).sources)

    # -- the step

    def _loss(self, params: Any, mixtures: jax.Array, stems: jax.Array) -> tuple[jax.Array, jax.Array]:
        """demucs's L1: mean |estimate - stems| per source over channels, samples and the batch, weighted."""
        estimates = self.model(mixtures, params=params).sources
        per_source = jnp.mean(jnp.abs(estimates - stems), axis=(0, 2, 3))
        weights = jnp.asarray(self.weights)
        return jnp.sum(per_source * weights) / jnp.sum(weights), per_source

    def _train_step(
        self, state: tuple, lr: jax.Array, mixtures: jax.Array, stems: jax.Array
    ) -> tuple[tuple, dict[str, jax.Array]]:
        params, opt_state, ema, ema_count = state
        (loss, per_source), grads = jax.value_and_grad(self._loss, has_aux=True)(params, mixtures, stems)
        direction, opt_state = self.optimizer.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, d: p - lr * d, params, direction)  # optax.scale_by_learning_rate's sign
        if self.options.ema:
            # demucs's unbiased EMA: the weight of the newest parameters is 1 / (1 + d + d^2 + ...)
            ema_count = ema_count * self.options.ema + 1
            w = 1 / ema_count
            ema = jax.tree.map(lambda e, p: e * (1 - w) + p * w, ema, params)
        metrics = {"loss": loss, "per_source": per_source, "grad_norm": optax.tree.norm(grads)}
        return (params, opt_state, ema, ema_count), metrics

    def initial_state(self) -> tuple:
        params = jax.tree.map(lambda a: np.asarray(a, np.float32), unfreeze(self.model.params))
        ema = params if self.options.ema else {}
        return params, self.optimizer.init(params), ema, np.float32(0.0)

    def _host(self, state: tuple) -> tuple:
        return jax.tree.map(np.asarray, jax.device_get(state))

    def _model_params(self, state: tuple) -> Any:
        params, _, ema, _ = state
        return ema if self.options.ema else params

    # -- validation

    def validate(self, params: Any) -> dict[str, float]:
        """Separate each validation track's mixture (the sum of its stems when it has none) with `params` and
        score it: `valid_l1` (mean absolute error), `valid_sdr_<source>` (demucs's new_sdr, mean over tracks) and
        `valid_sdr` (their mean over the sources trained)."""
        placed = jax.device_put(params, self.replicated)
        separator = Separator(
            self.model,
            segment=self.segment / self.model.config.sampling_rate,
            forward=lambda batch: self._apply(placed, batch),
        )
        l1, sdrs = [], []
        for track in self.valid:
            audio = read_multitrack(track, self.sources, with_mixture=True)
            mixture = audio.mixture if audio.mixture is not None else audio.stems.sum(0)
            out = separator.separate(mixture, audio.sample_rate)
            estimates = np.stack([out[s] for s in self.sources])
            l1.append(float(np.mean(np.abs(estimates - audio.stems), dtype=np.float64)))
            sdrs.append(challenge_sdr(audio.stems, estimates))
        per_source = np.mean(sdrs, axis=0)
        chosen = self.weights > 0
        figures = {"valid_l1": float(np.mean(l1)), "valid_sdr": float(np.mean(per_source[chosen]))}
        figures.update({f"valid_sdr_{s}": float(v) for s, v in zip(self.sources, per_source, strict=True)})
        return figures

    # -- checkpoints

    def _record(self) -> dict[str, Any]:
        return {"recipe": self.options.recipe(), "sources": self.sources, **self.described}

    def _save_model(self, params: Any) -> Callable[[Path], None]:
        def save(folder: Path) -> None:
            self.model.params = params
            self.model.save_pretrained(folder, safe_serialization=True)

        return save

    def _checkpoint(self, step: int, state: tuple) -> Path:
        host = self._host(state)
        return checkpoints.write_checkpoint(
            self.out,
            step,
            {"params": host[0], "opt_state": host[1], "ema": host[2], "ema_count": host[3]},
            self._record(),
            self._save_model(self._model_params(host)),
            self.options.keep_checkpoints,
        )

    def _restore(self) -> tuple[int, tuple, Path]:
        found = checkpoints.list_checkpoints(self.out)
        if not found:
            raise ResumeError(f"{self.out}: no checkpoint to resume from (run without --resume to start)")
        step, folder = found[-1]
        record = checkpoints.read_trainer_record(folder)
        if record.get("format") != checkpoints.FORMAT:
            raise ResumeError(f"{folder}: written by another version of the trainer (format {record.get('format')})")
        mine, saved_recipe = self._record(), record.get("recipe", {})
        changed = [key for key in mine["recipe"] if saved_recipe.get(key) != mine["recipe"][key] and key != "lr"]
        changed += [key for key in mine if key != "recipe" and record.get(key) != mine[key]]
        if changed:
            what = ", ".join(f"{k} (was {saved_recipe.get(k, record.get(k))!r})" for k in changed)
            raise ResumeError(f"{folder}: --resume continues the same run; these differ: {what}")
        if saved_recipe.get("lr") != self.options.lr:  # after a diverged run: the one change a resume may make
            self.announce(f"learning rate {saved_recipe.get('lr')} -> {self.options.lr} from step {step}")
        params, opt_state, ema, count = self.initial_state()
        template = {"params": params, "opt_state": opt_state, "ema": ema, "ema_count": count}
        saved = checkpoints.read_state(folder, template)
        state = (saved["params"], saved["opt_state"], saved["ema"], np.float32(saved["ema_count"]))
        return step, state, folder

    # -- the loop

    def fit(
        self,
        *,
        resume: bool = False,
        stop: threading.Event | None = None,
        progress: Callable[[int, dict[str, float]], None] | None = None,
    ) -> FitResult:
        """Train up to `options.steps` steps (from the latest checkpoint with `resume`). Validates every
        `valid_every` steps and at the end, checkpoints every `checkpoint_every` steps and at the end, and writes
        the final model to `out/model`. `stop` set: a checkpoint of the steps done, then return (`stopped`).
        Raises `TrainingDiverged` (the last checkpoint kept as it is), `ResumeError`, `OptionError`."""
        options = self.options
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoints.sweep_staging(self.out)
        if resume:
            start, state, folder = self._restore()
            self.announce(f"resuming from {folder} (step {start})")
        else:
            if checkpoints.list_checkpoints(self.out):
                raise ResumeError(f"{self.out}: holds checkpoints of a run; pass --resume, or choose another --out")
            start, state = 0, self.initial_state()
        state = jax.device_put(state, self.replicated)
        lr = jax.device_put(np.float32(options.lr), self.replicated)
        log = MetricsLog(self.out, start)
        loader = BatchLoader(self.data, options.batch_size, options.seed, self.group_size, start, self.workers)
        last_checkpoint = checkpoints.list_checkpoints(self.out)[-1][1] if resume else None
        valid: dict[str, float] = {}
        step, stepping, wall_start = start, 0.0, time.perf_counter()
        try:
            while step < options.steps:
                waited = loader.waited
                mixtures, stems = next(loader)
                began = time.perf_counter()
                new_state, metrics = self._step(
                    state, lr, jax.device_put(mixtures, self.rows), jax.device_put(stems, self.rows)
                )
                loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    kept = f"the last checkpoint ({last_checkpoint}) is kept" if last_checkpoint else "no checkpoint"
                    raise TrainingDiverged(
                        f"the loss became {loss} at step {step + 1} (gradient norm {grad_norm}): the learning rate "
                        f"{options.lr:g} is too high for this model and data; {kept}; lower --lr"
                    )
                state, step = new_state, step + 1
                stepped = time.perf_counter() - began
                stepping += stepped + loader.waited - waited
                record = {
                    "loss": loss,
                    "grad_norm": grad_norm,
                    "step_seconds": stepped,
                    "data_wait_seconds": loader.waited - waited,
                    **{f"loss_{s}": float(v) for s, v in zip(self.sources, metrics["per_source"], strict=True)},
                }
                log.write(step, record)
                if step % options.valid_every == 0 or step == options.steps:
                    valid = self.validate(self._model_params(state))
                    log.write(step, valid)
                if progress is not None:
                    progress(step, {**record, **valid})
                stopping = stop is not None and stop.is_set()
                if step % options.checkpoint_every == 0 or step == options.steps or stopping:
                    last_checkpoint = self._checkpoint(step, state)
                if stopping:
                    break
        finally:
            loader.close()
            log.close()
        wall = time.perf_counter() - wall_start
        data_wait = loader.waited / stepping if stepping else 0.0
        model_folder = None
        if step >= options.steps:
            from ..zoo.pretrained import save_pretrained_atomic

            self.model.params = self._model_params(self._host(state))
            model_folder = save_pretrained_atomic(self.model, self.out / "model")
            log.plot(self.out / "curves.png")
        self.announce(f"{step - start} steps in {wall:.1f} s; waiting for data: {100 * data_wait:.1f} % of step time")
        return FitResult(step, step < options.steps, last_checkpoint, model_folder, valid, data_wait)

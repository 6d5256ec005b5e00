"""`hdemucs-flax train`: fine-tune a model of the family (or train one from a config) on multitrack folders.

    hdemucs-flax train --model htdemucs --train musdb/train --valid musdb/valid -o runs/ft --steps 2000

Exit status: 0 when the steps asked for are done (the model in OUT/model), 1 for a dataset, model or training
failure (one line; a diverged run keeps its last checkpoint), 2 for a usage error, 128 + the signal when stopped
by Ctrl-C, SIGTERM or SIGHUP after writing a checkpoint (`--resume` continues it exactly).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from .arguments import EXIT_FAILED, EXIT_OK, add_model_arguments, as_usage, print_error, usage_error


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="fine-tune a model (or train one from a config) on multitrack folders (needs the [train] extra)",
        description="Fine-tune --model (default: the default model), or train --config from random weights, on "
        "folders in MUSDB18-HQ's layout (one folder per track holding drums.wav, bass.wav, other.wav, vocals.wav "
        "and optionally mixture.wav; any audio format). demucs's recipe: random segments, random shift, channel "
        "swap, sign flip, random gains, remixing across tracks, L1 loss on waveforms, Adam. Writes checkpoints, "
        "metrics.jsonl, TensorBoard files and curves.png to --out, and the final model to OUT/model (load it with "
        "`separate --model OUT/model`). Ctrl-C or SIGTERM writes a checkpoint first; --resume continues exactly.",
    )
    data = train.add_argument_group("data")
    data.add_argument("--train", required=True, type=Path, metavar="DIR", help="training tracks (MUSDB18-HQ layout)")
    data.add_argument("--valid", required=True, type=Path, metavar="DIR", help="validation tracks (same layout)")
    data.add_argument("-o", "--out", default=Path("training"), type=Path, help="run folder (default: %(default)s)")
    data.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    add_model_arguments(train, devices=True)
    train.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="train from random weights: a config.json of the family (hdemucs or htdemucs), instead of --model",
    )
    recipe = train.add_argument_group("recipe (defaults: demucs's)")
    recipe.add_argument("--steps", type=int, default=1000, help="optimizer steps in all (default: %(default)s)")
    recipe.add_argument("--batch-size", type=int, default=4, help="examples per step (default: %(default)s)")
    recipe.add_argument("--lr", type=float, default=3e-4, help="Adam's learning rate (default: %(default)s)")
    recipe.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay (default: 0)")
    recipe.add_argument("--clip-grad", type=float, default=0.0, help="clip the gradient's global norm (default: off)")
    recipe.add_argument("--ema", type=float, default=0.0, help="decay of an EMA of the weights, saved as the model")
    recipe.add_argument(
        "--segment", type=float, default=None, help="seconds per example (default: the model's segment)"
    )
    recipe.add_argument("--shift", type=float, default=1.0, help="random shift in seconds (default: %(default)s)")
    recipe.add_argument(
        "--sources", nargs="+", default=[], metavar="SOURCE", help="the loss counts only these (default: all)"
    )
    recipe.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="PART",
        help="leave unchanged the top-level modules whose name contains PART (encoder, freq_decoder, "
        "crosstransformer, time_encoder_0; repeatable)",
    )
    recipe.add_argument("--seed", type=int, default=0, help="data order and augmentation seed (default: 0)")
    recipe.add_argument("--remix-group", type=int, default=4, help="remix within groups of N examples (default: 4)")
    run = train.add_argument_group("run")
    run.add_argument("--valid-every", type=int, default=100, help="validate every N steps (default: %(default)s)")
    run.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every N steps (default: 100)")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept (default: %(default)s)")
    run.add_argument(
        "--workers", type=int, default=None, help="threads making batches ahead (default: the cores available)"
    )
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar or status lines")
    train.set_defaults(handler=train_command, command_parser=train)


def _options(args: argparse.Namespace):
    from ..training.trainer import TrainOptions

    return TrainOptions(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        clip_grad=args.clip_grad,
        ema=args.ema,
        segment=args.segment,
        shift=args.shift,
        sources=tuple(args.sources),
        freeze=tuple(args.freeze),
        seed=args.seed,
        valid_every=args.valid_every,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        remix_group=args.remix_group,
    )


def _model_from_config(path: Path, seed: int) -> Any:
    """A network of `path`'s config with weights drawn like the reference's initialisation."""
    import json

    from ..errors import ConfigError
    from ..models.networks import model_class

    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable config.json ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a config.json (expected a JSON object)")
    cls: Any = model_class(raw.get("model_type"), str(path))  # FlaxHDemucs or FlaxHTDemucs: their own config class
    try:
        config = cls.config_class.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from None
    return cls(config, seed=seed)


class _StopOnSignal:
    """While active: the first Ctrl-C, SIGTERM or SIGHUP sets `event` (the trainer checkpoints and returns); a
    second one interrupts at once (checkpoints are written whole or not at all)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()

    def __enter__(self) -> _StopOnSignal:
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train_command(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, DatasetError, ModelLoadError, OptionError

    parser: argparse.ArgumentParser = args.command_parser
    if args.config is not None and args.model is not None:
        return usage_error(parser, "--config trains from random weights, --model fine-tunes: give one of them")
    if args.out.exists() and not args.out.is_dir():
        return usage_error(parser, f"--out {args.out}: is a file; give the folder the run is kept in")
    try:
        options = _options(args)
    except OptionError as error:
        return usage_error(parser, as_usage(error))
    try:
        import optax  # noqa: F401
        import tensorboardX  # noqa: F401
    except ModuleNotFoundError as error:
        print_error(
            f"hdemucs-flax train needs the [train] extra; install it from your checkout: pip install "
            f"'.[train]' ({error})"
        )
        return EXIT_FAILED

    from tqdm import tqdm

    from .model_loading import _status, quiet_hub_logging, show_loading_status

    try:
        from .. import configure_compilation_cache
        from ..runtime import select_devices

        devices = select_devices(args.device, args.devices)
        configure_compilation_cache(False if args.no_compilation_cache else (args.compilation_cache or True))
        import jax.numpy as jnp

        from ..io.multitrack import find_multitracks
        from ..training.trainer import ResumeError, Trainer, TrainingDiverged

        if args.config is not None:
            model = _model_from_config(args.config, options.seed)
            label = str(args.config)
        else:
            from .. import load_model

            quiet_hub_logging()
            show_loading_status(args.quiet)
            _status(args.quiet, f"loading model {args.model or '(default)'} ...")
            model = load_model(
                args.model, revision=args.revision, dtype=jnp.dtype(args.dtype), matmul_precision=args.matmul_precision
            )
            label = str(args.model or "(default)")
        sources = list(model.config.sources)
        train = find_multitracks(args.train, sources)
        valid = find_multitracks(args.valid, sources)
        described = {"model": label, "train_tracks": [t.name for t in train], "valid_tracks": [t.name for t in valid]}
        trainer = Trainer(
            model,
            train,
            valid,
            args.out,
            options,
            devices=devices,
            workers=args.workers,
            described=described,
            announce=lambda message: _status(args.quiet, message),
        )
    except OptionError as error:
        return usage_error(parser, as_usage(error))
    except (DatasetError, ModelLoadError, ConfigError) as error:
        print_error(error)
        return EXIT_FAILED

    _status(args.quiet, f"{len(trainer.data)} examples from {len(train)} tracks; devices: {len(devices)}")
    with (
        tqdm(total=options.steps, desc="training", unit="step", disable=True if args.quiet else None) as bar,
        _StopOnSignal() as stop,
    ):
        bar.update(0)

        def progress(step: int, figures: dict[str, float]) -> None:
            bar.n = step
            shown = {"loss": f"{figures['loss']:.4f}"}
            if "valid_sdr" in figures:
                shown["valid_sdr"] = f"{figures['valid_sdr']:.2f}"
            bar.set_postfix(shown, refresh=True)

        try:
            result = trainer.fit(resume=args.resume, stop=stop.event, progress=progress)
        except ResumeError as error:
            print_error(error)
            return EXIT_FAILED
        except TrainingDiverged as error:
            print_error(error)
            return EXIT_FAILED
        except OSError as error:  # the run folder unwritable or full, a track removed mid-run: checkpoints stay whole
            from ..training.checkpoints import list_checkpoints

            kept = list_checkpoints(args.out) if args.out.is_dir() else []
            after = f"; checkpoint {kept[-1][1]} is kept (continue with --resume)" if kept else ""
            print_error(f"{error.filename or args.out}: {error.strerror or error}{after}")
            return EXIT_FAILED
    if result.stopped:
        name = signal.Signals(stop.signum).name if stop.signum else "a stop request"
        print_error(
            f"stopped by {name} after step {result.step}; checkpoint {result.checkpoint}; continue with --resume"
        )
        return 128 + (stop.signum or signal.SIGINT)
    figures = ", ".join(f"{k} {v:.4g}" for k, v in result.valid.items() if k in ("valid_l1", "valid_sdr"))
    print(
        f"{result.step} steps done ({figures}); waiting for data {100 * result.data_wait:.1f} % of step time; "
        f"model: {result.model_folder}",
        flush=True,
    )
    return EXIT_OK

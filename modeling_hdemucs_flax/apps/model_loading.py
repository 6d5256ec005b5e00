"""Loading the model a command runs: status lines on a terminal, the loader's progress shown as such, the
`--model`'s facts read from its config.json alone, and a warmed-up `Separator` with the batch size settled.
Shared by `separate`, `serve`, `evaluate` and `train`; light at import (logging and argparse), like the commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING

from .arguments import EXIT_FAILED, as_usage, auto_batch_size, print_error, usage_error

if TYPE_CHECKING:
    from .. import OutputOptions, SeparationOptions, Separator
    from ..models.family import SeparationModel
    from ..zoo.model_facts import ModelFacts


def _status(quiet: bool, message: str) -> None:
    if not quiet and sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def choose_batch_size(
    args: argparse.Namespace, model: SeparationModel, schedule: SeparationOptions, devices: list
) -> SeparationOptions:
    """`schedule` with `--batch-size auto` settled for `model` on `devices` (`batch_tuning` per device: the
    platform's default, or on a GPU or TPU the fastest size, measured once on the first device and cached) times
    their number, said in a status line. A given batch size is kept."""
    if not auto_batch_size(args):
        return schedule
    from ..separation.batch_tuning import choose_batch_size as choose

    choice = choose(model, schedule, device=devices[0], announce=lambda message: _status(args.quiet, message))
    total = choice.batch_size * len(devices)
    split = f"; per device, {total} chunks per forward pass over {len(devices)} devices" if len(devices) > 1 else ""
    _status(args.quiet, choice.status() + split)
    return schedule.replace(batch_size=total)


def quiet_hub_logging() -> None:
    """Keep only errors from huggingface_hub's logger: it warns once per retry of an unreachable Hub, and the
    model loader's own one-line error says what failed. huggingface_hub sets its logger's level when its logging
    module is first imported, so that module is imported (light) before the level is set."""
    import huggingface_hub.utils.logging  # noqa: F401  (sets the level that is replaced below)

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


class _LoadingStatus(logging.Handler):
    """Shows the model loader's progress (INFO records of the `modeling_hdemucs_flax.zoo` loaders: which source it
    tries, what it converts) as status lines: on a terminal only, never with --quiet."""

    def __init__(self, quiet: bool):
        super().__init__(logging.INFO)
        self.quiet = quiet

    def emit(self, record: logging.LogRecord) -> None:
        _status(self.quiet, record.getMessage())


def show_loading_status(quiet: bool) -> None:
    """Route the model loader's progress records to `_status` (replacing an earlier call's route)."""
    logger = logging.getLogger("modeling_hdemucs_flax.zoo")  # the loaders (pretrained, demucs_models); by name
    for handler in [h for h in logger.handlers if isinstance(h, _LoadingStatus)]:
        logger.removeHandler(handler)
    logger.addHandler(_LoadingStatus(quiet))
    logger.setLevel(logging.INFO)


def load_separator(args: argparse.Namespace, schedule: SeparationOptions, output: OutputOptions) -> Separator | int:
    """The Separator of `add_model_arguments`' options (with --devices) with `schedule`, on the devices chosen,
    compiled and ready; or the exit status after a one-line error (the model cannot be loaded: 1; an option this
    model or machine cannot honour: 2)."""
    from .. import ModelLoadError, OptionError, configure_compilation_cache

    try:
        from ..options import check_batch_split
        from ..runtime import select_devices

        devices = select_devices(args.device, args.devices)  # first: JAX's backends start here
        if not auto_batch_size(args):
            check_batch_split(schedule.batch_size, len(devices))  # before the model loads
        configure_compilation_cache(False if args.no_compilation_cache else (args.compilation_cache or True))
        import jax.numpy as jnp

        from .. import Separator, load_model

        quiet_hub_logging()
        show_loading_status(args.quiet)
        _status(args.quiet, f"loading model {args.model or '(default)'} ...")
        model = load_model(
            args.model, revision=args.revision, dtype=jnp.dtype(args.dtype), matmul_precision=args.matmul_precision
        )
        output.stem_names(model.config.sources)  # --two-stems must name one of this model's sources
        # A bag computes (and warms up) only what the stems are made of: `--two-stems vocals --other-method minus`
        # with htdemucs_ft runs its vocals member alone. `separate_files` reads nothing else.
        model = model.restricted_to(output.read_sources(model.config.sources))
        schedule = choose_batch_size(args, model, schedule, devices)
        separator = Separator(model, devices=devices, **dataclasses.asdict(schedule))
    except ModelLoadError as error:
        print_error(error)
        return EXIT_FAILED
    except OptionError as error:
        return usage_error(args.command_parser, as_usage(error))
    _status(args.quiet, f"device: {separator.device}")
    _status(args.quiet, "compiling the model (cached for later runs) ...")
    separator.warmup()
    return separator


def _model_facts(args: argparse.Namespace) -> ModelFacts | None | int:
    """The `--model`'s sources, rate and channels from its config.json alone (see `model_facts`); None when the
    config cannot be read here (the loader then says why); the exit status after a one-line error when the
    config describes no usable model."""
    from ..errors import ConfigError
    from ..zoo.model_facts import read_model_facts

    quiet_hub_logging()
    try:
        return read_model_facts(args.model, args.revision)
    except ConfigError as error:  # worded as the loader words a bad config.json
        print_error(f"cannot load model {str(args.model)!r}: {error}")
        return EXIT_FAILED

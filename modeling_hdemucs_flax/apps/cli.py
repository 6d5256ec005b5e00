"""The `hdemucs-flax` command (also `python -m modeling_hdemucs_flax`), modelled on `demucs`.

    hdemucs-flax separate song.mp3 more_songs/ -o separated --two-stems vocals --mp3

Exit status: 0 when every file was separated, 1 when any input, output or the model failed (each problem
is one line on stderr naming the file; the other files are still processed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    add_io_workers_argument,
    add_model_arguments,
    add_output_arguments,
    add_separation_arguments,
    as_usage,
    options_from,
    print_error,
)
from .model_loading import _model_facts, load_separator

if TYPE_CHECKING:
    from .. import AudioInfo, OutputOptions
    from ..separation.file_output import Track


def _add_separate_command(commands: argparse._SubParsersAction) -> None:
    sep = commands.add_parser(
        "separate",
        help="separate audio files into stems (drums, bass, other, vocals)",
        description="Separate audio files into stems. Stems keep the input's sample rate, channel count and (by "
        "default) bit depth; they appear only when complete.",
    )
    sep.add_argument(
        "inputs",
        nargs="+",
        metavar="FILES_OR_DIRS",
        help="audio files (WAV, FLAC, Ogg, Opus, MP3, AIFF, M4A/AAC, WMA, WebM, video files, ...) or folders "
        "searched recursively for them",
    )
    sep.add_argument("-o", "--out", default="separated", type=Path, help="output folder (default: %(default)s)")
    sep.add_argument("--skip-existing", action="store_true", help="leave a file whose stems all exist already alone")
    add_model_arguments(sep, devices=True)
    add_output_arguments(sep)
    add_separation_arguments(sep, per_device=True)
    add_io_workers_argument(sep, "the CPU cores this process may use")
    sep.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines")
    sep.set_defaults(handler=separate_command, command_parser=sep)


def _add_convert_command(commands: argparse._SubParsersAction) -> None:
    from . import convert_command  # light: its heavy imports are inside its handler

    convert_command.register(commands)


def _add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    from . import evaluate_command  # argparse only; the evaluation is imported by its handler

    evaluate_command.register(commands)


def _add_models_command(commands: argparse._SubParsersAction) -> None:
    from . import models_command

    models_command.register(commands)


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    from . import train_command  # argparse only; the trainer is imported by its handler

    train_command.register(commands)


def _add_separate_dataset_command(commands: argparse._SubParsersAction) -> None:
    from .dataset_cli import register  # argparse only; the work is imported by its handler

    register(commands)


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    srv = commands.add_parser(
        "serve",
        help="separate over HTTP: an API server (needs the [serve] extra)",
        description="Serve separation over HTTP (FastAPI + uvicorn). The model is loaded and compiled once; "
        "/v1/health answers 503 until then. Set HDEMUCS_API_TOKEN to require 'Authorization: Bearer <token>'. "
        "The model, schedule and output options below are the defaults of every request; a request may set "
        "two_stems, format, shifts and overlap. The stems come back in a zip as <track>/<stem>.<ext>.",
    )
    add_model_arguments(srv, devices=True)
    add_output_arguments(srv, filename=False)  # a zip's members are always <track>/<stem>.<ext>
    add_separation_arguments(srv, per_device=True)
    server = srv.add_argument_group("server")
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only). Any other address, such as "
        "0.0.0.0, lets every machine that reaches the port in: set HDEMUCS_API_TOKEN",
    )
    server.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    server.add_argument(
        "--max-upload",
        default=None,
        metavar="SIZE",
        help="largest upload, in bytes or like 200mb (default: $HDEMUCS_API_MAX_UPLOAD or 200mb)",
    )
    server.add_argument(
        "--max-duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="longest song (default: $HDEMUCS_API_MAX_DURATION or 600)",
    )
    server.add_argument(
        "--queue-size",
        type=int,
        default=None,
        metavar="N",
        help="requests waiting while one runs; more get 429 (default: $HDEMUCS_API_QUEUE_SIZE or 8)",
    )
    server.add_argument(
        "--job-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a finished job's result is kept (default: $HDEMUCS_API_JOB_TTL or 3600)",
    )
    server.add_argument(
        "--upload-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="longest time an upload may take; slower ones get 408 (default: $HDEMUCS_API_UPLOAD_TIMEOUT or 900)",
    )
    server.add_argument(
        "--upload-idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="longest pause within an upload; a stalled one gets 408 (default: $HDEMUCS_API_UPLOAD_IDLE_TIMEOUT or 60)",
    )
    server.add_argument(
        "--max-uploads",
        type=int,
        default=None,
        metavar="N",
        help="uploads that may arrive at once; more get 429 (default: $HDEMUCS_API_MAX_UPLOADS or 16)",
    )
    server.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="without a token, a host name browsers may use to reach the server besides its IP addresses and "
        "localhost (repeatable; also $HDEMUCS_API_ALLOWED_HOSTS, comma-separated)",
    )
    server.add_argument(
        "--gpu-memory-fraction",
        type=float,
        default=None,
        metavar="F",
        help="share the GPU with other processes: JAX takes at most this fraction of each GPU's memory, as it needs "
        "it (default: $HDEMUCS_API_GPU_MEMORY_FRACTION, else JAX's own: 75%% of each GPU, taken at start)",
    )
    server.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder under which uploads and results are kept while needed (default: the system temp folder)",
    )
    server.add_argument(
        "--preload",
        action="store_true",
        help="only load (download and cache) the model, then exit: for building a container image",
    )
    srv.add_argument("-q", "--quiet", action="store_true", help="no status lines or access log")
    srv.set_defaults(handler=serve_command, command_parser=srv)


# Each subcommand registers its parser with `handler` (args -> exit status) and `command_parser` (for usage
# errors) as defaults. Subcommands with their own module import it inside their handler, keeping --help light.
COMMANDS = (
    _add_separate_command,
    _add_separate_dataset_command,
    _add_serve_command,
    _add_evaluate_command,
    _add_convert_command,
    _add_models_command,
    _add_train_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hdemucs-flax` and its subcommands."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="hdemucs-flax", description="Hybrid Demucs music source separation in JAX/Flax."
    )
    parser.add_argument("--version", action="version", version=f"hdemucs-flax {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def _follow(bar):
    """A Separator progress callback that moves the tqdm `bar`."""

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return progress


@dataclasses.dataclass
class _Work:
    """A run once its inputs are checked: every track's stem paths, the tracks to separate with their headers,
    and how many were skipped (finished before) or failed (not usable audio)."""

    plan: dict[Track, dict[str, Path]]
    todo: dict[Track, AudioInfo] = dataclasses.field(default_factory=dict)
    skipped: int = 0
    failed: int = 0


def _file_error(path: Path, error: BaseException) -> str:
    """One line naming the file: the package's own messages already start with it; anything else gets its type."""
    from ..errors import HDemucsFlaxError

    if not isinstance(error, HDemucsFlaxError):
        return f"{path}: {type(error).__name__}: {error}"
    message = str(error)
    return message if message.startswith(str(path)) else f"{path}: {message}"


def _prepare(
    args: argparse.Namespace, tracks: list[Track], output: OutputOptions, sources: Sequence[str], channels: int
) -> _Work:
    """Plan every stem path (a plan that would lose data, or a `--two-stems` the model lacks, is a usage error:
    exit 2), leave finished tracks alone under `--skip-existing`, and read every other input's header (a file
    that is not usable audio, or has channels the model cannot take, gets its error line). Needs only the
    model's source names and channel count, not the model."""
    from ..errors import HDemucsFlaxError
    from ..io.audio_io import check_channels, inspect_audio

    work = _Work(plan=_plan(args, tracks, output, sources))
    for track in tracks:
        stems = work.plan[track]
        if args.skip_existing and all(p.is_file() for p in stems.values()):
            work.skipped += 1
            print(f"{track.path}: skipped (its {len(stems)} stems exist)", flush=True)
            continue
        try:
            info = inspect_audio(track.path)
            check_channels(info.channels, channels, str(track.path))
            work.todo[track] = info
        except (HDemucsFlaxError, OSError, ValueError, RuntimeError) as error:
            work.failed += 1
            print_error(_file_error(track.path, error))
    return work


def _plan(args: argparse.Namespace, tracks: list[Track], output: OutputOptions, sources: Sequence[str]):
    """Every stem path of every track, or a usage error naming the inputs that would lose data."""
    from .. import OptionError
    from ..separation.file_output import plan_outputs

    parser: argparse.ArgumentParser = args.command_parser
    try:
        return plan_outputs(tracks, args.out, output, sources)
    except OptionError as error:
        parser.error(as_usage(error))  # exits with status 2


def _summary(
    done: int, skipped: int, failed: int, audio_seconds: float, wall_seconds: float, device: str | None = None
) -> str:
    """ "3 files separated (1 skipped, 1 failed): 182.4 s of audio in 45.2 s, 4.0x real time on cpu"; `device`
    is where the network ran (None: it did not run)."""
    extra = ", ".join(f"{n} {what}" for n, what in ((skipped, "skipped"), (failed, "failed")) if n)
    speed = f", {audio_seconds / wall_seconds:.1f}x real time" if done and wall_seconds > 0 else ""
    where = f" on {device}" if done and device else ""
    return (
        f"{done} file{'s' if done != 1 else ''} separated{f' ({extra})' if extra else ''}: "
        f"{audio_seconds:.1f} s of audio in {wall_seconds:.1f} s{speed}{where}"
    )


def separate_command(args: argparse.Namespace) -> int:
    started = time.time()
    schedule, output = options_from(args)
    from ..separation.file_output import find_tracks

    tracks, problems = find_tracks(args.inputs, exclude=args.out)
    for problem in problems:
        print_error(problem)
    if not tracks:
        return EXIT_FAILED

    # Everything the model's config.json tells (its sources) is checked before the weights are loaded and the
    # network compiled: a usage error, a file that is not audio or a run with nothing left to do answers in a
    # fraction of a second, without JAX. Only a model whose config cannot be read here is loaded first.
    facts = _model_facts(args)
    if isinstance(facts, int):
        return facts
    if facts is None:
        separator = load_separator(args, schedule, output)
        if isinstance(separator, int):
            return separator
        sources, channels = separator.sources, separator.audio_channels
    else:
        separator, sources, channels = None, facts.sources, facts.audio_channels
    work = _prepare(args, tracks, output, sources, channels)
    failed, done, skipped, audio_seconds = len(problems) + work.failed, 0, work.skipped, 0.0
    if not work.todo:
        print(_summary(done, skipped, failed, audio_seconds, time.time() - started), flush=True)
        return EXIT_OK if failed == 0 else EXIT_FAILED

    # Heavy imports only once there is work: `--help`, usage errors and finished runs stay fast.
    from tqdm import tqdm

    from .. import ModelOutputError
    from ..io.audio_io import sweep_partial_files
    from ..separation.file_output import separate_files

    if separator is None:
        separator = load_separator(args, schedule, output)
        if isinstance(separator, int):
            return separator
    if tuple(separator.sources) != tuple(sources):  # the Hub repo changed between its config and its weights
        loaded, planned = ", ".join(separator.sources), ", ".join(sources)
        print_error(f"the model loaded separates {loaded}, not the {planned} its config.json named; run again")
        return EXIT_FAILED
    for folder in {path.parent for track in work.todo for path in work.plan[track].values()}:
        sweep_partial_files(folder, started)  # what a killed earlier run left (only its own temporaries)

    disable = True if args.quiet else None  # tqdm: None = bars only on a terminal
    todo = list(work.todo)
    with (
        tqdm(total=len(todo), desc="files", unit="file", position=0, disable=disable) as overall,
        tqdm(desc=todo[0].path.name, unit="chunk", position=1, leave=False, disable=disable) as bar,
    ):
        following: list[Path] = []  # the file the chunk bar follows

        def progress(path: Path, done_chunks: int, total: int) -> None:
            if following != [path]:
                following[:] = [path]
                bar.reset()
                bar.set_description_str(path.name)
            _follow(bar)(done_chunks, total)

        # one schedule over every file: the next file is opened and decoded, and the last one's stems encoded,
        # while the network runs (`separate_files`)
        results = separate_files(separator, todo, args.out, output, progress=progress, io_workers=args.io_workers)
        try:
            for result in results:
                info = work.todo[todo[overall.n]]
                if result.error is not None:
                    failed += 1
                    print_error(_file_error(result.path, result.error))
                else:
                    assert result.stems is not None
                    done += 1
                    audio_seconds += info.duration
                    folder = os.path.commonpath([str(p.parent) for p in result.stems.values()])
                    tqdm.write(f"{result.path}: {len(result.stems)} stems in {folder}", file=sys.stdout)
                overall.update(1)
        except ModelOutputError as error:  # the model is broken: every other file would fail too
            print_error(error)
            return EXIT_FAILED
        finally:
            results.close()
    print(_summary(done, skipped, failed, audio_seconds, time.time() - started, separator.device), flush=True)
    return EXIT_OK if failed == 0 else EXIT_FAILED


_LIMIT_FLAGS = {
    "max_upload_bytes": "--max-upload",
    "max_duration": "--max-duration",
    "queue_size": "--queue-size",
    "job_ttl": "--job-ttl",
    "upload_timeout": "--upload-timeout",
    "upload_idle_timeout": "--upload-idle-timeout",
    "max_uploads": "--max-uploads",
}
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ENV_GPU_MEMORY_FRACTION = "HDEMUCS_API_GPU_MEMORY_FRACTION"


def _share_gpu_memory(args: argparse.Namespace) -> None:
    """Apply `--gpu-memory-fraction` (else $HDEMUCS_API_GPU_MEMORY_FRACTION) before anything starts JAX; a bad
    value is a usage error naming the flag or the variable."""
    from ..errors import OptionError
    from ..runtime import limit_gpu_memory

    parser: argparse.ArgumentParser = args.command_parser
    fraction, where = args.gpu_memory_fraction, f"--gpu-memory-fraction {args.gpu_memory_fraction}"
    raw = os.environ.get(ENV_GPU_MEMORY_FRACTION, "").strip()
    if fraction is None and raw:
        where = f"{ENV_GPU_MEMORY_FRACTION}={raw!r}"
        try:
            fraction = float(raw)
        except ValueError:
            parser.error(f"{where}: must be a number")
    if fraction is not None:
        try:
            limit_gpu_memory(fraction)
        except OptionError as error:
            parser.error(f"{where}: {error.rule}")


def serve_command(args: argparse.Namespace) -> int:
    schedule, output = options_from(args)
    _share_gpu_memory(args)
    args.model = args.model or os.environ.get("HDEMUCS_MODEL") or None  # the container's build argument
    if args.preload:
        from .. import ModelLoadError, load_model

        try:
            load_model(args.model, revision=args.revision)
        except ModelLoadError as error:
            print_error(error)
            return EXIT_FAILED
        return EXIT_OK
    try:
        from . import serve  # FastAPI and uvicorn; JAX only once the server runs
    except ModuleNotFoundError as error:
        print_error(
            "hdemucs-flax serve needs the [serve] extra; install it from your checkout: "
            f"pip install '.[serve]' ({error})"
        )
        return EXIT_FAILED
    from .. import OptionError
    from ..zoo.model_names import model_label

    parser: argparse.ArgumentParser = args.command_parser
    try:
        limits = serve.ServeLimits.from_env(
            max_upload_bytes=args.max_upload,
            max_duration=args.max_duration,
            queue_size=args.queue_size,
            job_ttl=args.job_ttl,
            upload_timeout=args.upload_timeout,
            upload_idle_timeout=args.upload_idle_timeout,
            max_uploads=args.max_uploads,
        )
    except OptionError as error:
        flag = _LIMIT_FLAGS.get(error.option)
        where = f"{flag} {shlex.quote(str(error.value))}" if flag else f"{error.option}={error.value!r}"
        parser.error(f"{where}: {error.rule}")
    token = os.environ.get(serve.ENV_TOKEN)
    if token is not None and not token.strip():  # an empty token would silently turn authentication off
        parser.error(f"{serve.ENV_TOKEN} is set but empty: set it to a secret, or unset it to serve without a token")
    allowed_hosts = [*args.allowed_host, *os.environ.get(serve.ENV_ALLOWED_HOSTS, "").split(",")]
    allowed_hosts = [name.strip() for name in allowed_hosts if name.strip()]
    for name in allowed_hosts:
        if not all(c.isalnum() or c in "-._" for c in name):
            parser.error(f"--allowed-host {shlex.quote(name)}: must be a host name, without scheme, port or path")
    if token is None and args.host not in _LOOPBACK_HOSTS:
        print(
            f"warning: listening on {args.host} without {serve.ENV_TOKEN}: anyone who reaches the port can use it",
            file=sys.stderr,
            flush=True,
        )
    return serve.serve(
        lambda: load_separator(args, schedule, output),
        host=args.host,
        port=args.port,
        limits=limits,
        output=output,
        token=token,
        allowed_hosts=allowed_hosts,
        workdir=args.workdir,
        model_id=model_label(args.model, args.revision),
        quiet=args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if unknown:  # the subcommand's usage, not the top level's
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.handler(args)
    except KeyboardInterrupt as interrupt:
        from ..runtime import Terminated

        what = f"terminated ({interrupt})" if isinstance(interrupt, Terminated) else "interrupted"
        print_error(f"{what}; no partial stem files were kept")
        return 128 + interrupt.signum if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


def entry_point(argv: Sequence[str] | None = None) -> int:
    """The `hdemucs-flax` program (console script and `python -m modeling_hdemucs_flax`): `main` in a process
    that runs nothing else, so it may also keep transformers from importing torch (see
    `hide_torch_from_transformers`), add the package's XLA flags (`configure_xla`) and turn SIGTERM/SIGHUP
    into the interrupt Ctrl-C is (so `timeout`, `docker stop` and systemd leave no temporary files). Library
    callers use `main`, which changes no process-wide setting of its own."""
    from ..runtime import configure_xla, hide_torch_from_transformers, interrupt_on_termination

    hide_torch_from_transformers()
    configure_xla()
    interrupt_on_termination()
    return main(argv)


if __name__ == "__main__":
    sys.exit(entry_point())

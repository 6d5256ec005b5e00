"""`hdemucs-flax convert FILE -o FOLDER`: a torchaudio HDemucs checkpoint (`.pt`) or one of demucs's own (`.th`:
HTDemucs v4, HDemucs v3) into a model folder, without torch.

    hdemucs-flax convert hdemucs_high_trained.pt -o hdemucs-high      # then: separate --model hdemucs-high
    hdemucs-flax convert 955717e8-8726e21a.th -o htdemucs              # demucs's htdemucs

The kind of file is told by its content, not its name: a torch zip whose top-level object is a dict with
`serialize_model`'s keys (`klass`, `args`, `kwargs`, `state`, `training_args`) is a demucs package
(`weights.demucs_checkpoint.is_demucs_package`); anything else is read as a torchaudio state dict. Both are read
by the package's own torch-free readers (`weights.torch_checkpoint`, `weights.demucs_checkpoint`: allow-listed
pickle globals, nothing a file names is imported or called), converted by the same code as the publishing
scripts (`models.hdemucs.convert_torchaudio`; `models.from_demucs.model_from_demucs`, which takes the architecture from
the package's class and arguments, and its float16 weights as float32) and written with `save_pretrained_atomic`
(the folder appears complete or not at all). There is no parity gate against the reference here (torch is not
needed, so it is not run); the conversion is checked for completeness (every key, every shape) and the weights
for finiteness. A torchaudio file whose sha256 is the published digest of one of torchaudio's bundles gets that
bundle's architecture; any other the high preset, or `--config`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models.family import FlaxSeparationModel

EXIT_OK, EXIT_FAILED = 0, 1


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand to `commands` (see `cli.COMMANDS`)."""
    parser = commands.add_parser(
        "convert",
        help="convert a torchaudio HDemucs (.pt) or demucs (.th) checkpoint into a model folder, without torch",
        description="Convert a torchaudio HDemucs checkpoint (a torch.save'd state dict, e.g. "
        "hdemucs_high_trained.pt) or one of demucs's own (a .th file as demucs's serialize_model writes it, e.g. "
        "955717e8-8726e21a.th: HTDemucs v4 or HDemucs v3; the architecture comes from the file) into a model "
        "folder for --model, reading it without torch; the kind of file is told by its content. There is no "
        "parity check against the reference (that needs torch; conversion/convert_torchaudio_hdemucs.py does it "
        "for torchaudio): the conversion checks that every weight is present with its shape, and that the weights "
        "are finite.",
    )
    parser.add_argument("checkpoint", type=Path, metavar="FILE", help="the torchaudio (.pt) or demucs (.th) checkpoint")
    parser.add_argument(
        "-o", "--out", type=Path, required=True, metavar="FOLDER", help="the model folder to create (new or empty)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="CONFIG_JSON",
        help="the architecture of a torchaudio checkpoint (an HDemucsConfig config.json; default: the matching "
        "torchaudio bundle's, else the high preset with drums, bass, other, vocals); a demucs .th carries its own",
    )
    parser.add_argument("--sha256", default=None, help="refuse the file unless its sha256 is this digest")
    parser.set_defaults(handler=convert_command, command_parser=parser)


def _error(message: object) -> int:
    from ..errors import one_line

    print(f"error: {one_line(str(message))}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def convert_command(args: argparse.Namespace) -> int:
    from ..weights.demucs_checkpoint import is_demucs_package
    from ..weights.downloads import sha256_file

    source, out = args.checkpoint, args.out
    if not source.is_file():
        return _error(f"{source}: no such file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _error(f"{out}: exists and is not an empty folder; choose a new folder")
    digest = sha256_file(source)
    if args.sha256 is not None and digest != args.sha256.lower():
        return _error(f"{source}: sha256 mismatch (got {digest}, expected {args.sha256.lower()}); nothing written")
    if is_demucs_package(source):
        if args.config is not None:
            return _error(f"{source}: a demucs checkpoint carries its architecture; --config is for torchaudio files")
        return _convert_demucs(source, out, digest)
    return _convert_torchaudio(source, out, digest, args.config)


def _convert_torchaudio(source: Path, out: Path, digest: str, config_json: Path | None) -> int:
    from ..zoo.torchaudio_bundles import BUNDLES

    bundle = next((b for b in BUNDLES.values() if b.sha256 == digest), None)

    # Heavy imports only now: transformers and JAX for the model, never torch.
    from .. import CheckpointError, ConfigError, FlaxHDemucs, HDemucsConfig
    from ..weights.torch_checkpoint import load_torch_state_dict

    try:
        if config_json is not None:
            config = HDemucsConfig.from_json_file(str(config_json))
        else:
            config = bundle.config() if bundle is not None else HDemucsConfig()
        state = load_torch_state_dict(source)
        model = FlaxHDemucs.from_torchaudio(state, config)
    except (CheckpointError, ConfigError) as error:
        return _error(error)
    except (OSError, ValueError, TypeError, AttributeError) as error:
        return _error(f"{config_json}: not a usable config.json ({type(error).__name__}: {error})")
    known = f", torchaudio's {bundle.name}" if bundle is not None else ""
    return _save(model, source, out, f"sha256 {digest}{known}", len(state))


def _convert_demucs(source: Path, out: Path, digest: str) -> int:
    # Heavy imports only now: transformers and JAX for the model, never torch.
    from .. import CheckpointError, ConfigError
    from ..models.from_demucs import model_from_demucs
    from ..weights.demucs_checkpoint import read_demucs_package

    try:
        package = read_demucs_package(source)  # its errors name the file already
    except CheckpointError as error:
        return _error(error)
    try:
        model = model_from_demucs(package)
    except (CheckpointError, ConfigError) as error:
        return _error(f"{source}: {error}")
    except (ValueError, TypeError) as error:  # a value of an odd type that the config's checks did not foresee
        return _error(f"{source}: its args and kwargs build no model ({type(error).__name__}: {error})")
    return _save(model, source, out, f"sha256 {digest}, demucs's {package.klass}", len(package.state))


def _save(model: FlaxSeparationModel, source: Path, out: Path, what: str, tensors: int) -> int:
    """Check `model`'s weights are finite, write it to `out` (atomically) and say so."""
    import jax
    import numpy as np

    from ..zoo.pretrained import save_pretrained_atomic

    broken = [
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(model.params)
        if not np.isfinite(np.asarray(leaf)).all()
    ]
    if broken:
        return _error(f"{source}: NaN or infinite weights in {', '.join(broken[:5])}; nothing written")
    try:
        save_pretrained_atomic(model, out)
    except OSError as error:
        return _error(f"{out}: cannot write the model folder ({error.strerror or error})")
    print(f"{source} ({what}) -> {out}: {tensors} tensors; use it with --model {out}")
    return EXIT_OK

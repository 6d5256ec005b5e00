"""`hdemucs-flax convert FILE.pt -o FOLDER`: a torchaudio HDemucs checkpoint into a model folder, without torch.

    hdemucs-flax convert hdemucs_high_trained.pt -o hdemucs-high      # then: separate --model hdemucs-high

The file is read by the package's own torch-free reader (`torch_checkpoint`), converted by the same code as the
publishing script (`models.hdemucs.convert_torchaudio`) and written with `save_pretrained_atomic` (the folder
appears complete or not at all). Unlike `conversion/convert_torchaudio_hdemucs.py` there is no parity gate against
torchaudio (torch is not needed here, so it is not run); the conversion is checked for completeness (every key,
every shape) and the weights for finiteness. A file whose sha256 is the published digest of one of torchaudio's
bundles gets that bundle's architecture; any other file the high preset, or `--config`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED = 0, 1


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand to `commands` (see `cli.COMMANDS`)."""
    parser = commands.add_parser(
        "convert",
        help="convert a torchaudio HDemucs checkpoint (.pt) into a model folder, without torch",
        description="Convert a torchaudio HDemucs checkpoint (a torch.save'd state dict, e.g. "
        "hdemucs_high_trained.pt) into a model folder for --model, reading it without torch. There is no "
        "parity check against torchaudio (that needs torch; conversion/convert_torchaudio_hdemucs.py does it): "
        "the conversion checks that every weight is present with its shape, and that the weights are finite.",
    )
    parser.add_argument("checkpoint", type=Path, metavar="FILE", help="the torchaudio checkpoint")
    parser.add_argument(
        "-o", "--out", type=Path, required=True, metavar="FOLDER", help="the model folder to create (new or empty)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="CONFIG_JSON",
        help="the architecture (an HDemucsConfig config.json; default: the matching torchaudio bundle's, else "
        "the high preset with drums, bass, other, vocals)",
    )
    parser.add_argument("--sha256", default=None, help="refuse the file unless its sha256 is this digest")
    parser.set_defaults(handler=convert_command, command_parser=parser)


def _error(message: object) -> int:
    from ..errors import one_line

    print(f"error: {one_line(str(message))}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def convert_command(args: argparse.Namespace) -> int:
    from ..weights.downloads import sha256_file
    from ..zoo.torchaudio_bundles import BUNDLES

    source, out = args.checkpoint, args.out
    if not source.is_file():
        return _error(f"{source}: no such file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _error(f"{out}: exists and is not an empty folder; choose a new folder")
    digest = sha256_file(source)
    if args.sha256 is not None and digest != args.sha256.lower():
        return _error(f"{source}: sha256 mismatch (got {digest}, expected {args.sha256.lower()}); nothing written")
    bundle = next((b for b in BUNDLES.values() if b.sha256 == digest), None)

    # Heavy imports only now: transformers and JAX for the model, never torch.
    from .. import CheckpointError, ConfigError, FlaxHDemucs, HDemucsConfig
    from ..weights.torch_checkpoint import load_torch_state_dict
    from ..zoo.pretrained import save_pretrained_atomic

    try:
        if args.config is not None:
            config = HDemucsConfig.from_json_file(str(args.config))
        else:
            config = bundle.config() if bundle is not None else HDemucsConfig()
        state = load_torch_state_dict(source)
        model = FlaxHDemucs.from_torchaudio(state, config)
    except (CheckpointError, ConfigError) as error:
        return _error(error)
    except (OSError, ValueError, TypeError, AttributeError) as error:
        return _error(f"{args.config}: not a usable config.json ({type(error).__name__}: {error})")
    import jax
    import numpy as np

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
    known = f", torchaudio's {bundle.name}" if bundle is not None else ""
    print(f"{source} (sha256 {digest}{known}) -> {out}: {len(state)} tensors; use it with --model {out}")
    return EXIT_OK

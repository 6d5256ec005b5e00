"""`hdemucs-flax models`: the known models, and which of them this machine already has (usable offline).

    name                                   cached   licence           trained on
    hdemucs-flax/hdemucs-high-musdb-plus   yes      CC BY-NC-SA 4.0   MUSDB-HQ train and test ... (default)

A model counts as cached when it can be loaded without the network: its converted copy in the Hugging Face
cache, the default chain's own conversion in `cache_dir()/converted/`, or torchaudio's original file in
`cache_dir()/torchaudio/` (converted on first use). Reads only the file system; loads neither JAX nor
transformers.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .downloads import TorchaudioBundle


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `models` subcommand to `commands` (see `cli.COMMANDS`)."""
    parser = commands.add_parser(
        "models",
        help="list the known models and which are cached on this machine",
        description="List the known Hub models (for --model) and where this machine has a copy of each.",
    )
    parser.set_defaults(handler=models_command, command_parser=parser)


def cached_copies(bundle: TorchaudioBundle) -> list[str]:
    """Where a known model is available offline here: "hub cache", "converted", "torchaudio file"."""
    from huggingface_hub import try_to_load_from_cache

    from .downloads import torchaudio_checkpoint_path
    from .runtime import cache_dir

    places = []
    if bundle.hub_repo and all(
        isinstance(try_to_load_from_cache(bundle.hub_repo, name), str) for name in ("config.json", "model.safetensors")
    ):
        places.append("hub cache")
    if (cache_dir() / "converted" / bundle.name.lower() / "config.json").is_file():
        places.append("converted")
    if torchaudio_checkpoint_path(bundle).is_file():
        places.append("torchaudio file")
    return places


def models_command(args: argparse.Namespace) -> int:
    from .downloads import BUNDLES
    from .runtime import cache_dir

    default = BUNDLES["HDEMUCS_HIGH_MUSDB_PLUS"]
    rows = [("model (--model)", "cached here", "licence", "torchaudio bundle, trained on")]
    for bundle in BUNDLES.values():
        name = bundle.hub_repo or bundle.name
        if bundle is default:
            name += " (default)"
        data = bundle.training_data.split(".")[0]
        rows.append((name, ", ".join(cached_copies(bundle)) or "no", bundle.licence, f"{bundle.name}: {data}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3])
    print(f"cache folder: {cache_dir()} (HDEMUCS_FLAX_CACHE); any save_pretrained folder works as --model too")
    return 0

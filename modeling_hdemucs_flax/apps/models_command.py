"""`hdemucs-flax models`: the known models, and which of them this machine already has (usable offline).

    hdemucs-flax/hdemucs-high-musdb-plus (default)
        cached here:  no
        licence:      CC BY-NC-SA 4.0
        weights:      torchaudio's HDEMUCS_HIGH_MUSDB_PLUS
        trained on:   MUSDB-HQ train and test sets plus 150 extra songs from an internal database
                      produced for Meta. ...

Every line fits `WIDTH` columns (a model's facts stand under its name, long text is wrapped), paths aside.

A model counts as cached when it can be loaded without the network: its converted copy in the Hugging Face
cache, the default chain's own conversion in `cache_dir()/converted/`, or torchaudio's original file in
`cache_dir()/torchaudio/` (converted on first use). Reads only the file system; loads neither JAX nor
transformers.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..zoo.torchaudio_bundles import TorchaudioBundle

WIDTH = 100  # columns of the listing
# torchaudio's high HDemucs (both bundles): the tensors of its state dict
# (a test recounts it); its files hold float32.
TORCHAUDIO_HIGH_PARAMETERS = 83_639_368
INDENT = "    "


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `models` subcommand to `commands` (see `cli.COMMANDS`)."""
    parser = commands.add_parser(
        "models",
        help="list the known models and which are cached on this machine",
        description="List the known models (for --model / -n) and where this machine has a copy of each.",
    )
    parser.set_defaults(handler=models_command, command_parser=parser)


def cached_copies(bundle: TorchaudioBundle) -> list[str]:
    """Where a known model is available offline here: "hub cache", "converted", "torchaudio file"."""
    from huggingface_hub import try_to_load_from_cache

    from ..runtime import cache_dir
    from ..zoo.torchaudio_bundles import torchaudio_checkpoint_path

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


def _entry(label: str, text: str) -> list[str]:
    """`label: text` under a model's name, the text wrapped to `WIDTH` columns and aligned after the labels."""
    indent = " " * len(INDENT + "cached here:  ")
    first = f"{INDENT}{label + ':':<{len(indent) - len(INDENT)}}"
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=indent, break_long_words=False)


def _size(parameters: int, members: int, bytes_each: int) -> str:
    """`41.98 M` or `4 x 41.98 M`, and the download size at `bytes_each` bytes a weight."""
    count = f"{parameters / 1e6:.2f} M"
    count = f"{members} x {count}" if members > 1 else count
    return f"{count} (download {members * parameters * bytes_each / 1e6:.0f} MB)"


def models_command(args: argparse.Namespace) -> int:
    from ..runtime import cache_dir
    from ..zoo import demucs_models
    from ..zoo.demucs_registry import DEMUCS_MODELS
    from ..zoo.torchaudio_bundles import BUNDLES, DEFAULT_BUNDLE

    for bundle in BUNDLES.values():
        name = bundle.hub_repo or bundle.name
        print(f"{name} (default)" if bundle.name == DEFAULT_BUNDLE.name else name)
        lines = _entry("cached here", ", ".join(cached_copies(bundle)) or "no")
        lines += _entry("licence", bundle.licence)
        lines += _entry("weights", f"torchaudio's {bundle.name}")
        lines += _entry("trained on", bundle.training_data)
        lines += _entry("sources", ", ".join(bundle.sources))
        lines += _entry("parameters", _size(TORCHAUDIO_HIGH_PARAMETERS, 1, 4))
        print("\n".join(lines))
    for info in DEMUCS_MODELS.values():
        print(info.name)
        lines = _entry("cached here", ", ".join(demucs_models.cached_copies(info)) or "no")
        lines += _entry("licence", info.licence)
        files = ", ".join(member.file_name for member in info.members)
        lines += _entry("weights", f"demucs's {info.name} ({files})")
        lines += _entry("about", info.description)
        lines += _entry("sources", ", ".join(info.sources))
        lines += _entry("parameters", _size(info.parameters, len(info.members), 2))
        sdr = f"{info.sdr_db:.1f} dB: {info.sdr_source}" if info.sdr_db is not None else info.sdr_source
        lines += _entry("SDR", sdr)
        print("\n".join(lines))
    print("Any folder written by save_pretrained (or `hdemucs-flax convert`) works as --model too.")
    print(f"cache folder (HDEMUCS_FLAX_CACHE): {cache_dir()}")
    return 0

"""Where model weights come from: a local folder or a Hugging Face Hub repo id.

`load_model` is the one entry point the Separator, the CLI and the Space use to turn a user's `--model`
value into a `FlaxHDemucs`. Errors are `ModelLoadError` with a one-line message saying what is missing and
how to provide it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp

from .modeling_flax_hdemucs import FlaxHDemucs

# The converted HDEMUCS_HIGH_MUSDB_PLUS checkpoint on the Hub (see conversion/README.md).
DEFAULT_MODEL = "hdemucs-flax/hdemucs-high-musdb-plus"


class ModelLoadError(RuntimeError):
    """The requested model could not be found or loaded; the message is one line for the user."""


def load_model(model: str | os.PathLike | None = None, *, dtype=jnp.float32, revision: str | None = None) -> FlaxHDemucs:
    """Load `model` (a `save_pretrained` folder or a Hub repo id; None means `DEFAULT_MODEL`)."""
    spec = str(model) if model is not None else DEFAULT_MODEL
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path}: not a model folder (no config.json); pass a folder written by save_pretrained")
            return FlaxHDemucs.from_pretrained(path, dtype=dtype)
        return FlaxHDemucs.from_pretrained(spec, dtype=dtype, revision=revision or "main")
    except ModelLoadError:
        raise
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load model {spec!r}: {first_line}") from error

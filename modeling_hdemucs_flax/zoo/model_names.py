"""How an application names the model it serves to its users (the HTTP API's `model` field, the Space's footer):
a Hub repo id as given, a local folder by its name only, so a server's paths are never shown.

Light (no JAX, no transformers, no web framework): `serve` and the Space both import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def model_label(model: str | os.PathLike | None, revision: str | None = None) -> str:
    """What users are told the model is: the Hub repo id (with @revision), the default model's id (None), or a
    local folder's name only (a value that exists on disk or starts with ".", "/" or "~")."""
    if model is None:
        from .pretrained import DEFAULT_MODEL  # the model is about to be loaded: JAX is imported anyway

        return DEFAULT_MODEL
    text = str(model)
    is_path = os.path.exists(text) or text.startswith((".", "/", "~"))
    label = Path(os.path.abspath(os.path.expanduser(text))).name if is_path else text  # "." names its folder too
    return f"{label}@{revision}" if revision else label

"""What a `--model` value names: a local folder or a Hub repo id. Standard library only, so the command line
can tell the two apart before it imports huggingface_hub."""

from __future__ import annotations

import os


def looks_like_path(spec: str) -> bool:
    """A value that cannot be a Hub repo id ("name" or "namespace/name") is meant as a folder."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec or os.path.exists(spec)

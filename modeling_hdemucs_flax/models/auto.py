"""Any model of the family from a folder or Hub repo: one network (`networks.load_network`: its config.json's
`model_type` picks the class), or a bag folder (`bag.json` and its members' folders) as a `FlaxDemucsBag`.
"""

from __future__ import annotations

import os
from typing import Any

from ..weights.hub import load_pretrained
from .bag import FlaxDemucsBag
from .bag_manifest import is_bag_folder
from .family import SeparationModel
from .networks import load_network


def load_family_model(name: str | os.PathLike, *model_args: Any, **kwargs: Any) -> SeparationModel:
    """`load_network(name)`, or for a local bag folder (one holding `bag.json`, as `FlaxDemucsBag.save_pretrained`
    writes it) the bag, each member loaded by `load_network` with `kwargs`. A local folder comes first, as in
    transformers. Raises what `load_network` raises."""
    if os.path.isdir(os.path.expanduser(os.fspath(name))) and is_bag_folder(os.path.expanduser(os.fspath(name))):
        return load_pretrained(FlaxDemucsBag.from_pretrained, name, *model_args, **kwargs)
    return load_network(name, *model_args, **kwargs)

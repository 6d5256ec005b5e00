"""`FlaxHDemucs.from_pretrained` (or transformers' `FlaxAutoModel.from_pretrained`) as the README shows it, in a fresh
process whose environment (HF_ENDPOINT, HF_HUB_OFFLINE) the caller set (argv: a JSON list of [loader, name,
kwargs]): one JSON line per call ("call": loader, name, then the keyword arguments as JSON if any) with the
exception's type, whether it is an OSError, its message and how long the call took."""

import json
import sys
import time

from transformers import FlaxAutoModel

from modeling_hdemucs_flax import FlaxHDemucs

LOADERS = {"FlaxHDemucs": FlaxHDemucs, "FlaxAutoModel": FlaxAutoModel}

for loader, name, kwargs in json.loads(sys.argv[1]):
    started = time.monotonic()
    try:
        LOADERS[loader].from_pretrained(name, **kwargs)
        outcome = {"type": None}
    except Exception as error:
        outcome = {"type": type(error).__name__, "oserror": isinstance(error, OSError), "message": str(error)}
    took = round(time.monotonic() - started, 2)
    call = " ".join([loader, name, *([json.dumps(kwargs)] if kwargs else [])])
    print(json.dumps({"call": call, "seconds": took, **outcome}), flush=True)

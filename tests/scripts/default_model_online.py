"""The default-model chain online, in a fresh process (argv: bundles JSON, probe.npy, output folder, caches):
1. nothing cached, the Hub has the converted copy; 2. not on the Hub, torchaudio's server hands out a tampered
file; 3. not on the Hub, torchaudio's file is intact: verified, converted without torch, cached."""

import json
import os
import sys

import numpy as np

from modeling_hdemucs_flax.zoo.pretrained import ModelLoadError, load_default_model
from modeling_hdemucs_flax.zoo.torchaudio_bundles import TorchaudioBundle

spec, probe_path, out, *caches = sys.argv[1:]
bundles = {name: TorchaudioBundle(**{**b, "sources": tuple(b["sources"])}) for name, b in json.loads(spec).items()}
probe = np.load(probe_path)


def separate(model):
    return np.asarray(model(probe[None]).sources)[0]


os.environ["HDEMUCS_FLAX_CACHE"] = caches[0]
np.save(f"{out}/hub.npy", separate(load_default_model(bundle=bundles["good"], progress=False)))

os.environ["HDEMUCS_FLAX_CACHE"] = caches[1]
try:
    load_default_model(bundle=bundles["tampered"], repo_id="acme/not-on-the-hub", progress=False)
except ModelLoadError as error:
    print(f"ModelLoadError: {error}", file=sys.stderr)

os.environ["HDEMUCS_FLAX_CACHE"] = caches[2]
model = load_default_model(bundle=bundles["good"], repo_id="acme/not-on-the-hub", progress=False)
np.save(f"{out}/converted.npy", separate(model))
print("torch imported:", "torch" in sys.modules)

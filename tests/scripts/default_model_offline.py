"""The default-model chain offline (HF_HUB_OFFLINE=1), after `default_model_online.py` filled the caches:
4. the real default (`load_model(None)`) from the Hugging Face cache; 5. the converted copy; 6. nothing cached."""

import json
import os
import sys

import numpy as np

from modeling_hdemucs_flax.zoo.pretrained import ModelLoadError, load_default_model, load_model
from modeling_hdemucs_flax.zoo.torchaudio_bundles import TorchaudioBundle

spec, probe_path, out, *caches = sys.argv[1:]
good = TorchaudioBundle(**{**json.loads(spec)["good"], "sources": ("drums", "bass", "other", "vocals")})
probe = np.load(probe_path)


def separate(model):
    return np.asarray(model(probe[None]).sources)[0]


os.environ["HDEMUCS_FLAX_CACHE"] = caches[3]
np.save(f"{out}/offline_hub.npy", separate(load_model(None)))

os.environ["HDEMUCS_FLAX_CACHE"] = caches[2]
np.save(f"{out}/offline_converted.npy", separate(load_default_model(bundle=good, repo_id="acme/not-on-the-hub")))

os.environ["HDEMUCS_FLAX_CACHE"] = caches[3]
try:
    load_default_model(bundle=good, repo_id="acme/not-on-the-hub")
except ModelLoadError as error:
    print(f"ModelLoadError: {error}", file=sys.stderr)

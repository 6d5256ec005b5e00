"""The default-model chain offline (HF_HUB_OFFLINE=1) with torchaudio's file copied in by hand (argv: bundle
JSON, the .pt file, probe.npy, output folder): first without the file (the error says where it goes, naming
the application's option), then with it in place (verified, converted, used, and kept: the user placed it)."""

import json
import shutil
import sys

import numpy as np

from modeling_hdemucs_flax.zoo.pretrained import ModelLoadError, load_default_model
from modeling_hdemucs_flax.zoo.torchaudio_bundles import TorchaudioBundle, torchaudio_checkpoint_path

spec, checkpoint, probe_path, out = sys.argv[1:]
bundle = TorchaudioBundle(**{**json.loads(spec), "sources": ("drums", "bass", "other", "vocals")})
try:
    load_default_model(bundle=bundle, repo_id="acme/not-on-the-hub", option="HDEMUCS_MODEL")
except ModelLoadError as error:
    print(f"ModelLoadError: {error}", file=sys.stderr)

target = torchaudio_checkpoint_path(bundle)
target.parent.mkdir(parents=True, exist_ok=True)
shutil.copy(checkpoint, target)
model = load_default_model(bundle=bundle, repo_id="acme/not-on-the-hub", progress=False)
np.save(f"{out}/local_file.npy", np.asarray(model(np.load(probe_path)[None]).sources)[0])
print("copied file kept:", target.read_bytes() == open(checkpoint, "rb").read())
print("torch imported:", "torch" in sys.modules)

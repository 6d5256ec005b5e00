"""Offline (HF_HUB_OFFLINE=1) in a fresh process (argv: repo id, probe.npy, output .npy): the cached repo
loads and separates; an uncached one is a one-line ModelLoadError."""

import sys

import numpy as np

from modeling_hdemucs_flax.zoo.pretrained import ModelLoadError, load_model

repo_id, probe_path, out_path = sys.argv[1:]
model = load_model(repo_id)
np.save(out_path, np.asarray(model(np.load(probe_path)[None]).sources)[0])
try:
    load_model("acme/never-downloaded")
except ModelLoadError as error:
    print(f"ModelLoadError: {error}", file=sys.stderr)

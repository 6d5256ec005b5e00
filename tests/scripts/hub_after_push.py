"""A fresh process after a push (argv: repo id, probe.npy, output .npy, the converter's argv): download and
separate, an unknown repo, the same conversion and push again (must change nothing), a push to a new branch."""

import sys
from pathlib import Path

import numpy as np

from conversion import convert_torchaudio_hdemucs as convert
from modeling_hdemucs_flax import FlaxHDemucs
from modeling_hdemucs_flax.zoo.pretrained import ModelLoadError, load_model

repo_id, probe_path, out_path, *convert_argv = sys.argv[1:]
model = FlaxHDemucs.from_pretrained(repo_id)
np.save(out_path, np.asarray(model(np.load(probe_path)[None]).sources)[0])
try:
    load_model("acme/no-such-model")
except ModelLoadError as error:
    print(f"ModelLoadError: {error}", file=sys.stderr)
print("rerun exit code", convert.main(convert_argv))
folder = convert_argv[convert_argv.index("--output-dir") + 1]
print(convert.push_folder(Path(folder), repo_id, private=False, revision="v1", commit_message=None))

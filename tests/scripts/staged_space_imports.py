"""Run with the staged Space folder as the working directory: imports `app` and `modeling_hdemucs_flax` from
there (not from a checkout or an installed package) and prints the package's file and `app.build_demo`'s name."""

import os
import sys

sys.path.insert(0, os.getcwd())  # a script's own folder is on sys.path, the Space's folder is not

import app  # noqa: E402

import modeling_hdemucs_flax  # noqa: E402

print(modeling_hdemucs_flax.__file__)
print(app.build_demo.__name__)

"""Runs the `hdemucs-flax` program in this process with argv[1:], then prints which heavy libraries it imported,
one `loaded NAME: True|False` line each (on stdout, after whatever the command printed)."""

import sys

from modeling_hdemucs_flax.apps.cli import entry_point

try:
    status = entry_point(sys.argv[1:])
except SystemExit as stop:  # argparse's --help and usage errors
    status = stop.code
for name in ("torch", "transformers", "jax", "flax", "soundfile"):
    print(f"loaded {name}: {name in sys.modules}")
print(f"exit status: {status}")

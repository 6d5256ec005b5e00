"""Runs `hdemucs-flax` (argv[1:]) in this process as the console script does, then prints which heavy libraries
the driver imported (`loaded NAME: True|False`) and `exit status: N`, and exits with that status."""

import sys

from modeling_hdemucs_flax.apps.cli import entry_point

try:
    status = entry_point(sys.argv[1:])
except SystemExit as stop:  # argparse's --help and usage errors
    status = stop.code
for name in ("jax", "ray", "torch", "transformers"):
    print(f"loaded {name}: {name in sys.modules}")
print(f"exit status: {status}")
sys.exit(status)

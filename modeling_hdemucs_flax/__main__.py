"""`python -m modeling_hdemucs_flax ...` is the `hdemucs-flax` command."""

import sys

from .apps.cli import entry_point

sys.exit(entry_point())

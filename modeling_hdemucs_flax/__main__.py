"""`python -m modeling_hdemucs_flax ...` is the `hdemucs-flax` command."""

import sys

from .cli import main

sys.exit(main())

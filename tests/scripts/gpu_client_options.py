"""Runs `hdemucs-flax` (argv[1:]) in this process as the console script does, then prints a JSON line: its exit
status and the memory options JAX's GPU client would start with in this process (jaxlib's
`generate_pjrt_gpu_plugin_options`, which JAX's CUDA plugin calls when it starts the GPU backend)."""

import json
import sys

from jaxlib import xla_client

from modeling_hdemucs_flax.apps.cli import entry_point

try:
    status = entry_point(sys.argv[1:])
except SystemExit as stop:  # argparse's usage errors
    status = stop.code
options = xla_client.generate_pjrt_gpu_plugin_options()
print(json.dumps({"status": status, **{key: options.get(key) for key in ("memory_fraction", "preallocate")}}))

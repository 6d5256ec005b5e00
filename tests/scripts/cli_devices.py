"""Run with two forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=2; argv: model folder, segment
seconds, song, output folder, compilation cache): `hdemucs-flax separate` (its `main`) with --devices and
--batch-size as a user types them, in this order: a batch size the devices cannot split (refused before JAX
starts), one device of JAX's choice (which must tell JAX to open only one GPU), both CPU devices, more devices than
there are. Prints one JSON line: per run, the exit status, the last line of stdout, the error lines of stderr."""

import contextlib
import io
import json
import sys

from modeling_hdemucs_flax.apps.cli import main

folder, segment, song, out, cache = sys.argv[1:6]
common = ["separate", song, "--model", folder, "--segment", segment, "--compilation-cache", cache, "--float32"]
runs = {
    "--devices 2 --batch-size 3": ["--device", "cpu", "--devices", "2", "--batch-size", "3", "-o", f"{out}/odd"],
    "--devices 1": ["--devices", "1", "-o", f"{out}/one"],
    "--device cpu --devices 2": ["--device", "cpu", "--devices", "2", "-o", f"{out}/two"],
    "--device cpu --devices 3": ["--device", "cpu", "--devices", "3", "-o", f"{out}/three"],
}
report: dict = {}
for name, args in runs.items():
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main([*common, *args])
        except SystemExit as stop:  # argparse's usage errors
            status = stop.code
    report[name] = {
        "status": status,
        "summary": (stdout.getvalue().strip().splitlines() or [""])[-1],
        "errors": [line for line in stderr.getvalue().splitlines() if "error:" in line],
        "jax imported": "jax" in sys.modules,
    }
    if name == "--devices 1":
        import jax

        report[name]["jax_cuda_visible_devices"] = jax.config._read("jax_cuda_visible_devices")
print(json.dumps(report))

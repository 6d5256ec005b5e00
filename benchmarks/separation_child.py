"""One measurement of `bench_separation.py`, in a fresh process so its peak RSS is its own. argv[1]: JSON options
(model or config, cache folder, batch size, song, output folder). Prints `RESULT {json}`."""

import json
import resource
import sys
import time

t0 = time.perf_counter()
from modeling_hdemucs_flax import (  # noqa: E402 (the import is what is timed)
    FlaxHDemucs,
    HDemucsConfig,
    Separator,
    configure_compilation_cache,
    load_model,
    separate_file,
)

FlaxHDemucs  # noqa: B018 (the lazy package face: touch the model module so its import is timed here)
t_import = time.perf_counter()
args = json.loads(sys.argv[1])
configure_compilation_cache(args["cache"])
if args["model"]:
    model = load_model(args["model"])
else:
    if args["config"] == "high":
        config = HDemucsConfig()
    else:
        config = HDemucsConfig.from_preset("low", channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3)
    model = FlaxHDemucs(config, seed=0)
t_load = time.perf_counter()
separator = Separator(model, batch_size=args["batch_size"])
separator.warmup()
t_compile = time.perf_counter()
result = {"import_s": t_import - t0, "load_s": t_load - t_import, "compile_s": t_compile - t_load}
if args["song"]:
    t = time.perf_counter()
    separate_file(separator, args["song"], args["out"])
    result["separate_s"] = time.perf_counter() - t
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))

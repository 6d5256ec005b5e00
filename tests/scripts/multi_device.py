"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=2 (argv: model folder, segment seconds): separates
one song and three songs sharing batches on one device and split over both, and prints a JSON line with the
device count, the compiles of the sharded program and each comparison's relative error in dB."""

import functools
import json
import sys

import jax
import numpy as np

from modeling_hdemucs_flax import Separator, configure_compilation_cache, load_model, relative_error_db
from modeling_hdemucs_flax.separation.separator import Signal
from tests.reference import music_like
from tests.separation_helpers import CompileCounter

folder, segment = sys.argv[1], float(sys.argv[2])
configure_compilation_cache()
model = load_model(folder)
one = Separator(model, segment=segment, batch_size=2, devices=jax.devices()[:1])
two = Separator(model, segment=segment, batch_size=2, devices=jax.devices())
songs = [music_like(n, 2, seed=n) for n in (40000, 5000, 17000)]


def stems_of(separator, audio):
    return [separator.separate(audio, 44100)[s] for s in separator.sources]


def many(separator):
    out = {i: [] for i in range(len(songs))}
    signals = [Signal(functools.partial(iter, [a]), 2, 44100) for a in songs]
    for event in separator.stream_many(signals):
        if event.kind == "block":
            out[event.index].append(event.value)
    return out


report = {"devices": len(jax.devices()), "relative_db": {}}
with CompileCounter() as counter:
    sharded_song = stems_of(two, songs[0])
    sharded_many = many(two)
report["sharded_compiles"] = counter.compiles
report["relative_db"]["one song"] = relative_error_db(sharded_song, stems_of(one, songs[0]))
reference = many(one)
for i in reference:
    got, want = np.concatenate(sharded_many[i], axis=-1), np.concatenate(reference[i], axis=-1)
    report["relative_db"][f"shared batches, song {i}"] = relative_error_db(got, want)
print(json.dumps(report))

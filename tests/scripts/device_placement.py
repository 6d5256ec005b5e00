"""Run with two forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=2; argv: model folder, segment
seconds). With JAX's default device set to device 1 (as `jax.config.update("jax_default_device", ...)` or a GPU
chosen by the command line sets it), loads the model every way a user can and separates a short song with each,
recording the devices of the parameters every network call ran with and of its output; then separates with
`Separator(devices=[one device])` and with batches split over both devices, counting the weight preparations (in
numpy, or jitted). Prints one JSON line; a separation that fails is reported as {"error": "Type: message"}."""

import json
import sys

import jax
import numpy as np

from modeling_hdemucs_flax import FlaxHDemucs, Separator, configure_compilation_cache, load_model
from modeling_hdemucs_flax.apps.arguments import options_from
from modeling_hdemucs_flax.apps.cli import build_parser, load_separator
from modeling_hdemucs_flax.models.hdemucs import modeling_flax_hdemucs
from tests.reference import music_like

folder, segment = sys.argv[1], float(sys.argv[2])
jax.config.update("jax_default_device", jax.devices()[1])
configure_compilation_cache()
song = music_like(40000, 2, seed=5)


def names(devices) -> list[str]:
    return sorted(f"{d.platform}:{d.id}" for d in devices)


def param_devices(params) -> list[str]:
    return names(set().union(*(leaf.devices() for leaf in jax.tree.leaves(params))))


calls: list[tuple[list[str], list[str]]] = []  # (parameters' devices, output's devices) of every network call
network_call = FlaxHDemucs.__call__


def recording_call(self, waveform, params=None, return_dict=True, **kwargs):
    result = network_call(self, waveform, params, return_dict, **kwargs)
    calls.append((param_devices(self.params if params is None else params), names(result.sources.devices())))
    return result


FlaxHDemucs.__call__ = recording_call


def separated_by(make) -> dict:
    del calls[:]
    try:
        separator = make()
        stems = separator.separate(song, 44100)
    except Exception as error:  # reported, so that each test names its own failure
        return {"error": f"{type(error).__name__}: {str(error)[:300]}", "stems": None}
    return {
        "parameters": sorted({d for params, _ in calls for d in params}),
        "outputs": sorted({d for _, output in calls for d in output}),
        "calls": len(calls),
        "Separator.device": separator.device,
        "stems": np.stack([stems[s] for s in separator.sources]),
    }


def command_line() -> Separator:
    args = build_parser().parse_args(["separate", "song.wav", "--model", folder, "--segment", str(segment), "-q"])
    separator = load_separator(args, *options_from(args))
    assert isinstance(separator, Separator), separator
    return separator


loaded = FlaxHDemucs.from_pretrained(folder)
ways = {
    "FlaxHDemucs.from_pretrained": lambda: Separator(FlaxHDemucs.from_pretrained(folder), segment=segment),
    "load_model": lambda: Separator(load_model(folder), segment=segment),
    "Separator.from_pretrained": lambda: Separator.from_pretrained(folder, segment=segment),
    "the command line (load_separator)": command_line,
    "FlaxHDemucs.from_torchaudio": lambda: Separator(
        FlaxHDemucs.from_torchaudio(loaded.to_torchaudio(), loaded.config), segment=segment
    ),
    "FlaxHDemucs(config) (random weights)": lambda: Separator(FlaxHDemucs(loaded.config), segment=segment),
}
report: dict = {"default device": names([jax.devices()[1]]), "ways": {}, "one device": {}}
reference = None
for way, make in ways.items():
    result = separated_by(make)
    stems = result.pop("stems")
    if way == "FlaxHDemucs.from_pretrained":
        reference = stems
    report["ways"][way] = result

# One Separator per device, each on its own device, both equal to the default device's stems.
for index in (1, 0):
    device = jax.devices()[index]
    result = separated_by(lambda: Separator(loaded, segment=segment, devices=[device]))  # noqa: B023 (called now)
    stems = result.pop("stems")
    result["equal to the default device's stems"] = stems is not None and bool(np.array_equal(stems, reference))
    report["one device"][f"cpu:{index}"] = result

# Weight preparation, counted on a fresh model: in numpy (`prepare_params` with xp=np) or by the jitted function.
fresh = FlaxHDemucs.from_pretrained(folder)
preparations = {"numpy": 0, "jitted": 0}
prepare_in_numpy = modeling_flax_hdemucs.prepare_params


def counting_prepare(params, plan, dtype=None, xp=None, **kwargs):
    if xp is np:
        preparations["numpy"] += 1
    return prepare_in_numpy(params, plan, dtype, xp, **kwargs)


jitted_prepare = fresh._prepare


def counting_jitted(params):
    preparations["jitted"] += 1
    return jitted_prepare(params)


modeling_flax_hdemucs.prepare_params = counting_prepare
fresh._prepare = counting_jitted
split = separated_by(lambda: Separator(fresh, segment=segment, batch_size=2, devices=jax.devices()))
single = separated_by(lambda: Separator(fresh, segment=segment, batch_size=2, devices=[jax.devices()[1]]))
report["preparations"] = {
    "batches split over both devices": split.get("calls", split.get("error")),
    "batches on device 1": single.get("calls", single.get("error")),
    "Separator.device (split)": split.get("Separator.device"),
    "outputs (split)": split.get("outputs"),
    **preparations,
}
print(json.dumps(report))

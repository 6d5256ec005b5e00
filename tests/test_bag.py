"""Bags of models (`FlaxDemucsBag`): demucs's combination through the Separator, one compiled program per
architecture, members without weight for the stems asked for left out, bag folders, and members that disagree.

The members are two tiny HTDemucs of one architecture with different random weights (demucs's own models re-drawn
and converted, as in test_htdemucs_parity), combined with weights that exercise every case of demucs's formula:
a source from both members with unequal weights (drums, bass), from one member only (other, vocals).
"""

from __future__ import annotations

import json
from fractions import Fraction

import jax
import numpy as np
import pytest
import soundfile as sf
import torch
from demucs.apply import BagOfModels, apply_model

from modeling_hdemucs_flax import (
    ConfigError,
    FlaxHDemucs,
    ModelLoadError,
    OptionError,
    Separator,
    load_model,
    separate_file,
)
from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.io.audio_io import read_audio
from modeling_hdemucs_flax.models.bag import FlaxDemucsBag
from modeling_hdemucs_flax.models.htdemucs.configuration_htdemucs import HTDemucsConfig
from modeling_hdemucs_flax.models.htdemucs.convert_demucs import htdemucs_params_from_state
from modeling_hdemucs_flax.models.htdemucs.modeling_flax_htdemucs import FlaxHTDemucs
from modeling_hdemucs_flax.zoo.model_facts import ModelFacts, read_model_facts
from modeling_hdemucs_flax.zoo.model_identity import identify_model, loaded_model_source

from .conftest import SEGMENT_SECONDS
from .reference import error_report, music_like, torch_model
from .separation_helpers import CompileCounter
from .test_htdemucs_parity import demucs_model, numpy_state

SR = 44100
SEGMENT = 85995  # samples: the tiny members' 1.95 s training segment
STRIDE = 64496  # int(0.75 * SEGMENT), overlap 0.25
# (drums, bass, other, vocals): drums and bass from both members with unequal weights, other from the second
# member alone, vocals from the first alone
WEIGHTS = [[1.0, 0.5, 0.0, 2.0], [0.5, 1.0, 1.0, 0.0]]
NAMES = ("first", "second")
THRESHOLD_DB = -100


def tiny_config(**overrides) -> HTDemucsConfig:
    """htdemucs's structure (channel down/upsamplers around the transformer) with 8 base channels, 64 bottom
    channels, one transformer layer and a 1.95 s segment."""
    fields = {"channels": 8, "bottom_channels": 64, "t_layers": 1, "segment": Fraction(39, 20)}
    return HTDemucsConfig.from_preset("htdemucs", **fields | overrides)


@pytest.fixture(scope="module")
def pair():
    """(config, two re-drawn demucs HTDemucs, their weights converted) of one architecture, different weights."""
    config = tiny_config()
    references = [demucs_model(config, seed=seed) for seed in (30, 40)]
    return config, references, [htdemucs_params_from_state(numpy_state(r), config) for r in references]


def members(pair) -> list[FlaxHTDemucs]:
    """Fresh Flax members (each with its own jitted forward pass, none compiled yet)."""
    config, _, params = pair
    return [FlaxHTDemucs(config, params=jax.device_put(p)) for p in params]


@pytest.fixture(scope="module")
def bag(pair) -> FlaxDemucsBag:
    return FlaxDemucsBag(members(pair), WEIGHTS, names=NAMES)


def record_member_calls(monkeypatch, bag: FlaxDemucsBag) -> list[str]:
    """The names of the members whose forward pass runs, in order, told by the parameters each call is given
    (every member runs through its architecture's first member, with its own parameters)."""
    leaves = {name: np.asarray(jax.tree.leaves(m.params)[0]).ravel()[:8] for name, m in bag.members.items()}
    calls: list[str] = []
    forward = FlaxHTDemucs.__call__

    def recording(self, waveform, params=None, *args, **kwargs):
        given = np.asarray(jax.tree.leaves(self.params if params is None else params)[0]).ravel()[:8]
        calls.extend(name for name, leaf in leaves.items() if np.array_equal(leaf, given))
        return forward(self, waveform, params, *args, **kwargs)

    monkeypatch.setattr(FlaxHTDemucs, "__call__", recording)
    return calls


def test_bag_through_the_separator_matches_demucs_apply_model_and_compiles_once(pair):
    """Our Separator on the bag against demucs's `apply_model(BagOfModels(...))` (shifts 0, split, overlap 0.25,
    transition power 1), both around the same normalisation (the mono mix's mean and std + 1e-8, as the Separator
    and demucs's api.py do). The schedules coincide on every chunk but the song's last, shorter one, which demucs
    pads on both sides with neighbouring samples and the Separator with zeros at its end: compared before it. The
    two members share one architecture: one compiled forward program for both."""
    config, references, _ = pair
    length = 176400  # 4 s: chunks at 0, STRIDE and 2 * STRIDE in both schedules, the last one shorter
    mix = music_like(length, 2, seed=5)
    bag = FlaxDemucsBag(members(pair), WEIGHTS, names=NAMES)
    with CompileCounter("jit(htdemucs_forward)") as counter:
        stems = Separator(bag, overlap=0.25).separate(mix, SR)
    got = np.stack([stems[name] for name in config.sources])

    ref = mix.astype(np.float64).mean(axis=0)
    mean, scale = np.float32(ref.mean()), np.float32(ref.std(ddof=1) + 1e-8)
    x = (mix - mean) / scale
    with torch.no_grad():
        out = apply_model(
            BagOfModels(references, WEIGHTS),
            torch.from_numpy(x)[None],
            shifts=0,
            split=True,
            overlap=0.25,
            transition_power=1.0,
        )[0].numpy()
    want = out * scale + mean
    same = 2 * STRIDE  # where demucs's last chunk starts
    _, db = error_report("bag vs demucs apply_model(BagOfModels)", got[..., :same], want[..., :same], THRESHOLD_DB)
    _, tail_db = error_report("last chunk (padded differently, not compared)", got[..., same:], want[..., same:], 0)
    print(f"[compile] htdemucs_forward executables for a bag of two members of one architecture: {counter.compiles}")
    assert db < THRESHOLD_DB  # measured about -130 dB
    assert counter.compiles == 1


def test_members_without_weight_for_the_stems_asked_for_do_not_run(bag, monkeypatch):
    """`restricted_to(sources)` runs only the members with a weight for them; its sources are the full bag's
    (bit for bit), the others zeros. Counted by the members' forward calls."""
    calls = record_member_calls(monkeypatch, bag)
    x = music_like(40000, 2, seed=6)[None]
    full = np.asarray(bag(x).sources)
    assert calls == ["first", "second"]
    for sources, runs in (
        (["vocals"], ["first"]),
        (["other"], ["second"]),
        (["drums"], NAMES),
        (["bass", "vocals"], NAMES),
    ):
        calls.clear()
        restricted = bag.restricted_to(sources)
        out = np.asarray(restricted(x).sources)
        assert calls == list(runs) and restricted.active_members == tuple(runs), sources
        for k, name in enumerate(bag.sources):
            if name in sources:
                np.testing.assert_array_equal(out[:, k], full[:, k])
            else:
                assert not out[:, k].any(), (sources, name)
    assert (
        bag.restricted_to(bag.sources) is bag
        and bag.restricted_to(["vocals"]).restricted_to(bag.sources).active_members == NAMES
    )
    with pytest.raises(ConfigError, match="no source 'piano'"):
        bag.restricted_to(["piano"])
    with pytest.raises(ConfigError, match="restricted to no source"):
        bag.restricted_to([])


def test_two_stems_minus_through_separate_file_runs_the_vocals_member_alone(bag, tmp_path, monkeypatch):
    """`--two-stems vocals --other-method minus` reads the vocals alone: only the member with a vocals weight runs
    (once per chunk), and the stems are the full bag's vocals and the mix minus them. With "add" every member
    runs (the accompaniment sums the other sources)."""
    mix = music_like(100000, 2, seed=7)  # 2 chunks
    song = tmp_path / "song.wav"
    sf.write(song, mix.T, SR, subtype="FLOAT")
    separator = Separator(bag)
    expected = separator.separate(mix, SR)["vocals"]
    calls = record_member_calls(monkeypatch, bag)
    stems = separate_file(separator, song, tmp_path / "out", two_stems="vocals", other_method="minus", clip_mode="none")
    assert calls == ["first", "first"]
    assert sorted(stems) == ["no_vocals", "vocals"]
    assert sorted(p.name for p in (tmp_path / "out" / "song").iterdir()) == ["no_vocals.wav", "vocals.wav"]
    vocals, _ = read_audio(stems["vocals"])
    no_vocals, _ = read_audio(stems["no_vocals"])
    np.testing.assert_array_equal(vocals, expected)
    np.testing.assert_allclose(no_vocals, mix - expected, atol=1e-6)
    calls.clear()
    separate_file(separator, song, tmp_path / "add", two_stems="vocals", other_method="add", clip_mode="none")
    assert calls == ["first", "second", "first", "second"]


def test_cli_two_stems_minus_with_a_bag_folder_runs_one_member(bag, tmp_path, jax_cache, monkeypatch, capsys):
    """The command line on a saved bag: loaded from its folder, and with `--two-stems vocals --other-method
    minus` only the vocals member runs, warm-up included."""
    folder = bag.save_pretrained(tmp_path / "bag")
    calls = record_member_calls(monkeypatch, bag)  # the loaded members hold the same weights
    song = tmp_path / "song.wav"
    sf.write(song, music_like(60000, 2, seed=8).T, SR, subtype="FLOAT")
    args = ["separate", str(song), "--model", str(folder), "-o", str(tmp_path / "out"), "--two-stems", "vocals"]
    assert main([*args, "--other-method", "minus", "--compilation-cache", str(jax_cache)]) == 0
    assert calls == ["first", "first"]  # the warm-up, then the song's one chunk
    assert sorted(p.name for p in (tmp_path / "out" / "song").iterdir()) == ["no_vocals.wav", "vocals.wav"]
    capsys.readouterr()


def test_bag_folder_round_trip(bag, tmp_path):
    """`save_pretrained` writes bag.json and a folder per member, whole (nothing left beside it, an older folder
    replaced); `load_model` reads it back as a bag with the same members, weights and parameters; the command
    line's facts and the dataset's identity read it too."""
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "stale.txt").write_text("an older folder's file")
    folder = bag.save_pretrained(tmp_path / "bag")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]
    assert sorted(p.name for p in folder.iterdir()) == ["bag.json", "first", "second"]
    assert sorted(p.name for p in (folder / "first").iterdir()) == ["config.json", "model.safetensors"]
    manifest = json.loads((folder / "bag.json").read_text())
    assert manifest == {
        "format": "hdemucs-flax-bag",
        "format_version": 1,
        "model_type": "demucs_bag",
        "sources": ["drums", "bass", "other", "vocals"],
        "sampling_rate": 44100,
        "audio_channels": 2,
        "members": ["first", "second"],
        "weights": WEIGHTS,
        "segment": None,
    }
    loaded = load_model(folder)
    assert isinstance(loaded, FlaxDemucsBag) and list(loaded.members) == list(NAMES)
    np.testing.assert_array_equal(loaded.weights, WEIGHTS)
    assert loaded.default_segment == bag.default_segment == SEGMENT / SR
    assert loaded.config.name_or_path == str(folder)
    for name in NAMES:
        for a, b in zip(
            jax.tree.leaves(loaded.members[name].params), jax.tree.leaves(bag.members[name].params), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert loaded_model_source(loaded).identity == loaded_model_source(bag).identity
    # the members' training segment, 1.95 s, is the bag's own (what separate-dataset's markers then certify)
    assert read_model_facts(folder) == ModelFacts(("drums", "bass", "other", "vocals"), 44100, 2, 1.95)
    files = identify_model(folder).identity["files"]
    assert sorted(files) == [
        "bag.json",
        "first/config.json",
        "first/model.safetensors",
        "second/config.json",
        "second/model.safetensors",
    ]


def test_members_that_disagree_and_broken_bags_are_refused_in_one_line(pair, bag, tmp_path):
    config, _, _ = pair
    first = bag.members["first"]
    others = {
        "sources": FlaxHTDemucs(tiny_config(sources=["drums", "bass", "other", "voice"]), seed=1),
        "segment": FlaxHTDemucs(tiny_config(segment=Fraction(39, 40)), seed=1),
    }
    with pytest.raises(ConfigError) as sources:
        FlaxDemucsBag([first, others["sources"]])
    with pytest.raises(ConfigError) as segment:
        FlaxDemucsBag([first, others["segment"]], names=["long", "short"])
    with pytest.raises(ConfigError) as weights:
        FlaxDemucsBag([first, first], [[1, 0, 0, 0], [0, 1, 1, 0]])
    with pytest.raises(ConfigError) as rows:
        FlaxDemucsBag([first, first], [[1, 1, 1, 1]])
    with pytest.raises(ConfigError) as nested:
        FlaxDemucsBag([first, bag])  # type: ignore[list-item]
    messages = [str(e.value) for e in (sources, segment, weights, rows, nested)]
    for message in messages:
        print(f"[refused] {message}")
        assert "\n" not in message
    assert "member member_1 has sources ['drums', 'bass', 'other', 'voice'], member member_0" in messages[0]
    assert "member short accepts chunks of at most 0.974989 s, member long of at most 1.95 s" in messages[1]
    assert "not supported yet" in messages[1]
    assert "weights of source 'vocals' sum to 0" in messages[2]
    assert "weights must be 2 rows (one per member) of 4" in messages[3]
    assert "member member_1 is a FlaxDemucsBag" in messages[4]
    with pytest.raises(OptionError, match="segment"):
        Separator(bag, segment=3.0)  # over the members' training segment

    folder = bag.save_pretrained(tmp_path / "bag")
    manifest = json.loads((folder / "bag.json").read_text())
    broken = {
        "newer": {**manifest, "format_version": 2},
        "missing": {**manifest, "members": ["first", "third"]},
        "zero": {**manifest, "weights": [[1, 0, 0, 0], [0, 1, 1, 0]]},
    }
    for name, fields in broken.items():
        copy = tmp_path / name
        bag.save_pretrained(copy)
        (copy / "bag.json").write_text(json.dumps(fields))
        with pytest.raises(ModelLoadError) as error:
            load_model(copy)
        print(f"[refused] {error.value}")
        assert "\n" not in str(error.value) and str(copy) in str(error.value)
        assert {"newer": "format_version 2", "missing": "third/config.json is missing", "zero": "sum to 0"}[
            name
        ] in str(error.value)


def test_a_bag_of_hdemucs_placed_on_a_device_equals_its_members_combined(tiny_pair):
    """Members that need a prepared copy of their parameters (`FlaxHDemucs`) on a chosen device (`placed_params`):
    the bag's separation equals each member's own separation combined by the weights (overlap-add is linear),
    restricted or not."""
    config, _, first = tiny_pair
    second = FlaxHDemucs.from_torchaudio(torch_model(config, seed=3).state_dict(), config)
    bag = FlaxDemucsBag([first, second], WEIGHTS)
    mix = music_like(20000, 2, seed=9)
    device = jax.devices()[:1]
    got = Separator(bag, segment=SEGMENT_SECONDS, devices=device).separate(mix, SR)
    alone = [Separator(m, segment=SEGMENT_SECONDS, devices=device).separate(mix, SR) for m in (first, second)]
    weights = np.asarray(WEIGHTS)
    for k, name in enumerate(config.sources):
        mean = mix.astype(np.float64).mean()  # every stem holds the mix's mean, combined with weights summing to 1
        want = sum(w * (a[name] - mean) for w, a in zip(weights[:, k], alone, strict=True)) / weights[:, k].sum()
        _, db = error_report(f"bag of two HDemucs, {name}", got[name] - mean, want, -120)
        assert db < -120
    vocals = Separator(bag, segment=SEGMENT_SECONDS, devices=device).restricted_to(["vocals"])
    assert vocals.model.active_members == ("member_0",)
    np.testing.assert_array_equal(vocals.separate(mix, SR)["vocals"], got["vocals"])

"""A six-source HTDemucs (the htdemucs_6s architecture, tiny) through everything downstream of the model: the
command line (every stem, `--two-stems guitar`, the filename template, its own segment by default and a longer one
refused naming the model's limit), the Space and the HTTP API."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax import OptionError, Separator
from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.metrics import relative_error_db
from modeling_hdemucs_flax.models.htdemucs.configuration_htdemucs import HTDemucsConfig
from modeling_hdemucs_flax.models.htdemucs.modeling_flax_htdemucs import FlaxHTDemucs
from modeling_hdemucs_flax.zoo.model_facts import read_model_facts

from .audio_files import write_song
from .flows import run_script
from .serve_helpers import read_zip, upload, wait_ready
from .space_helpers import load_app_module
from .test_serve import serving

SIX = ["drums", "bass", "other", "vocals", "guitar", "piano"]
SEGMENT = Fraction(1, 1)  # the released 7.8 s shortened, so that the tiny model compiles quickly


@pytest.fixture(scope="module")
def six_dir(tmp_path_factory):
    """A tiny random htdemucs_6s saved with save_pretrained."""
    config = HTDemucsConfig.from_preset("htdemucs_6s", channels=8, t_layers=1, segment=SEGMENT)
    folder = tmp_path_factory.mktemp("six") / "htdemucs-6s-tiny"
    FlaxHTDemucs(config, seed=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def six_separator(six_dir):
    separator = Separator.from_pretrained(six_dir)
    separator.warmup()
    return separator


def test_the_command_line_writes_six_stems_and_two_with_two_stems_guitar(six_dir, jax_cache, tmp_path, capsys):
    song = write_song(tmp_path / "in" / "song.wav", 1.3, 44100, 2, subtype="PCM_16")
    common = ["--model", str(six_dir), "--compilation-cache", str(jax_cache), "-q"]
    assert main(["separate", str(song), "-o", str(tmp_path / "all"), *common]) == 0
    assert sorted(p.name for p in (tmp_path / "all" / "song").iterdir()) == sorted(f"{s}.wav" for s in SIX)
    template = ["--filename", "{stem}/{track}.{ext}", "--flac"]
    assert main(["separate", str(song), "-o", str(tmp_path / "two"), "--two-stems", "guitar", *template, *common]) == 0
    written = sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*.flac"))
    assert written == ["guitar/song.flac", "no_guitar/song.flac"]
    guitar, rate = sf.read(tmp_path / "two" / "guitar" / "song.flac", dtype="float32")
    assert rate == 44100 and guitar.shape == (int(1.3 * 44100), 2)
    capsys.readouterr()


def test_a_segment_longer_than_the_models_is_refused_naming_its_limit(six_dir, six_separator, tmp_path, capsys):
    """The model's own segment by default; `--segment` over it is a usage error (exit 2) whose error line names
    the limit, and nothing is written."""
    assert six_separator.options.segment == 1.0 and six_separator.segment_samples == 44100
    assert read_model_facts(six_dir).segment == 1.0  # what the command line and the dataset engine plan with
    with pytest.raises(OptionError, match=r"segment=2.0: is longer than .* accepts: at most 1 s"):
        Separator(six_separator.model, segment=2)
    song = write_song(tmp_path / "song.wav", 0.5, 44100, 2, subtype="PCM_16")
    status = main(["separate", str(song), "--model", str(six_dir), "--segment", "2", "-o", str(tmp_path / "out")])
    error = capsys.readouterr().err.splitlines()[-1]
    assert status == 2 and error.startswith("hdemucs-flax separate: error: --segment 2.0: is longer than "), error
    assert error.endswith(f"{six_dir} accepts: at most 1 s"), error
    assert not (tmp_path / "out").exists()


def test_the_space_shows_six_stems(six_separator, tmp_path):
    app = load_app_module()
    work = app.StemSeparator(six_separator, max_duration=60, workdir=tmp_path / "work")
    song = write_song(tmp_path / "in" / "tune.wav", 1.0, 44100, 2, subtype="PCM_16")
    result = work(str(song), "all", shifts=0, overlap=0.25, ext="wav", progress=None)
    assert list(result.stems) == SIX
    assert result.summary.startswith("**tune.wav** (1 s, 44.1 kHz stereo) → 6 stems")
    karaoke = work(str(song), "karaoke", shifts=0, overlap=0.25, ext="wav", progress=None)
    assert list(karaoke.stems) == ["vocals", "no_vocals"]


def test_the_http_api_returns_six_stems_and_lists_them(six_separator, tmp_path):
    song = write_song(tmp_path / "in" / "song.wav", 1.0, 44100, 2, subtype="PCM_16")
    with serving(six_separator, tmp_path) as server:
        wait_ready(server.client)
        models = server.client.get("/v1/models").json()
        assert models["models"][0]["sources"] == SIX
        response = server.client.post("/v1/separate", **upload(song))
        assert response.status_code == 200, response.text
        got = read_zip(response.content, tmp_path / "got")
        assert sorted(got) == sorted(f"song/{s}.wav" for s in SIX)
        response = server.client.post("/v1/separate", **upload(song, two_stems="piano"))
        assert sorted(read_zip(response.content, tmp_path / "two")) == ["song/no_piano.wav", "song/piano.wav"]
    stems = [got[f"song/{s}.wav"][0] for s in SIX]
    assert all(stem.shape == (2, 44100) and np.isfinite(stem).all() for stem in stems)


def test_two_devices_split_the_batches_and_give_one_devices_stems(six_dir, jax_cache, two_devices, tmp_path):
    """`separate --devices 2` with the HTDemucs (two forced CPU devices, in a subprocess): the same six stems as
    one device, the devices named in the summary."""
    song = write_song(tmp_path / "song.wav", 2.5, 44100, 2, subtype="PCM_16")
    args = [str(six_dir), "1", str(song), str(tmp_path / "out"), str(jax_cache)]
    result = run_script("cli_devices", two_devices, *args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    one, two = report["--devices 1"], report["--device cpu --devices 2"]
    assert one["status"] == 0 and two["status"] == 0, report
    assert two["summary"].endswith("x real time on 2 x cpu (cpu:0, cpu:1)"), two
    for stem in SIX:
        alone, _ = sf.read(tmp_path / "out" / "one" / "song" / f"{stem}.wav", dtype="float32")
        split, _ = sf.read(tmp_path / "out" / "two" / "song" / f"{stem}.wav", dtype="float32")
        error = relative_error_db(split, alone)
        print(f"{stem}: two devices vs one {error:.1f} dB")
        assert error < -120, stem

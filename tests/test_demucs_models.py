"""demucs's models by name (`--model htdemucs`): the fetch chain of `zoo/demucs_models.py` against the local file
server standing in for demucs's download server (the Hub unreachable), with tiny checkpoints written as demucs
writes its releases: downloaded, checked against the sha256 prefix in the name, converted without torch and
cached; a prefix mismatch refused with nothing left behind; the offline recipe (a file copied into the cache)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from modeling_hdemucs_flax import ModelLoadError
from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.models.htdemucs.modeling_flax_htdemucs import FlaxHTDemucs
from modeling_hdemucs_flax.weights.demucs_checkpoint import read_demucs_package
from modeling_hdemucs_flax.zoo import demucs_models
from modeling_hdemucs_flax.zoo.demucs_registry import (
    DEMUCS_MODELS,
    HYBRID_TRANSFORMER_ROOT,
    ROOT_URL,
    DemucsCheckpointFile,
    split_checkpoint_name,
)
from modeling_hdemucs_flax.zoo.pretrained import load_model, load_named_model, model_licence

from .audio_files import write_song
from .demucs_files import tiny_model, write_package
from .hub_server import FileServer, closed_port_url


@pytest.fixture
def chain_env(tmp_path, monkeypatch):
    """A fresh cache folder, the Hub unreachable (a closed port), demucs's server at a local file server."""
    monkeypatch.setenv("HDEMUCS_FLAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("modeling_hdemucs_flax.weights.hub.endpoint", lambda: closed_port_url())
    with FileServer() as server:
        monkeypatch.setenv(demucs_models.ENV_DEMUCS_URL, server.url)
        yield server


def tiny_release(tmp_path, make_config):
    """A tiny HTDemucs written as demucs writes a release (`<signature>-<sha8>.th`), and the registry entry
    `htdemucs` pointed at it."""
    path = write_package(tiny_model("htdemucs"), tmp_path / "release", make_config)
    signature, prefix = split_checkpoint_name(path.name)
    member = DemucsCheckpointFile(signature=signature, sha256_prefix=prefix, root=HYBRID_TRANSFORMER_ROOT)
    return path, dataclasses.replace(DEMUCS_MODELS["htdemucs"], members=(member,))


def served_path(member: DemucsCheckpointFile) -> str:
    return member.url[len(ROOT_URL) :]


def assert_params_equal(model, path) -> None:
    """The model's parameters are the file's float16 state, converted: compared leaf by leaf with a fresh
    conversion of the same file (the converter's own correctness is the parity tests' job)."""
    from modeling_hdemucs_flax.models.htdemucs.convert_demucs import htdemucs_params_from_state

    want = flatten_dict(htdemucs_params_from_state(read_demucs_package(path).state, model.config))
    got = flatten_dict(model.params)
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=str(key))


def test_a_name_is_downloaded_checked_converted_and_cached(chain_env, tmp_path, make_config):
    path, info = tiny_release(tmp_path, make_config)
    chain_env.files[served_path(info.members[0])] = path.read_bytes()
    model = load_named_model("htdemucs", info=info, progress=False)
    assert isinstance(model, FlaxHTDemucs) and model.sources == list(info.sources)
    assert_params_equal(model, path)
    converted = demucs_models.converted_dir(info)
    assert (converted / "config.json").is_file()
    assert list(demucs_models.official_dir().iterdir()) == []  # the download was converted, then removed
    assert [entry[1] for entry in chain_env.requests] == [served_path(info.members[0])]

    chain_env.files.clear()  # the second load reads the converted copy: no request at all
    again = load_named_model("htdemucs", info=info, progress=False)
    assert isinstance(again, FlaxHTDemucs) and len(chain_env.requests) == 1
    assert_params_equal(again, path)
    assert demucs_models.cached_copies(info) == ["converted"]
    card = (converted / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and info.members[0].url in card
    assert model_licence("htdemucs") == "MIT"  # the registry's, for a name


def test_a_file_whose_sha256_does_not_match_its_name_is_refused(chain_env, tmp_path, make_config):
    path, info = tiny_release(tmp_path, make_config)
    wrong = dataclasses.replace(info.members[0], sha256_prefix="0123abcd")
    info = dataclasses.replace(info, members=(wrong,))
    chain_env.files[served_path(wrong)] = path.read_bytes()
    with pytest.raises(ModelLoadError, match=r"does not start with 0123abcd, the prefix its name promises") as raised:
        load_named_model("htdemucs", info=info, progress=False)
    assert "\n" not in str(raised.value)
    assert list(demucs_models.official_dir().iterdir()) == []  # nothing half-checked is kept
    assert not demucs_models.converted_dir(info).exists()


def test_offline_a_copied_file_is_used_and_a_wrong_one_reported(chain_env, tmp_path, make_config, monkeypatch):
    """HF_HUB_OFFLINE=1: no request; the recipe names the folder; a file copied there is checked and converted;
    a wrong file there is reported and left in place."""
    monkeypatch.setattr("modeling_hdemucs_flax.weights.hub.offline", lambda: True)
    path, info = tiny_release(tmp_path, make_config)
    with pytest.raises(ModelLoadError, match="offline mode") as raised:
        load_named_model("htdemucs", info=info, progress=False)
    assert f"into {demucs_models.official_dir()}" in str(raised.value)
    placed = demucs_models.official_dir() / info.members[0].file_name
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="it was left in place"):
        load_named_model("htdemucs", info=info, progress=False)
    assert placed.read_bytes() == b"not a checkpoint"
    placed.write_bytes(path.read_bytes())
    model = load_named_model("htdemucs", info=info, progress=False)
    assert_params_equal(model, path)
    assert placed.is_file() and chain_env.requests == []  # the user's copy is kept; nothing was fetched


def test_the_command_line_says_in_one_line_when_a_name_cannot_be_had(chain_env, tmp_path, capsys, monkeypatch):
    """`separate -n htdemucs` with the Hub and demucs's server unreachable: one error line naming both and the
    offline recipe (the official URL of each member), exit 1, nothing written."""
    monkeypatch.setenv(demucs_models.ENV_DEMUCS_URL, closed_port_url())
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    status = main(["separate", str(song), "-n", "htdemucs", "-o", str(tmp_path / "out"), "-q"])
    errors = capsys.readouterr().err.splitlines()
    assert status == 1 and len(errors) == 1, errors
    assert errors[0].startswith("error: cannot get htdemucs: ") and "955717e8-8726e21a.th" in errors[0], errors
    assert not (tmp_path / "out").exists()


def test_a_folder_named_like_a_model_is_a_folder(chain_env, tmp_path, monkeypatch):
    """A folder called `htdemucs` in the working directory is loaded as a folder, not fetched."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "htdemucs").mkdir()
    with pytest.raises(ModelLoadError) as raised:
        load_model("htdemucs")
    assert "config.json" in str(raised.value) and chain_env.requests == []


def test_the_registry_counts_the_parameters_demucs_builds():
    """`models` shows each model's parameter count: the registry's figures are those of demucs's own models built
    with each release's arguments (our presets, checked against the files elsewhere), and of torchaudio's high
    HDemucs."""
    import torch
    import torchaudio
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    from modeling_hdemucs_flax import HDemucsConfig
    from modeling_hdemucs_flax.apps.models_command import TORCHAUDIO_HIGH_PARAMETERS
    from modeling_hdemucs_flax.models.hdemucs.convert_demucs import HDEMUCS_MMI_KWARGS
    from modeling_hdemucs_flax.models.htdemucs.configuration_htdemucs import HTDemucsConfig

    def count(model: torch.nn.Module) -> int:
        return sum(tensor.numel() for tensor in model.state_dict().values())

    for name in ("htdemucs", "htdemucs_ft", "htdemucs_6s"):
        built = HTDemucs(**HTDemucsConfig.from_preset(name).demucs_kwargs())
        assert count(built) == DEMUCS_MODELS[name].parameters, name
    assert count(HDemucs(**HDEMUCS_MMI_KWARGS)) == DEMUCS_MODELS["hdemucs_mmi"].parameters
    torchaudio_high = torchaudio.models.HDemucs(**HDemucsConfig.from_preset("high").torchaudio_kwargs())
    assert count(torchaudio_high) == TORCHAUDIO_HIGH_PARAMETERS


def test_a_bag_of_official_files_becomes_one_cached_bag(chain_env, tmp_path, make_config):
    """htdemucs_ft's shape (one member per source, one-hot weights) with two tiny members: both files fetched and
    checked, the bag assembled with the registry's weights, cached as one bag folder and read back from it."""
    from modeling_hdemucs_flax.models.bag import FlaxDemucsBag

    members, paths = [], []
    for seed in (0, 1):
        written = write_package(tiny_model("htdemucs", seed=seed), tmp_path / f"release{seed}", make_config)
        _, prefix = split_checkpoint_name(written.name)
        path = written.rename(written.with_name(f"member{seed}-{prefix}.th"))  # distinct signatures, as released
        signature = f"member{seed}"
        members.append(DemucsCheckpointFile(signature=signature, sha256_prefix=prefix, root=HYBRID_TRANSFORMER_ROOT))
        chain_env.files[served_path(members[-1])] = path.read_bytes()
        paths.append(path)
    weights = ((1.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 1.0))
    info = dataclasses.replace(DEMUCS_MODELS["htdemucs_ft"], members=tuple(members), weights=weights)
    bag = load_named_model("htdemucs_ft", info=info, progress=False)
    assert isinstance(bag, FlaxDemucsBag) and len(chain_env.requests) == 2
    assert (demucs_models.converted_dir(info) / "bag.json").is_file()
    assert list(demucs_models.official_dir().iterdir()) == []
    again = load_named_model("htdemucs_ft", info=info, progress=False)
    assert isinstance(again, FlaxDemucsBag) and len(chain_env.requests) == 2
    assert list(again.members) == ["member0", "member1"]
    for member, path in zip(again.members.values(), paths, strict=True):
        assert_params_equal(member, path)


def test_a_names_facts_come_from_the_registry_without_loading_anything():
    """Sources, rate, channels and the model's own segment of each name, before anything is fetched: hdemucs_mmi
    separates 44 s chunks (its bag yaml's segment), the HTDemucs releases their 7.8 s training segment."""
    from modeling_hdemucs_flax.zoo.model_facts import read_model_facts

    six = read_model_facts("htdemucs_6s")
    assert (
        six is not None
        and len(six.sources) == 6
        and (six.sample_rate, six.audio_channels, six.segment)
        == (
            44100,
            2,
            7.8,
        )
    )
    mmi = read_model_facts("hdemucs_mmi")
    assert mmi is not None and mmi.segment == 44.0

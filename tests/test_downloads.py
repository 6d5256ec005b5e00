"""Downloads against servers that misbehave (cut chunked transfers, lying Content-Lengths, oversized files, a
trickle that never times out a read), temporaries of killed runs, a real command-line process stopped with
SIGTERM mid-download, the way to a model when offline (a torchaudio file copied in by hand, one error line
saying where it goes and how to convert one), a copied file that is not the right one (named, never deleted),
and a network that is not there (refused, unresolvable, silent, a proxy that never answers): seconds, not
minutes, and the same recipe as offline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_hdemucs_flax import DownloadError
from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.weights.downloads import download_file
from modeling_hdemucs_flax.zoo.torchaudio_bundles import BUNDLES

from .audio_files import write_song
from .flows import REPO_ROOT, error_lines, flow_env, probe, run_on_terminal, run_script, tiny_bundle
from .hub_server import (
    FileServer,
    HubServer,
    SilentServer,
    closed_port_url,
    content_length,
    cut_mid_chunk,
    trickle,
    unannounced,
)
from .reference import error_report

CONTENT = np.random.default_rng(0).bytes(300_000)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


CAP = len(CONTENT) // 3  # a size cap below CONTENT's length, for downloads of no known size


@pytest.mark.parametrize(
    "name,responder,size,cap,words",
    [
        ("cut", cut_mid_chunk(CONTENT), None, None, "connection lost (IncompleteRead)"),
        ("malformed", content_length(CONTENT, "12abc"), None, None, "malformed Content-Length '12abc'"),
        ("short", content_length(CONTENT, str(len(CONTENT) + 5000)), None, None, "got 300000 of 305000 bytes"),
        ("mismatch", content_length(CONTENT, str(len(CONTENT))), len(CONTENT) - 10, None, "the file has"),
        ("oversized", cut_mid_chunk(CONTENT), len(CONTENT) // 3, None, f"more than {len(CONTENT) // 3} bytes"),
        # no size known: the cap still holds, whether the server announces its length or not
        ("unknown size, no length", unannounced(CONTENT), None, CAP, f"sent more than the {CAP}-byte cap"),
        ("unknown size, announced", CONTENT, None, CAP, f"offers {len(CONTENT)} bytes, more than the {CAP}-byte cap"),
    ],
)
def test_misbehaving_servers_give_one_line_and_leave_nothing(tmp_path, name, responder, size, cap, words):
    with FileServer({"f.bin": responder}) as server:
        with pytest.raises(DownloadError) as caught:
            download_file(f"{server.url}/f.bin", tmp_path / "f.bin", size=size, progress=False, max_size=cap)
    message = str(caught.value)
    assert words in message and "\n" not in message, message
    assert leftovers(tmp_path) == []


def test_a_bundle_of_unknown_size_is_capped_on_the_converters_path(tmp_path, monkeypatch, capsys):
    """HDEMUCS_HIGH_MUSDB's file has no published size or digest: `convert_torchaudio_hdemucs --bundle ...
    --allow-unverified` downloads it capped at MAX_DOWNLOAD_BYTES (lowered here; 2 GiB for real) from a server
    that sends more without announcing a length: one line, nothing kept."""
    from conversion import convert_torchaudio_hdemucs as convert
    from modeling_hdemucs_flax.weights import downloads

    assert BUNDLES["HDEMUCS_HIGH_MUSDB"].size is None and downloads.MAX_DOWNLOAD_BYTES == 2 * 1024**3
    bundle = tiny_bundle(None)
    monkeypatch.setattr(downloads, "MAX_DOWNLOAD_BYTES", CAP)
    monkeypatch.setenv("HDEMUCS_FLAX_CACHE", str(tmp_path / "cache"))
    with FileServer({bundle.key: unannounced(CONTENT)}) as server:
        monkeypatch.setenv("HDEMUCS_FLAX_TORCHAUDIO_URL", server.url)
        argv = ["--bundle", bundle.name, "--allow-unverified", "--output-dir", str(tmp_path / "out"), "--no-progress"]
        assert convert.main(argv, bundles={bundle.name: bundle}) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot download {server.url}/{bundle.key}: the server sent more than the {CAP}-byte cap"]
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == [] and not (tmp_path / "out").exists()


def test_a_trickle_hits_the_overall_deadline(tmp_path):
    """One byte every 0.2 s never times out a single read; the whole transfer still has a deadline."""
    with FileServer({"f.bin": trickle(CONTENT, 0.2)}) as server:
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"not finished after 1.5 s"):
            download_file(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False, deadline=1.5)
        took = time.monotonic() - started
    assert took < 5, took
    assert leftovers(tmp_path) == []


def test_a_correct_download_gets_the_usual_mode_and_sweeps_stale_parts(tmp_path):
    stale = tmp_path / ".f.bin.999999999-abcdefgh.part"  # a pid no process can have: its owner is gone
    alive = tmp_path / f".f.bin.{os.getppid()}-abcdefgh.part"  # a running process's: kept
    other = tmp_path / ".f.bin.notours.part"
    for path in (stale, alive, other):
        path.write_bytes(b"old")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    with FileServer({"f.bin": CONTENT}) as server:
        digest = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", size=len(CONTENT), progress=False)
    assert digest == hashlib.sha256(CONTENT).hexdigest()
    assert leftovers(tmp_path) == sorted([alive.name, other.name, "f.bin"])
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~mask


def test_sigterm_during_a_download_leaves_no_part_file(tmp_path):
    """A real `hdemucs-flax separate` fetching the default model from a server that trickles, stopped with
    SIGTERM (as `timeout` and `docker stop` do): one error line, exit 143, no `.part` file."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    with (
        HubServer() as hub,
        FileServer({"models/hdemucs_high_trained.pt": trickle(CONTENT, 0.05, length=334_697_255)}) as files,
    ):
        env = flow_env(tmp_path, HF_ENDPOINT=hub.url, HDEMUCS_FLAX_TORCHAUDIO_URL=files.url)
        folder = tmp_path / "hdemucs_cache" / "torchaudio" / "models"
        command = [sys.executable, "-m", "modeling_hdemucs_flax", "separate", str(song), "-o", str(tmp_path / "out")]
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while not list(folder.glob(".*.part")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert list(folder.glob(".*.part")), "the download never started"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    stderr = stderr.decode()
    print(stderr[-2000:])
    assert process.returncode == 128 + signal.SIGTERM
    assert error_lines(stderr) == ["error: terminated (SIGTERM); no partial stem files were kept"]
    assert leftovers(folder) == []


def test_offline_the_default_model_comes_from_a_copied_torchaudio_file(tmp_path, tiny_pair, reference_sources):
    """HF_HUB_OFFLINE=1 and nothing cached: the error says where torchaudio's file goes (naming the option of
    the application asking); once the file is there, it is verified, converted without torch and used, and the
    file stays (what the user placed is never deleted)."""
    _, reference, _ = tiny_pair
    checkpoint = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), checkpoint)
    bundle = tiny_bundle(hashlib.sha256(checkpoint.read_bytes()).hexdigest())
    np.save(tmp_path / "probe.npy", probe())
    env = flow_env(tmp_path, HF_HUB_OFFLINE="1", USE_TORCH="0")
    spec = json.dumps(dataclasses.asdict(bundle))
    result = run_script(
        "default_model_local_file", env, spec, str(checkpoint), str(tmp_path / "probe.npy"), str(tmp_path)
    )
    assert result.returncode == 0
    [line] = error_lines(result.stderr)
    target = tmp_path / "hdemucs_cache" / "torchaudio" / bundle.key
    assert "copy tiny_test_hdemucs.pt (from " in line and f" to {target}" in line, line
    assert "hdemucs-flax convert tiny_test_hdemucs.pt -o FOLDER" in line and "HDEMUCS_MODEL" in line, line
    assert "--model" not in line
    _, db = error_report(
        "local torchaudio file vs torchaudio", np.load(tmp_path / "local_file.npy"), reference_sources, -80
    )
    assert db <= -80
    assert "torch imported: False" in result.stdout
    assert "copied file kept: True" in result.stdout


def test_offline_command_line_says_what_works_in_one_line(tmp_path):
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    env = flow_env(tmp_path, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "modeling_hdemucs_flax", "separate", str(song), "-o", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the default model (HDEMUCS_HIGH_MUSDB_PLUS)"), lines
    target = tmp_path / "hdemucs_cache" / "torchaudio" / "models" / "hdemucs_high_trained.pt"
    assert f"to {target}" in lines[0] and "hdemucs-flax convert hdemucs_high_trained.pt" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_file_given_as_model_says_to_convert_it(tmp_path, capsys):
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    checkpoint = tmp_path / "hdemucs_high_trained.pt"
    checkpoint.write_bytes(b"PK not really")
    assert main(["separate", str(song), "--model", str(checkpoint), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {checkpoint} is a torch checkpoint file, not a model folder; convert it once with "
        f"`hdemucs-flax convert {checkpoint} -o FOLDER` and pass FOLDER as --model\n"
    )


def separate_command(song: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modeling_hdemucs_flax", "separate", str(song), "-o", str(out), *extra]


def run_command(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


PLUS = BUNDLES["HDEMUCS_HIGH_MUSDB_PLUS"]


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_a_copied_file_that_is_not_the_checkpoint_is_named_and_kept(tmp_path, offline):
    """A file copied by hand to where the default chain looks, but not torchaudio's file (truncated, another
    bundle's): one line naming its sha256 and size against the expected ones; the file stays as it was, and
    nothing is downloaded (not even online: the user's file is theirs to replace)."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    target = tmp_path / "hdemucs_cache" / "torchaudio" / PLUS.key
    target.parent.mkdir(parents=True)
    copied = b"the first 42 bytes of a copy cut short..."
    target.write_bytes(copied)
    with HubServer() as hub, FileServer({PLUS.key: b"a server's file"}) as files:
        mode = "1" if offline else None
        env = flow_env(tmp_path, HF_ENDPOINT=hub.url, HDEMUCS_FLAX_TORCHAUDIO_URL=files.url, HF_HUB_OFFLINE=mode)
        result = run_command(separate_command(song, tmp_path / "out"), env)
    assert result.returncode == 1
    online = "" if offline else ", or delete it and run again to download it"
    assert result.stderr.splitlines() == [
        f"error: {target} is not torchaudio's hdemucs_high_trained.pt (sha256 {hashlib.sha256(copied).hexdigest()}, "
        f"{len(copied)} bytes; expected sha256 {PLUS.sha256}, {PLUS.size} bytes); it was left in place; replace it "
        f"with the file from {files.url}/{PLUS.key}{online}"
    ]
    assert target.read_bytes() == copied and leftovers(target.parent) == [target.name]
    assert files.requests == [] and hub.requests == []


# How long a first run may take to fail when the network is not there, seconds (command start-up included, about
# 3-6 s here). Measured before the probe: refused 28 s, unresolvable 34 s (huggingface_hub's 23 s of retries),
# silent endpoint and silent proxy 147 s (each try waits 10 s, torchaudio's download 60 s). Measured with it:
# 3.3 s, 3.3 s, 14.4 s, 13.4 s (two 5 s probes).
FAST_FAIL_S = {"refused": 15, "unresolvable": 15, "silent endpoint": 30, "silent proxy": 30}
NO_PROXY = {name: None for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy")}


@pytest.mark.parametrize("mode", list(FAST_FAIL_S))
def test_no_network_fails_fast_with_the_whole_recipe(tmp_path, mode):
    """The first run with no way to the Hub or to download.pytorch.org: one line within seconds, saying why each
    source failed and giving the offline recipe (where the file goes, how to convert one)."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    with SilentServer() as silent:
        servers = {
            "refused": (closed_port_url(), "refused the connection"),
            "unresolvable": ("http://nonexistent.invalid", "host name nonexistent.invalid not resolved"),
            "silent endpoint": (silent.url, f"no answer from {silent.url[7:]} within 5 s"),
        }
        if mode == "silent proxy":  # the real endpoints, through a proxy that never answers
            proxy = {name: silent.url for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
            env = flow_env(tmp_path, **{**NO_PROXY, **proxy})
            hub_url, torchaudio_url = "https://huggingface.co", "https://download.pytorch.org/torchaudio"
            why = f"no answer from the proxy {silent.url} (HTTPS_PROXY) within 5 s"
        else:
            hub_url, why = servers[mode]
            torchaudio_url = hub_url
            env = flow_env(tmp_path, HF_ENDPOINT=hub_url, HDEMUCS_FLAX_TORCHAUDIO_URL=hub_url, **NO_PROXY)
        started = time.monotonic()
        result = run_command(separate_command(song, tmp_path / "out"), env)
        took = time.monotonic() - started
    print(f"{mode}: failed after {took:.1f} s")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    target = tmp_path / "hdemucs_cache" / "torchaudio" / PLUS.key
    assert line.startswith(
        "error: cannot get the default model: model 'hdemucs-flax/hdemucs-high-musdb-plus' is not in the Hugging Face "
        f"cache and the Hub ({hub_url}) cannot be reached ("
    ), line
    assert f", and cannot download {torchaudio_url}/{PLUS.key}: " in line and line.count(why) == 2, line
    assert line.endswith(
        f"; check the network and proxy settings, or copy hdemucs_high_trained.pt (from {torchaudio_url}/{PLUS.key}) "
        f"to {target}, or convert it with `hdemucs-flax convert hdemucs_high_trained.pt -o FOLDER` and pass FOLDER "
        "as --model"
    ), line
    assert took < FAST_FAIL_S[mode], took
    assert not (tmp_path / "out").exists()


def test_a_terminal_is_told_which_source_is_tried(tmp_path):
    """On a terminal, the first run says what it fetches from where while it waits (stderr as a pipe: the error
    line alone, as the test above shows)."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    url = closed_port_url()
    env = flow_env(tmp_path, HF_ENDPOINT=url, HDEMUCS_FLAX_TORCHAUDIO_URL=url, **NO_PROXY)
    status, shown = run_on_terminal(separate_command(song, tmp_path / "out"), env)
    assert status == 1
    lines = shown.splitlines()
    assert lines[:2] == [
        "loading model (default) ...",
        f"fetching the default model hdemucs-flax/hdemucs-high-musdb-plus from the Hub ({url}) ...",
    ], lines
    assert lines[2].endswith(f"; fetching torchaudio's hdemucs_high_trained.pt from {url[7:]} instead ..."), lines
    assert lines[3].startswith("error: cannot get the default model: ") and len(lines) == 4, lines
    quiet_status, quiet = run_on_terminal(separate_command(song, tmp_path / "out", "--quiet"), env)
    assert quiet_status == 1 and [line.split(":")[0] for line in quiet.splitlines()] == ["error"]

"""The persistent compilation cache the package configures (`configure_compilation_cache`) is written atomically:
a process killed while writing an entry leaves no truncated entry behind, and an entry that fails to load (left
by a JAX that wrote in place) is replaced by the next process that compiles it, so later processes load it
again instead of warning and compiling forever. And the JAX internals `persistent_cache` mirrors are pinned."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import signal
import subprocess
import sys

import jax

from modeling_hdemucs_flax.persistent_cache import PARTIAL, cache_class, installed_cache

from .audio_files import write_song
from .flows import REPO_ROOT, SCRIPTS, run_script

FORWARD = "jit_hdemucs_forward-"
READ_ERROR = "Error reading persistent compilation cache entry"


def _separate(tiny_checkpoint_dir, song, out, env, killed_past: int | None = None) -> subprocess.CompletedProcess:
    """`hdemucs-flax separate` in a fresh process; `killed_past`: the kernel kills it when it writes a file
    past this many bytes (`scripts/killed_cache_writer.py`)."""
    argv = ["separate", str(song), "-o", str(out), "--model", str(tiny_checkpoint_dir), "--segment", "0.1", "-q"]
    if killed_past is None:
        command = [sys.executable, "-m", "modeling_hdemucs_flax", *argv]
    else:
        command = [sys.executable, str(SCRIPTS / "killed_cache_writer.py"), str(killed_past), *argv]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(f"--- {command[1:3]} stderr (tail) ---\n{result.stderr[-3000:]}")
    return result


def test_a_run_killed_while_writing_the_forward_pass_leaves_no_truncated_entry(tiny_checkpoint_dir, tmp_path):
    """The first `separate` is killed while it writes the compiled forward pass (440 kB for the tiny model; the
    kernel kills it at 100 kB): the cache holds no entry of it, only the writer's temporary, which the next run
    sweeps. That run compiles and stores the forward pass without a warning, and the one after loads it."""
    song = write_song(tmp_path / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    cache = tmp_path / "cache"
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        PYTHONDONTWRITEBYTECODE="1",  # no .pyc file may meet the size limit first
        HDEMUCS_FLAX_COMPILATION_CACHE=str(cache),
        JAX_EXPLAIN_CACHE_MISSES="1",
        JAX_PLATFORMS="cpu",
    )
    killed = _separate(tiny_checkpoint_dir, song, tmp_path / "killed", env, killed_past=100_000)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr[-3000:]
    assert not (tmp_path / "killed").exists()  # killed before any stem
    assert [p.name for p in cache.iterdir() if p.name.startswith(FORWARD)] == []  # JAX's own: 100 kB of 440
    partial = [p for p in cache.iterdir() if p.name.endswith(PARTIAL)]
    assert len(partial) == 1 and partial[0].name.startswith(f".{FORWARD}") and partial[0].stat().st_size == 100_000

    second = _separate(tiny_checkpoint_dir, song, tmp_path / "second", env)
    third = _separate(tiny_checkpoint_dir, song, tmp_path / "third", env)
    for run in (second, third):
        assert run.returncode == 0, run.stderr[-3000:]
        assert READ_ERROR not in run.stderr
    name = "'jit_hdemucs_forward'"
    assert f"PERSISTENT COMPILATION CACHE MISS for {name}" in second.stderr
    assert f"PERSISTENT COMPILATION CACHE MISS for {name}" not in third.stderr
    assert not any(p.name.endswith(PARTIAL) for p in cache.iterdir())  # the dead writer's temporary, swept
    assert len([p for p in cache.iterdir() if p.name.startswith(FORWARD)]) == 1


def _probe(cache, tmp_path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    result = run_script("cache_probe", env, str(cache))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {"warnings": report["warnings"], "loaded": "cache_hits" in report["events"]}


def test_an_entry_that_fails_to_load_is_replaced_once_and_loads_after(tmp_path):
    """A truncated entry (as JAX's own in-place write leaves it when killed): the next process warns once (JAX's
    warning), compiles and replaces it; the process after that loads it without a warning."""
    cache = tmp_path / "cache"
    assert _probe(cache, tmp_path) == {"warnings": [], "loaded": False}
    (entry,) = [p for p in cache.iterdir() if p.name.endswith("-cache")]
    whole = entry.read_bytes()
    entry.write_bytes(whole[: len(whole) // 3])

    repairing = _probe(cache, tmp_path)
    assert repairing["loaded"] is False and len(repairing["warnings"]) == 1, repairing
    assert repairing["warnings"][0].startswith(READ_ERROR)
    assert len(entry.read_bytes()) == len(whole)
    assert _probe(cache, tmp_path) == {"warnings": [], "loaded": True}
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]


# The JAX 0.10 sources `persistent_cache` copies or relies on, by the sha256 of their text. A new JAX that
# changes one fails here: read `modeling_hdemucs_flax/persistent_cache.py` against the new source (does `put`
# still follow `LRUCache.put`? does JAX still call `put` after an entry fails to load, and build its cache in
# `_initialize_cache` unless `_cache` is set?), then record the new digest.
PINNED_SOURCES = {
    "jax._src.lru_cache:LRUCache.get": "9b51f792bb97770c88e6d192ea6d510cca1a0c53397d5c3b11b894593263ef73",
    "jax._src.lru_cache:LRUCache.put": "67c1d08f2fcbfd8aa8f5244d8b9f48e604bbc2e95564289aecd67ca469827cca",
    "jax._src.compilation_cache:_initialize_cache": "715f073b20421d492e9f0cb6829ddb2b06e7cb17cecc9b2eda32a12669a9fee8",
    "jax._src.compilation_cache:get_file_cache": "e87182ce0e53d4124331ab54a993f98d5148be0605b0e1a741377c67d1d22bde",
    "jax._src.compiler:_cache_read": "12071a573e3b936b46f2ccb2157cb5ce83c79c542c5d2c1c3694f7e845c6b2b4",
    "jax._src.compiler:compile_or_get_cached": "efe0305e31717aefc60c4f69415f5dc296e7772f73391f9c434757bc176833e4",
}


def _source_digest(name: str) -> str:
    """The sha256 of the source of `name` ("module:qualified name")."""
    module, _, qualified = name.partition(":")
    target = importlib.import_module(module)
    for attribute in qualified.split("."):
        target = getattr(target, attribute)
    return hashlib.sha256(inspect.getsource(target).encode()).hexdigest()


def test_the_jax_internals_the_atomic_cache_mirrors_are_unchanged():
    assert jax.__version__.startswith("0.10."), jax.__version__
    digests = {name: _source_digest(name) for name in PINNED_SOURCES}
    assert digests == PINNED_SOURCES, "JAX's cache internals changed: see the comment above PINNED_SOURCES"
    # this process's cache is the package's (conftest's `jax_cache` configured it)
    assert isinstance(installed_cache(), cache_class())

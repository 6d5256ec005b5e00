"""The README's commands as a user types them.

The smoke test ("Try it without the 335 MB download") is run verbatim but for the venv's location: it builds a
random-weight model and separates a song with it through the installed `hdemucs-flax` command. The install and
test commands themselves are run by `.ci/run` on a fresh machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from .audio_files import write_song
from .conftest import SOURCES
from .flows import REPO_ROOT

README = REPO_ROOT / "README.md"


def code_block_after(marker: str) -> list[str]:
    """The command lines of the first fenced code block after `marker` in the README."""
    text = README.read_text()
    start = text.index(marker)
    block = re.search(r"```(?:bash)?\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"no code block after {marker!r}"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_smoke_test_with_a_random_weight_model_runs_as_written(tmp_path, jax_cache):
    lines = code_block_after("**Try it without the 335 MB download.**")
    assert len(lines) == 2 and all(line.startswith(".venv/bin/") for line in lines), lines
    bin_dir = Path(sys.executable).parent  # where this test's venv keeps python and hdemucs-flax
    assert (bin_dir / "hdemucs-flax").is_file(), "the package's command is not installed in this environment"
    write_song(tmp_path / "song.mp3", 1.5, 44100, 2, format="MP3")
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", HDEMUCS_FLAX_COMPILATION_CACHE=str(jax_cache))
    env["HDEMUCS_FLAX_CACHE"] = str(tmp_path / "cache")
    for line in lines:
        command = line.replace(".venv/bin/", f"{bin_dir}/", 1)
        result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    for stem in SOURCES:
        info = sf.info(tmp_path / "smoke-test" / "song" / f"{stem}.wav")
        assert (info.samplerate, info.channels) == (44100, 2) and abs(info.frames - 1.5 * 44100) <= 2304

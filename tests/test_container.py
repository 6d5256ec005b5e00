"""The container image, proven without a container engine: the Dockerfile passes hadolint, and its install
steps — the very `RUN docker/install.sh` line, over the files its `COPY` lines copy — build a fresh virtualenv
from which `hdemucs-flax serve` starts and separates. The CUDA variant's pinned requirements resolve.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .audio_files import write_song
from .conftest import SEGMENT_SECONDS, SOURCES
from .flows import REPO_ROOT
from .serve_helpers import ServeProcess, read_zip, upload, wait_ready

DOCKERFILE = REPO_ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_passes_hadolint():
    result = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_dockerfile_is_non_root_with_a_health_check_and_the_server_as_command():
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert dict(instructions)["USER"] == "10001:10001"
    assert kinds.index("USER") < kinds.index("CMD") and kinds.count("USER") == 1
    assert "http://127.0.0.1:8000/v1/health" in dict(instructions)["HEALTHCHECK"]
    assert json.loads(dict(instructions)["CMD"]) == ["hdemucs-flax", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert {args.split("=")[0] for kind, args in instructions if kind == "ARG"} == {"VARIANT", "MODEL", "PRELOAD"}


def test_image_install_steps_give_a_fresh_virtualenv_that_serves(tiny_checkpoint_dir, jax_cache, tmp_path):
    """The Dockerfile's COPY lines and its `docker/install.sh` RUN line, run as written (the VARIANT build
    argument at its default, cpu) into a fresh virtualenv; then the installed command serves a separation."""
    instructions = dockerfile_instructions()
    context = tmp_path / "image"  # the root of the image's file system
    for kind, args in instructions:
        if kind == "COPY":
            *sources, destination = shlex.split(args)
            for source in sources:
                target = context / destination.lstrip("/")
                target = target / Path(source).name if destination.endswith("/") else target
                copy = shutil.copytree if (REPO_ROOT / source).is_dir() else shutil.copy2
                target.parent.mkdir(parents=True, exist_ok=True)
                copy(REPO_ROOT / source, target)
    (install,) = [args for kind, args in instructions if kind == "RUN" and "docker/install.sh" in args]
    variant = dict(args.split("=", 1) for kind, args in instructions if kind == "ARG" and "=" in args)["VARIANT"]
    command = install.replace("${VARIANT}", variant).replace("/src", str(context / "src"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHON"] = str(venv / "bin" / "python")  # the image's `python`; pip's own settings (cache, index) kept
    result = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    print(f"[image] install steps in a fresh virtualenv: {seconds:.0f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (context / "src").exists(), "the RUN line removes the copied sources"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import modeling_hdemucs_flax, importlib.util as u; "
         "print(modeling_hdemucs_flax.__file__, u.find_spec('torch') is None)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout.split()  # fmt: skip
    assert where[0].startswith(str(venv)) and where[1] == "True", where  # the installed copy; no torch at all

    song = write_song(tmp_path / "song.wav", 0.3, 44100, 2, subtype="PCM_16")
    args = ["--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS), "-q"]
    env = {"PYTHONPATH": None, "HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache), "JAX_PLATFORMS": "cpu"}
    with ServeProcess(tmp_path, args, env, command=[str(venv / "bin" / "hdemucs-flax")]) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            wait_ready(client)
            response = client.post("/v1/separate", **upload(song))
            assert response.status_code == 200, response.text
            assert sorted(read_zip(response.content, tmp_path / "out")) == sorted(f"song/{s}.wav" for s in SOURCES)
        server.terminate()
    assert "Traceback" not in server.log_text()

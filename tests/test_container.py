"""The container image, proven without a container engine: the Dockerfile passes hadolint; its user and folder
steps, run against a staged root, give the non-root user its home and cache folders; and its install steps —
the very `RUN docker/install.sh` line, over the files its `COPY` lines copy — build a fresh virtualenv from
which `hdemucs-flax serve` starts and separates. The CUDA variant's pinned requirements resolve.

No image is built: there is no Docker daemon here or in CI, and no registry to pull `python:3.11-slim` from.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

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


def build_arguments(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The ARG instructions' defaults (what a plain `docker build` uses)."""
    pairs = [shlex.split(args)[0].partition("=") for kind, args in instructions if kind == "ARG"]
    return {name: value for name, _, value in pairs}


def image_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV instructions' variables, `${NAME}` filled from the build arguments' defaults and earlier ENV."""
    known = build_arguments(instructions)
    env: dict[str, str] = {}
    for kind, args in instructions:
        if kind == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                value = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: {**known, **env}.get(m[1] or m[2], ""), value)
                env[name] = value
    return env


# Shell functions that point the shadow tools of a RUN line at the staged root instead of this machine's /etc.
SHADOW_TOOLS = (
    'groupadd() { command groupadd --prefix "$IMAGE_ROOT" "$@"; }\n'
    'useradd() { command useradd --prefix "$IMAGE_ROOT" "$@"; }\n'
)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture
def staged_root():
    """A folder standing for the image's root file system with a Debian base image's account files (root's
    only, as in python:3.11-slim for what matters here). Made in the temporary folder, not under pytest's 0700
    folders: the image's user must reach its home inside it."""
    root = Path(tempfile.mkdtemp(prefix="hdemucs-image-root-"))
    root.chmod(0o755)
    etc = root / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    if Path("/etc/login.defs").exists():  # Debian's, as in the Debian-based image
        shutil.copy2("/etc/login.defs", etc / "login.defs")
    (root / "home").mkdir(mode=0o755)
    (root / "root").mkdir(mode=0o700)
    yield root
    shutil.rmtree(root)


def in_root(root: Path, path: str) -> Path:
    """Where the image's absolute `path` lies in the staged root `root`."""
    return root / path.lstrip("/")


def account_of(root: Path, uid: int) -> list[str]:
    """The staged /etc/passwd entry of `uid`: name, password, uid, gid, comment, home, shell."""
    accounts = [line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()]
    [account] = [fields for fields in accounts if int(fields[2]) == uid]
    return account


def replay_run_lines(instructions: list[tuple[str, str]], root: Path, env: dict[str, str]) -> tuple[int, int]:
    """Run the Dockerfile's RUN lines in order against `root` (all but the install line, which the last test of
    this file runs): as root before USER, then as USER's uid:gid in WORKDIR with HOME from the staged passwd, as
    `docker build` does. `env`: the build arguments and ENV, paths already moved into `root`. Returns USER's
    (uid, gid). As root only groupadd and useradd may run (pointed at the staged root), never a command that
    would change this machine."""
    user: tuple[int, int] | None = None
    workdir = "/"
    for kind, args in instructions:
        if kind == "USER":
            uid, gid = args.split(":")
            user = (int(uid), int(gid))
        elif kind == "WORKDIR":
            workdir = args
        elif kind == "RUN" and "docker/install.sh" not in args:
            if user is None:
                unknown = {shlex.split(command)[0] for command in args.split("&&")} - {"groupadd", "useradd"}
                assert not unknown, f"RUN {args}: as root this test stages only groupadd and useradd, not {unknown}"
                run_env = env | {"HOME": str(root / "root"), "IMAGE_ROOT": str(root)}
                result = subprocess.run(["sh", "-c", SHADOW_TOOLS + args], env=run_env, capture_output=True, text=True)
            else:
                run_env = env | {"HOME": str(in_root(root, account_of(root, user[0])[5]))}
                result = subprocess.run(
                    ["sh", "-c", args], env=run_env, cwd=in_root(root, workdir), user=user[0], group=user[1],
                    extra_groups=[], capture_output=True, text=True,
                )  # fmt: skip
            assert result.returncode == 0, f"RUN {args}:\n{result.stdout}{result.stderr}"
    assert user is not None, "the image runs as root"
    assert account_of(root, user[0])[5] == workdir, "WORKDIR is not the user's home"
    return user


def test_the_image_user_owns_its_home_and_cache_folders(staged_root):
    """The image's file layout and user, from the Dockerfile's own RUN lines replayed on a staged root. The
    named volume the README mounts on the user's ~/.cache starts as a copy of that folder, owner included: the
    folder must exist in the image and belong to the image's user, or Docker makes the volume root-owned and the
    server cannot write its model cache."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (CI runs as root): it creates the image's user and runs steps as it")
    instructions = dockerfile_instructions()
    image = image_env(instructions)
    env = {"PATH": PATH, **build_arguments(instructions)}
    env |= {name: str(in_root(staged_root, value)) if value.startswith("/") else value for name, value in image.items()}
    uid, gid = replay_run_lines(instructions, staged_root, env)

    _, _, _, account_gid, _, home, shell = account_of(staged_root, uid)
    assert (int(account_gid), shell) == (gid, "/usr/sbin/nologin")
    cache = Path(home) / ".cache"  # what the README's named volume is mounted on
    caches = [cache, Path(image["HDEMUCS_FLAX_CACHE"]), Path(image["HF_HOME"])]
    assert all(folder.is_relative_to(cache) for folder in caches), f"a cache outside the volume {cache}: {caches}"
    for folder in [Path(home), *caches]:
        staged = in_root(staged_root, str(folder))
        assert staged.is_dir(), f"{folder}: missing from the image"
        status = staged.stat()
        assert (status.st_uid, status.st_gid) == (uid, gid), f"{folder}: owned by {status.st_uid}:{status.st_gid}"
        assert status.st_mode & 0o700 == 0o700, f"{folder}: mode {oct(status.st_mode)}"
    # the user writes both caches, as the server does at its first start
    probe = subprocess.run(
        ["sh", "-c", 'touch "$HDEMUCS_FLAX_CACHE/probe" "$HF_HOME/probe"'], env=env, user=uid, group=gid,
        extra_groups=[], capture_output=True, text=True,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr


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

"""The GPU extras install one coherent set of NVIDIA libraries: `[cuda13]` beside torch (`[convert]`, which `[test]`
and `[bench]` include) resolves to CUDA 13 packages only, and `[cuda]` (CUDA 12, for a GPU runtime without torch)
beside torch brings both majors' cuDNN and NCCL, whose wheels write the same files: the combination docs/gpu.md
warns against. Resolved by pip against the package index (`--dry-run`: metadata only, nothing downloaded or
installed), from the extras as pyproject.toml declares them."""

import json
import subprocess
import sys
import time
import tomllib

import pytest

from .flows import REPO_ROOT as ROOT

EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def resolve(tmp_path, *extras: str) -> dict[str, str]:
    """name -> version of everything pip would install for the requirements of `extras`, in a fresh environment."""
    requirements = [r for extra in extras for r in EXTRAS[extra] if not r.startswith("hdemucs-flax")]
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--report", str(report), *requirements,
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    print(f"[extras] {'+'.join(extras)} resolved in {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, f"{extras} do not resolve:\n{result.stderr[-4000:]}"
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def nvidia_libraries(resolved: dict[str, str]) -> dict[str, list[str]]:
    """cuDNN and NCCL packages by library: the two whose CUDA 12 and CUDA 13 wheels install to the same paths."""
    return {
        library: sorted(name for name in resolved if name.startswith(f"nvidia-{library}-cu"))
        for library in ("cudnn", "nccl")
    }


@pytest.mark.slow
def test_cuda13_beside_torch_installs_one_cuda_major(tmp_path):
    resolved = resolve(tmp_path, "cuda13", "convert")
    assert resolved["jax-cuda13-plugin"] == resolved["jaxlib"] and "torch" in resolved, resolved
    assert nvidia_libraries(resolved) == {"cudnn": ["nvidia-cudnn-cu13"], "nccl": ["nvidia-nccl-cu13"]}
    assert not [name for name in resolved if name.endswith("-cu12")], resolved


@pytest.mark.slow
def test_cuda12_beside_torch_is_the_clash_the_docs_warn_of(tmp_path):
    """If this fails because torch moved to CUDA 12 wheels or JAX's CUDA 12 extra changed, docs/gpu.md's advice
    must change with it."""
    assert nvidia_libraries(resolve(tmp_path, "cuda", "convert")) == {
        "cudnn": ["nvidia-cudnn-cu12", "nvidia-cudnn-cu13"],
        "nccl": ["nvidia-nccl-cu12", "nvidia-nccl-cu13"],
    }

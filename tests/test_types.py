"""Types: pyright in basic mode finds no error in the package, every public function is fully annotated, and the
jaxtyping shape annotations hold on real calls.

The shape annotations cost users nothing (the package decorates nothing; with postponed annotations they are
strings at run time). Here they are checked by running test files in a subprocess with `-p tests.shape_checks`,
jaxtyping's import hook with beartype over the whole package: every annotated call in those tests — the model's
`__call__` (eagerly and under jit), the STFT, the layers, the Separator's forward passes, overlap-add and
statistics, the server — has its shapes and dtypes checked.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time

from .flows import REPO_ROOT, run_script

PACKAGE = REPO_ROOT / "modeling_hdemucs_flax"

# What the shape-checked run covers; tests that deliberately pass a wrongly shaped array to see the package's
# own error (a TypeCheckError comes first under the hook), the full-size model, bfloat16 and the five-minute
# song (minutes of checked tracing and compiling for no path the others miss) are left to the ordinary run.
CHECKED_TESTS = [
    "tests/test_separation.py",
    "tests/test_parity_layers.py",
    "tests/test_model_api.py::test_save_pretrained_from_pretrained_is_bit_identical",
    "tests/test_model_api.py::test_torchaudio_flax_torchaudio_is_bit_identical",
    "tests/test_serve.py::test_wav_and_mp3_come_back_as_zips_of_the_stems_separate_file_writes",
]
CHECKED_DESELECT = "not high and not bad_arrays and not bfloat16 and not five_minute"


def test_pyright_basic_mode_reports_no_errors():
    """`python -m pyright` with the project's configuration ([tool.pyright]: basic mode, the package)."""
    started = time.monotonic()
    env = {**os.environ, "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}
    command = [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=env)
    report = json.loads(result.stdout)
    summary = report["summary"]
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    print(f"[pyright] {summary} in {time.monotonic() - started:.0f} s")
    assert summary["filesAnalyzed"] >= len(list(PACKAGE.rglob("*.py")))
    assert errors == [], "\n".join(f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}" for d in errors)
    assert summary["errorCount"] == 0


def unannotated(tree: ast.Module) -> list[str]:
    """Public functions and methods of public classes with a parameter or the return type unannotated."""
    missing = []

    def visit(body: list[ast.stmt], owner: str | None) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, node.name)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                dunder = node.name.startswith("__") and node.name.endswith("__")
                if node.name.startswith("_") and not dunder:
                    continue
                args = node.args
                params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
                params = [p for p in params if p is not None]
                if owner and params and params[0].arg in ("self", "cls"):
                    params = params[1:]
                bad = [p.arg for p in params if p.annotation is None]
                if node.returns is None and node.name != "__init__":
                    bad.append("return")
                if bad:
                    missing.append(f"{owner + '.' if owner else ''}{node.name} (line {node.lineno}): {', '.join(bad)}")

    visit(tree.body, None)
    return missing


def test_public_functions_are_fully_annotated():
    missing = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := unannotated(ast.parse(path.read_text())))
    }
    assert missing == {}


def test_shape_checks_are_live_under_the_hook():
    """The hook really checks: a well-shaped call passes, a wrong dtype and a wrong rank are refused."""
    result = run_script("shape_check_probe", {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    probes = [line.removeprefix("PROBE ") for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    lines = dict(line.split(": ", 1) for line in probes)
    assert lines["stft float32"] == "passed" and lines["model (batch, channels, samples)"] == "passed"
    assert lines["stft int32"].startswith("refused: Type-check error whilst checking the parameters of")
    assert "FlaxHDemucs.__call__" in lines["model (channels, samples)"]


def test_selected_tests_pass_with_every_shape_annotation_checked(tmp_path):
    started = time.monotonic()
    command = [
        sys.executable, "-m", "pytest", "-p", "tests.shape_checks", "-p", "no:cacheprovider",
        "--basetemp", str(tmp_path / "basetemp"), "-k", CHECKED_DESELECT, *CHECKED_TESTS,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500, env=env)
    tail = result.stdout[-4000:]
    print(f"[shape checks] {time.monotonic() - started:.0f} s\n{tail}")
    assert result.returncode == 0, tail + result.stderr[-2000:]
    assert "shape checks: jaxtyping + beartype" in result.stdout
    counts = dict((word, int(n)) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", tail))
    assert counts.get("passed", 0) >= 28 and set(counts) == {"passed"}, counts

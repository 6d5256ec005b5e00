"""`configure_xla`: the package's XLA flags join `$XLA_FLAGS` before JAX starts, a user's own setting of a flag
wins, and after a backend has started nothing changes (the flags could no longer apply)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from modeling_hdemucs_flax.runtime import XLA_CPU_FLAGS

SCRIPT = """
import json, os, sys
from modeling_hdemucs_flax import configure_xla
first = configure_xla()
flags = os.environ.get("XLA_FLAGS", "")
import jax
jax.numpy.zeros(1).block_until_ready()  # starts the CPU backend
late = configure_xla(("--xla_cpu_flag_that_must_not_be_added=1",))
print(json.dumps({"first": first, "flags": flags, "late": late, "after": os.environ.get("XLA_FLAGS", "")}))
"""


def _run(xla_flags: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_flags_are_added_before_jax_starts_and_not_after():
    result = _run(None)
    assert result["first"] is True
    assert result["flags"].split() == list(XLA_CPU_FLAGS)
    assert result["late"] is False
    assert result["after"] == result["flags"]


def test_a_flag_the_user_set_wins():
    name = XLA_CPU_FLAGS[0].split("=", 1)[0]
    result = _run(f"--xla_dump_hlo_as_text {name}=256")
    assert result["flags"].split() == ["--xla_dump_hlo_as_text", f"{name}=256"]

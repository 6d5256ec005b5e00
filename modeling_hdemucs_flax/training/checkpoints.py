"""Training checkpoints: folders that appear whole or not at all.

    OUT/checkpoints/step-00000200/
      model/            a `save_pretrained` folder of the weights to use (the EMA's when one is kept):
                        `from_pretrained`, `separate --model`, the Space and `serve` load it as it is
      state.msgpack     the exact training state: raw parameters, optimizer state, EMA (flax serialization)
      trainer.json      the step, the run's recipe and data (what `--resume` checks), format version

A checkpoint is written into a hidden staging folder beside its final name and renamed into place, so a kill at
any moment leaves the previous checkpoints and at most a staging folder, which the next run removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flax import serialization

FORMAT = 1
_NAME = re.compile(r"step-(\d{8})")


def checkpoint_folder(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under `out`, oldest first."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _NAME.fullmatch(entry.name)
        if match and (entry / "trainer.json").is_file() and (entry / "state.msgpack").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def sweep_staging(out: Path) -> None:
    """Remove the staging folders a killed run left under `out/checkpoints`."""
    folder = out / "checkpoints"
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(".step-"):
                shutil.rmtree(entry, ignore_errors=True)


def write_checkpoint(
    out: Path,
    step: int,
    state: Any,
    trainer: dict[str, Any],
    save_model: Callable[[Path], None],
    keep: int,
) -> Path:
    """Write checkpoint `step` (see the module doc): `state` a pytree of host arrays, `trainer` the JSON record,
    `save_model(folder)` writes the model folder. Keeps the newest `keep` checkpoints. Returns the folder."""
    final = checkpoint_folder(out, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save_model(staging / "model")
        (staging / "state.msgpack").write_bytes(serialization.to_bytes(state))
        record = {"format": FORMAT, "step": step, **trainer}
        (staging / "trainer.json").write_text(json.dumps(record, indent=2) + "\n")
        for path in staging.rglob("*"):  # on disk before the rename makes the folder a checkpoint
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        os.chmod(staging, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for _, old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_trainer_record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "trainer.json").read_text())


def read_state(folder: Path, template: Any) -> Any:
    """The state saved in checkpoint `folder`, restored into the structure of `template` (same tree, any values)."""
    return serialization.from_bytes(template, (folder / "state.msgpack").read_bytes())

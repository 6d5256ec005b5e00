"""Where a training run's figures go: `OUT/metrics.jsonl` (one JSON object per line: `step` and figures), TensorBoard
event files under `OUT/tensorboard` (tensorboardX), and at the end `OUT/curves.png` (loss and validation SDR).

A resumed run first drops the lines of steps after its checkpoint (what the interrupted run logged past it), so
the file reads as one run; TensorBoard is told to purge those steps likewise.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, out: Path, start: int, *, tensorboard: bool = True):
        self.path = out / "metrics.jsonl"
        kept = [r for r in read_metrics(self.path) if r["step"] <= start] if start else []
        _write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.handle = open(self.path, "a")
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start or None)

    def write(self, step: int, figures: dict[str, float]) -> None:
        clean = {k: (v if math.isfinite(v) else None) for k, v in figures.items()}
        self.handle.write(json.dumps({"step": step, **clean}) + "\n")
        self.handle.flush()
        if self.writer is not None:
            for name, value in figures.items():
                group = "valid" if name.startswith("valid") else "train"
                self.writer.add_scalar(f"{group}/{name}", value, step)

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()

    def plot(self, destination: Path) -> Path:
        return plot_curves(read_metrics(self.path), destination)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl ([] when there is none); a torn last line (a killed run) is left out."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_curves(records: list[dict[str, Any]], destination: Path) -> Path:
    """A PNG of the training loss (and its running mean) and the validation SDR against the step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    valid = [(r["step"], r["valid_sdr"]) for r in records if r.get("valid_sdr") is not None]
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    if train:
        steps, losses = zip(*train, strict=True)
        left.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
        window = max(1, len(losses) // 20)
        running = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        left.plot(steps, running, lw=1.5, label=f"mean of {window}")
        left.legend()
    left.set(xlabel="step", ylabel="L1 loss", title="training")
    if valid:
        steps, sdrs = zip(*valid, strict=True)
        right.plot(steps, sdrs, marker="o")
    right.set(xlabel="step", ylabel="SDR (dB)", title="validation (challenge SDR)")
    fd, staging = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".png", dir=destination.parent)
    os.close(fd)
    try:
        figure.savefig(staging, dpi=100)
        os.replace(staging, destination)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return destination


def _write_atomic(path: Path, data: bytes) -> None:
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)

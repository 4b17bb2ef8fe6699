"""The metrics log of a run: ``metrics.jsonl`` (one row per logged step) and TensorBoard (``tb/``)."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewardlab.io import to_json, write_text


class MetricsLogger:
    """Writes every logged dict to ``metrics.jsonl`` and to TensorBoard (``<out>/tb``)."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tb"))
        self._t0 = time.time()

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint's step, and a torn last line (a row
        cut short by an interrupted write; a warning says so)."""
        if not self.path.exists():
            return
        rows, torn = _parse_rows(self.path)
        if torn:
            warnings.warn(f"{self.path}: dropped {torn}, left by an interrupted write", stacklevel=2)
        keep = [ln for ln, row in rows if row.get("step", 0) <= step]
        if torn or len(keep) != len(rows):
            write_text(self.path, "".join(ln + "\n" for ln in keep))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time() - self._t0, 3)}
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                v = float(v)
                row[k] = v
                if self.writer is not None and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)
        with self.path.open("a") as f:
            f.write(to_json(row) + "\n")   # a NaN loss is logged as null: valid JSON

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def _parse_rows(path: Path) -> tuple[list[tuple[str, dict]], str | None]:
    """(line, row) of every row of a metrics log, and a note when its last line is torn (not
    valid JSON: dropped). A bad line before the last is an error (ValueError naming the line)."""
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    rows, torn = [], None
    for i, ln in enumerate(lines):
        try:
            row = json.loads(ln)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if i == len(lines) - 1:
                torn = f"a torn last line ({len(ln)} characters)"
                break
            raise ValueError(f"{path}:{i + 1}: not a metrics row") from None
        rows.append((ln, row))
    return rows, torn


def read_metrics(path: str | Path) -> list[dict]:
    """Every row of a metrics log (a torn last line, from an interrupted write, is left out)."""
    p = Path(path)
    if not p.exists():
        return []
    return [row for _, row in _parse_rows(p)[0]]

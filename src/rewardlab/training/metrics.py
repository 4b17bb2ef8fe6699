"""The metrics log of a run: ``metrics.jsonl`` (one row per logged step, always) and the run's
experiment trackers (``report_to``: TensorBoard in ``tb/`` by default; see
:mod:`rewardlab.training.trackers`)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewardlab.io import to_json, write_text
from rewardlab.training.trackers import check_report_to, DEFAULT, Trackers


class MetricsLogger:
    """Writes every logged dict to ``metrics.jsonl`` and to the trackers of ``report_to``
    (:class:`~rewardlab.training.trackers.Trackers`; default TensorBoard in ``<out>/tb``;
    ``tensorboard=False`` leaves TensorBoard out). ``run_name`` and ``config`` go to the
    trackers that record them (wandb, trackio, mlflow)."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True,
                 report_to: str | list[str] | None = DEFAULT, run_name: str | None = None,
                 config=None):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "metrics.jsonl"
        names = [n for n in check_report_to(report_to) if tensorboard or n != "tensorboard"]
        self.trackers = Trackers(names, self.out, run_name or self.out.name, config) if names else None
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
        with self.path.open("a") as f:
            f.write(to_json(row) + "\n")   # a NaN loss is logged as null: valid JSON
        if self.trackers is not None:    # the same numbers (the finite ones), at the same step
            self.trackers.log(step, {k: v for k, v in row.items() if k not in ("step", "time")})

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


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

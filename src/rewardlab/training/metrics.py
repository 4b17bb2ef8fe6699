"""The metrics log of a run: ``metrics.jsonl`` (one row per logged step) and TensorBoard (``tb/``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewardlab.io import write_text


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
        """On resume, drop rows logged after the checkpoint's step."""
        if not self.path.exists():
            return
        rows = [ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step]
        write_text(self.path, "".join(r + "\n" for r in rows))

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
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]

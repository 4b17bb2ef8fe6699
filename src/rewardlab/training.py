"""Shared training plumbing: seeding, LR schedule, metrics logging, checkpoints that resume exactly.

A checkpoint directory ``<out>/checkpoints/step_<N>/`` holds the model and tokenizer in Hugging
Face format (so ``from_pretrained`` loads it) plus ``trainer_state.pt`` with the optimizer and
scheduler states, every RNG state and the step. ``<out>/checkpoints/latest`` names the newest.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewardlab.io import atomic_path, write_text


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to
    ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.95)):
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)


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


def save_checkpoint(out_dir: str | Path, step: int, model, tokenizer=None, optimizer=None,
                    scheduler=None, extra: dict | None = None, keep: int = 2,
                    models: dict | None = None) -> Path:
    """Save a resumable checkpoint atomically (written under a temp name, then renamed).

    ``models`` holds further HF models to save in sub-folders (e.g. ``{"value": value_model}``)."""
    ckpt_root = Path(out_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp_step_{step:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    for name, m in (models or {}).items():
        m.save_pretrained(str(tmp / name))
    state = {"step": step, "rng": rng_state(), "extra": extra or {},
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    torch.save(state, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    with atomic_path(ckpt_root / "latest") as p:
        p.write_text(final.name)
    olds = sorted(d for d in ckpt_root.glob("step_*") if d.is_dir())
    for d in olds[:-keep] if keep > 0 else []:
        shutil.rmtree(d, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    root = Path(out_dir) / "checkpoints"
    marker = root / "latest"
    if marker.exists():
        p = root / marker.read_text().strip()
        if (p / "trainer_state.pt").exists():
            return p
    return None


def load_trainer_state(ckpt: str | Path, optimizer=None, scheduler=None) -> dict:
    """Restore optimizer, scheduler and RNG states from a checkpoint; returns the state dict."""
    state = torch.load(Path(ckpt) / "trainer_state.pt", map_location="cpu", weights_only=False)
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and info logs (rewardlab shows its own)."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - older versions
        pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

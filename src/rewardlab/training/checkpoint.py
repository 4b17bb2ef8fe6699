"""Seeding and checkpoints that resume exactly.

A checkpoint directory ``<out>/checkpoints/step_<N>/`` holds the model and tokenizer in Hugging
Face format (so ``from_pretrained`` loads it) plus ``trainer_state.pt`` with the optimizer and
scheduler states, every RNG state and the step. ``<out>/checkpoints/latest`` names the newest.
"""

from __future__ import annotations


import os
import random
import shutil

from pathlib import Path


import numpy as np
import torch

from rewardlab.io import atomic_path


class TrainingDivergedError(RuntimeError):
    """A run that cannot go on: too many non-finite optimizer steps in a row, or weights that are
    no longer finite (never saved). The CLI prints it and exits 1."""


def non_finite_parameter(*models) -> str | None:
    """The name of the first parameter of ``models`` (torch modules; None entries skipped) holding
    a nan or inf, or None when all are finite."""
    for i, m in enumerate(models):
        if m is None or not hasattr(m, "named_parameters"):
            continue
        for name, p in m.named_parameters():
            if not bool(torch.isfinite(p.detach()).all()):
                return f"{name}" if len(models) == 1 else f"model {i}: {name}"
    return None


def check_finite_weights(*models, what: str = "checkpoint") -> None:
    """Raise :class:`TrainingDivergedError` when a weight of ``models`` is nan or inf, before a
    ``what`` is written, so no saved model is ever non-finite."""
    bad = non_finite_parameter(*models)
    if bad is not None:
        raise TrainingDivergedError(f"refusing to save the {what}: parameter {bad} is not finite "
                                    "(the run diverged; the last saved checkpoint is kept)")


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


def save_checkpoint(out_dir: str | Path, step: int, model, tokenizer=None, optimizer=None,
                    scheduler=None, extra: dict | None = None, keep: int = 2,
                    models: dict | None = None) -> Path:
    """Save a resumable checkpoint atomically (written under a temp name, then renamed).

    ``models`` holds further HF models to save in sub-folders (e.g. ``{"value": value_model}``).
    Raises :class:`TrainingDivergedError`, writing nothing, when a weight is not finite."""
    check_finite_weights(model, *(models or {}).values(), what=f"checkpoint of step {step}")
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



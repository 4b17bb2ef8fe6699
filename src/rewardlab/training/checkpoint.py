"""Seeding and checkpoints that resume exactly.

A checkpoint directory ``<out>/checkpoints/step_<N>/`` holds the model and tokenizer in Hugging
Face format (so ``from_pretrained`` loads it) plus ``trainer_state.pt`` with the optimizer and
scheduler states, every RNG state and the step. ``<out>/checkpoints/latest`` names the newest.

A checkpoint is written under a temporary name and renamed, so a crash never leaves a torn one;
should one still be damaged (a truncated weight or state file, a ``latest`` naming nothing),
:func:`latest_checkpoint` warns and falls back to the newest complete one, and
:func:`save_checkpoint` keeps the last ``keep`` (2) complete ones.
"""

from __future__ import annotations


import json
import os
import random
import shutil
import struct
import warnings
import zipfile
from pathlib import Path


import numpy as np
import torch

from rewardlab.io import atomic_path
from rewardlab.models.loading import share_tied_weights


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped as incomplete or corrupt (resuming from an earlier one)."""


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is unusable (truncated, bad header), or None: its 8-byte
    header length, JSON header and tensor offsets must account for exactly the file's size."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name}: truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name}: truncated header ({size} bytes)"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"{path.name}: unreadable header ({e.__class__.__name__})"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    want = 8 + n + max(ends, default=0)
    if size != want:
        return f"{path.name}: {size} bytes, the header describes {want}"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """Why a ``torch.save`` file (a zip archive) is unusable, or None: a truncated archive loses
    its central directory, so it no longer opens."""
    try:
        with zipfile.ZipFile(path) as z:
            size = path.stat().st_size
            if any(i.header_offset + i.compress_size > size for i in z.infolist()):
                return f"{path.name}: truncated"
    except (OSError, zipfile.BadZipFile) as e:
        return f"{path.name}: not a complete torch file ({e.__class__.__name__})"
    return None


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """Why ``ckpt`` is not a complete checkpoint (missing trainer state or weights, a truncated
    or damaged file), or None when it is. Reads only file headers, never the tensors."""
    p = Path(ckpt)
    if not p.is_dir():
        return "no such directory"
    state = p / "trainer_state.pt"
    if not state.is_file():
        return "no trainer_state.pt"
    why = _torch_file_problem(state)
    if why:
        return why
    weights = sorted(p.rglob("*.safetensors"))
    bins = sorted(p.rglob("pytorch_model*.bin"))
    if not weights and not bins:
        return "no model weights"
    for w in weights:
        why = _safetensors_problem(w)
        if why:
            return f"{w.relative_to(p).parent}/{why}" if w.parent != p else why
    for b in bins:
        why = _torch_file_problem(b)
        if why:
            return why
    for index in p.rglob("*.index.json"):   # sharded weights: every shard present
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            return f"{index.name}: unreadable"
        missing = [s for s in shards if not (index.parent / s).is_file()]
        if missing:
            return f"{index.name}: shard {missing[0]} is missing"
    return None


def _step_dirs(root: Path) -> list[Path]:
    """The ``step_N`` directories under ``root``, newest (highest N) first."""
    def step(d: Path) -> int:
        try:
            return int(d.name.split("_", 1)[1])
        except (IndexError, ValueError):
            return -1
    dirs = [d for d in root.glob("step_*") if d.is_dir() and step(d) >= 0]
    return sorted(dirs, key=step, reverse=True)


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


def check_finite_state(state_dict: dict, what: str = "checkpoint") -> None:
    """:func:`check_finite_weights` for a state dict (a gathered FSDP model)."""
    for name, t in state_dict.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainingDivergedError(f"refusing to save the {what}: parameter {name} is not "
                                        "finite (the run diverged; the last saved checkpoint is kept)")


def save_pretrained_full(model, path: str | Path, state_dict: dict) -> None:
    """``model.save_pretrained`` with the weights of ``state_dict`` (the full state of an FSDP
    model): config.json names the model's own class, not FSDP's ``FSDP<Name>`` subclass, and tied
    weights (lm_head = embed_tokens) are stored once, as ``save_pretrained`` does by itself."""
    state_dict = share_tied_weights(model, state_dict)   # gathered copies: stored once
    model.save_pretrained(str(path), state_dict=state_dict)
    cfg_path = Path(path) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        archs = cfg.get("architectures")
        if archs:
            cfg["architectures"] = [a[4:] if a.startswith("FSDP") else a for a in archs]
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


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
                    models: dict | None = None, state_dict: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Save a resumable checkpoint atomically (written under a temp name, then renamed).

    ``models`` holds further HF models to save in sub-folders (e.g. ``{"value": value_model}``).
    ``state_dict`` / ``optimizer_state``: the gathered full states of an FSDP model and its
    optimizer (:class:`~rewardlab.training.distributed.Dist`), saved instead of the model's and
    the optimizer's own. Raises :class:`TrainingDivergedError`, writing nothing, when a weight is
    not finite."""
    if state_dict is not None:
        check_finite_state(state_dict, what=f"checkpoint of step {step}")
        check_finite_weights(*(models or {}).values(), what=f"checkpoint of step {step}")
    else:
        check_finite_weights(model, *(models or {}).values(), what=f"checkpoint of step {step}")
    ckpt_root = Path(out_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp_step_{step:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if state_dict is not None:
        save_pretrained_full(model, tmp, state_dict)
    else:
        model.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    for name, m in (models or {}).items():
        m.save_pretrained(str(tmp / name))
    state = {"step": step, "rng": rng_state(), "extra": extra or {},
             "optimizer": optimizer_state if optimizer_state is not None
             else optimizer.state_dict() if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    torch.save(state, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    with atomic_path(ckpt_root / "latest") as p:
        p.write_text(final.name)
    if keep > 0:   # keep the newest ``keep`` complete checkpoints; drop older and damaged ones
        dirs = _step_dirs(ckpt_root)
        keepers = [d for d in dirs if checkpoint_problem(d) is None][:keep]
        if final not in keepers:
            keepers.append(final)
        for d in dirs:
            if d not in keepers:
                shutil.rmtree(d, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``<out_dir>/checkpoints`` (None: there is none).

    Damaged ones (see :func:`checkpoint_problem`) are skipped with a :class:`CheckpointWarning`
    that says why and which checkpoint the run resumes from instead; so is a ``latest`` marker
    that names no complete checkpoint."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    notes = []
    marker = root / "latest"
    named = None
    if marker.exists():
        try:
            named = marker.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = "?"
        if not (root / named).is_dir():
            notes.append(f"checkpoints/latest names {named!r}, which does not exist")
    found = None
    for d in _step_dirs(root):
        why = checkpoint_problem(d)
        if why is None:
            found = d
            break
        notes.append(f"checkpoint {d.name} is incomplete or corrupt ({why})")
    if notes:
        then = f"resuming from {found.name}" if found else "no complete checkpoint left: starting afresh"
        warnings.warn(f"{root}: {'; '.join(notes)}; {then}", CheckpointWarning, stacklevel=2)
    return found


def load_trainer_state(ckpt: str | Path, optimizer=None, scheduler=None) -> dict:
    """Restore optimizer, scheduler and RNG states from a checkpoint; returns the state dict."""
    state = torch.load(Path(ckpt) / "trainer_state.pt", map_location="cpu", weights_only=False)
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state



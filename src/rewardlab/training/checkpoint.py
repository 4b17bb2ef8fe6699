"""Seeding and checkpoints that resume exactly.

A checkpoint directory ``<out>/checkpoints/step_<N>/`` holds the model and tokenizer in Hugging
Face format (so ``from_pretrained`` loads it) plus ``trainer_state.pt`` with the optimizer and
scheduler states, every RNG state and the step. ``<out>/checkpoints/latest`` names the newest.

A checkpoint is written under a temporary name and renamed, and its ``checkpoint.json`` (every
file with its size) is written last, so a crash never leaves a torn one; should one still be
damaged (a missing, empty or truncated weight or state file, no ``checkpoint.json``, weights that
are not finite, a ``latest`` naming nothing), :func:`resume_point` warns and falls back to the
newest complete one, and refuses (:class:`~rewardlab.config.ConfigError`, naming the directory)
when checkpoints exist but none is complete. :func:`save_checkpoint` keeps the last ``keep`` (2)
complete ones; temporary checkpoint folders left by a killed write are removed.
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

from rewardlab.config import ConfigError
from rewardlab.io import atomic_path, write_json
from rewardlab.models.loading import share_tied_weights

MANIFEST = "checkpoint.json"   # written last: the files of a complete checkpoint, with sizes


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
    why = _manifest_problem(p)
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


def write_manifest(ckpt: Path, step: int) -> None:
    """Write ``<ckpt>/checkpoint.json``: the step and every file (relative path → bytes). Call
    it last, once every other file of the checkpoint is written."""
    files = {str(f.relative_to(ckpt)): f.stat().st_size for f in sorted(ckpt.rglob("*"))
             if f.is_file() and f.name != MANIFEST}
    write_json(ckpt / MANIFEST, {"step": step, "files": files})


def _manifest_problem(p: Path) -> str | None:
    """Why the files of checkpoint ``p`` do not match its ``checkpoint.json`` (missing, which
    means the write never finished; a listed file missing or of another size), or None."""
    m = p / MANIFEST
    if not m.is_file():
        return f"no {MANIFEST} (its write did not finish)"
    try:
        files = json.loads(m.read_text(encoding="utf-8"))["files"]
        files = {str(k): int(v) for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return f"{MANIFEST}: unreadable"
    for name, size in files.items():
        f = p / name
        if not f.is_file():
            return f"{name}: missing (listed in {MANIFEST})"
        if f.stat().st_size != size:
            return f"{name}: {f.stat().st_size} bytes, {MANIFEST} says {size}"
    return None


def non_finite_weights(ckpt: str | Path) -> str | None:
    """The first tensor of a checkpoint's ``*.safetensors`` files holding a nan or inf (``file:
    name``), or None. Reads the tensors one at a time."""
    from safetensors import safe_open

    p = Path(ckpt)
    for w in sorted(p.rglob("*.safetensors")):
        with safe_open(str(w), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"{w.relative_to(p)}: {name}"
    return None


def clean_stale_temps(out_dir: str | Path) -> list[str]:
    """Remove the temporary checkpoint folders (``checkpoints/.tmp_step_*``) a killed write left;
    returns their names. Only the process that writes checkpoints may call it."""
    root = Path(out_dir) / "checkpoints"
    gone = []
    for d in sorted(root.glob(".tmp_step_*")) if root.is_dir() else []:
        shutil.rmtree(d, ignore_errors=True)
        gone.append(d.name)
    return gone


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
    clean_stale_temps(out_dir)
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
    write_manifest(tmp, step)   # last: a checkpoint without it never finished
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


def _load_state(ckpt: Path) -> dict:
    """The trainer state of ``ckpt`` (ValueError when it does not load or lacks step / rng)."""
    try:
        state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
    except Exception as e:   # a damaged pickle raises anything from EOFError to KeyError
        raise ValueError(f"trainer_state.pt does not load ({e.__class__.__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "rng" not in state:
        raise ValueError("trainer_state.pt lacks the step or the RNG states")
    return state


def resume_point(out_dir: str | Path, *, load_state: bool = True,
                 check_weights: bool = True) -> tuple[Path | None, dict | None]:
    """The newest complete checkpoint under ``<out_dir>/checkpoints`` and its trainer state,
    loaded up front (``(None, None)``: there is no checkpoint, so the run starts afresh).

    Each candidate, newest first, must pass :func:`checkpoint_problem`, hold finite weights
    (``check_weights``; :func:`non_finite_weights`) and, with ``load_state``, a trainer state
    that loads. A damaged one is skipped with a one-line :class:`CheckpointWarning` that says why
    and which checkpoint the run resumes from instead; so is a ``latest`` marker naming no
    complete checkpoint. When checkpoints exist but none is complete: :class:`ConfigError`
    naming the directory (start afresh there with ``--overwrite``)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None, None
    notes = []
    marker = root / "latest"
    if marker.exists():
        try:
            named = marker.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = "?"
        if not named or not (root / named).is_dir():
            notes.append(f"checkpoints/latest names {named!r}, which does not exist")
    found, state = None, None
    dirs = _step_dirs(root)
    for d in dirs:
        why = checkpoint_problem(d)
        if why is None and check_weights:
            bad = non_finite_weights(d)
            why = f"weights not finite ({bad})" if bad else None
        if why is None and load_state:
            try:
                state = _load_state(d)
            except ValueError as e:
                why = str(e)
        if why is None:
            found = d
            break
        notes.append(f"checkpoint {d.name} is incomplete or corrupt ({why})")
    if dirs and found is None:
        raise ConfigError(f"{root}: no complete checkpoint to resume from ({'; '.join(notes)}); "
                          "pass --overwrite (overwrite=true) to start afresh there, or choose "
                          "another out")
    if notes:
        warnings.warn(f"{root}: {'; '.join(notes)}; resuming from {found.name}"
                      if found else f"{root}: {'; '.join(notes)}; starting afresh",
                      CheckpointWarning, stacklevel=2)
    return found, state


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``<out_dir>/checkpoints`` (None: there is none);
    :func:`resume_point` without loading the trainer state."""
    return resume_point(out_dir, load_state=False)[0]


def load_trainer_state(ckpt: str | Path, optimizer=None, scheduler=None,
                       state: dict | None = None) -> dict:
    """Restore optimizer, scheduler and RNG states from a checkpoint (``state``: its trainer
    state, already loaded by :func:`resume_point`); returns the state dict."""
    if state is None:
        state = _load_state(Path(ckpt))
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state



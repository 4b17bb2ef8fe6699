"""Damaged checkpoints: the last two complete ones are kept; a corrupt latest one (truncated or
empty weights, a truncated or wrong trainer state, no checkpoint.json, non-finite weights) is
skipped with a warning and the run resumes exactly from the one before; a torn metrics line is
dropped; none complete is refused naming the directory; stale temporary folders are removed."""

import json

import pytest
import torch

from safetensors.torch import load_file, save_file

from rewardlab.cli.main import main
from rewardlab.config import ConfigError
from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.sft.trainer import SFTConfig, train_sft
from rewardlab.training.checkpoint import (checkpoint_problem, CheckpointWarning, latest_checkpoint,
                                           MANIFEST, non_finite_weights, save_checkpoint,
                                           write_manifest)
from rewardlab.training.metrics import read_metrics


def _cfg(out, **kw):
    cfg = SFTConfig(out=str(out), steps=9, batch_size=8, save_every=3, eval_every=0, log_every=1,
                    progress=False, lr=3e-3, warmup_steps=2, **kw)
    cfg.model.size = "tiny"
    cfg.data.n_train, cfg.data.n_test = 64, 0
    return cfg


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    res = train_sft(_cfg(out))
    return out, res


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _nan_weights(ck):
    """Non-finite weights in a checkpoint that is otherwise whole (same sizes, a fresh manifest)."""
    w = load_file(ck / "model.safetensors")
    k = next(k for k, t in w.items() if t.is_floating_point())
    w[k] = w[k].clone()
    w[k].view(-1)[0] = float("nan")
    save_file(w, ck / "model.safetensors", metadata={"format": "pt"})
    (ck / MANIFEST).unlink()
    write_manifest(ck, 6)


CORRUPTIONS = {
    "truncated model.safetensors": lambda ck: _truncate(ck / "model.safetensors"),
    "empty model.safetensors": lambda ck: (ck / "model.safetensors").write_bytes(b""),
    "truncated trainer_state.pt": lambda ck: _truncate(ck / "trainer_state.pt", 0.9),
    "trainer state without a step": lambda ck: torch.save({"rng": None}, ck / "trainer_state.pt"),
    "no checkpoint.json": lambda ck: (ck / MANIFEST).unlink(),
    "non-finite weights": _nan_weights,
    "latest pointing nowhere": lambda ck: (ck.parent / "latest").write_text("step_0000099"),
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(tmp_path, full_run, how):
    out = tmp_path / "run"
    part = train_sft(_cfg(out, stop_at=6))
    assert part["sft/stopped_at"] == 6
    root = out / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000003", "step_0000006"]  # keep=2
    CORRUPTIONS[how](root / "step_0000006")
    (root / ".tmp_step_0000007").mkdir()                 # a checkpoint write that was killed
    (root / ".tmp_step_0000007" / "model.safetensors").write_bytes(b"x")
    with (out / "metrics.jsonl").open("a") as f:          # a row cut short by a crash
        f.write('{"step": 7, "sft/lo')
    resumed_from = "step_0000006" if how == "latest pointing nowhere" else "step_0000003"
    with pytest.warns(CheckpointWarning, match=f"resuming from {resumed_from}") as rec:
        with pytest.warns(UserWarning, match="torn last line"):
            res = train_sft(_cfg(out))
    msg = " ".join(str(w.message) for w in rec if issubclass(w.category, CheckpointWarning))
    assert ("step_0000099" in msg) if how == "latest pointing nowhere" else (
        "step_0000006 is incomplete or corrupt" in msg)
    # exact resume from the complete checkpoint: the same final loss and weights as one run
    full_out, full = full_run
    assert res["sft/final_loss"] == pytest.approx(full["sft/final_loss"], abs=1e-6)
    ma, _ = load_model_and_tokenizer(full_out / "final")
    mb, _ = load_model_and_tokenizer(out / "final")
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ma.parameters(), mb.parameters()))
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "sft/loss" in r]
    assert steps == list(range(1, 10))                   # no torn row, no duplicate
    assert all(json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines())
    # afterwards: the two newest checkpoints, both complete, and the damaged one is gone
    kept = sorted(p.name for p in root.glob("step_*"))
    assert kept == ["step_0000006", "step_0000009"]
    assert all(checkpoint_problem(root / k) is None for k in kept)
    assert not list(root.glob(".tmp_step_*"))             # the stale temporary folder is gone


def test_checkpoint_problem_names_the_damage(tmp_path, tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy)
    opt = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, tok, opt)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000002", "step_0000003"]
    assert latest_checkpoint(tmp_path) == root / "step_0000003"
    _truncate(root / "step_0000003" / "model.safetensors", 0.99)
    assert "model.safetensors" in checkpoint_problem(root / "step_0000003")
    (root / "step_0000002" / "trainer_state.pt").unlink()
    assert checkpoint_problem(root / "step_0000002") == "no trainer_state.pt"
    with pytest.raises(ConfigError, match=f"{root}: no complete checkpoint to resume from"):
        latest_checkpoint(tmp_path)
    # a new save keeps it and drops the damaged ones
    save_checkpoint(tmp_path, 4, model, tok, opt)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000004"]
    ck = root / "step_0000004"
    listed = json.loads((ck / MANIFEST).read_text())
    assert listed["step"] == 4 and listed["files"]["model.safetensors"] == (
        ck / "model.safetensors").stat().st_size
    assert {"trainer_state.pt", "config.json"} <= set(listed["files"])
    assert non_finite_weights(ck) is None
    (ck / "tokenizer.json").write_text("{}")              # any listed file of another size
    assert "tokenizer.json" in checkpoint_problem(ck) and MANIFEST in checkpoint_problem(ck)


def test_no_complete_checkpoint_is_refused_by_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sft", "--out", str(out), "--set", "steps=4", "--set", "batch_size=4",
            "--set", "model.size=tiny", "--set", "data.n_train=16", "--set", "data.n_test=0",
            "--set", "progress=false", "--set", "eval_every=0", "--set", "save_every=1",
            "--set", "stop_at=2"]
    assert main(args) == 0
    capsys.readouterr()
    for ck in (out / "checkpoints").glob("step_*"):
        (ck / "model.safetensors").write_bytes(b"")
    assert main(args[:-2]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{out / 'checkpoints'}: no complete checkpoint" in " ".join(err.split())
    assert "--overwrite" in err and not (out / "final").exists()


def test_torn_metrics_line_in_the_middle_is_an_error(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "x\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(p)
    p.write_text('{"step": 1}\n{"step": 2, "x')
    assert read_metrics(p) == [{"step": 1}]


def test_cli_warnings_are_one_line(tmp_path):
    from rewardlab.cli.main import one_line_warning
    text = one_line_warning(f"{tmp_path}: checkpoint step_2 is incomplete\n (no checkpoint.json)",
                            CheckpointWarning, "engine.py", 120)
    assert text == f"warning: {tmp_path}: checkpoint step_2 is incomplete (no checkpoint.json)\n"

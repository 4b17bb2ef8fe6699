"""Damaged checkpoints: the last two complete ones are kept; a corrupt latest one is skipped with
a warning and the run resumes exactly from the one before; a torn metrics line is dropped."""

import json

import pytest
import torch

from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.sft.trainer import SFTConfig, train_sft
from rewardlab.training.checkpoint import (checkpoint_problem, CheckpointWarning, latest_checkpoint,
                                           save_checkpoint)
from rewardlab.training.metrics import read_metrics


def _cfg(out, **kw):
    cfg = SFTConfig(out=str(out), max_steps=9, batch_size=8, save_every=3, eval_every=0, log_every=1,
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


CORRUPTIONS = {
    "truncated model.safetensors": lambda ck: _truncate(ck / "model.safetensors"),
    "truncated trainer_state.pt": lambda ck: _truncate(ck / "trainer_state.pt", 0.9),
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
    with pytest.warns(CheckpointWarning, match="no complete checkpoint left: starting afresh"):
        assert latest_checkpoint(tmp_path) is None
    # a new save keeps it and drops the damaged ones
    save_checkpoint(tmp_path, 4, model, tok, opt)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000004"]


def test_torn_metrics_line_in_the_middle_is_an_error(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "x\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(p)
    p.write_text('{"step": 1}\n{"step": 2, "x')
    assert read_metrics(p) == [{"step": 1}]

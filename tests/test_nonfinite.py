"""A nan/inf loss or gradient norm skips the optimizer step (counted in train/skipped_steps);
``max_bad_steps`` in a row stop the run; no checkpoint or final model is ever saved with
non-finite weights."""

import math

import pytest
import torch

import rewardlab.rl.trainer as rl_trainer
import rewardlab.sft.trainer as sft_trainer
from rewardlab.config import load_config
from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.rl.config import RLConfig
from rewardlab.sft.trainer import SFTConfig, train_sft
from rewardlab.training.checkpoint import latest_checkpoint, save_checkpoint, TrainingDivergedError
from rewardlab.training.engine import Engine
from rewardlab.training.metrics import read_metrics


def _all_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_engine_skips_a_nan_step_and_stops_after_max_bad_steps(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    eng = Engine(tmp_path, "t", progress=False, tensorboard=False,
                 config=SFTConfig(max_bad_steps=2))
    before = [p.detach().clone() for p in lin.parameters()]
    (lin(torch.ones(1, 3)).sum() * math.nan).backward()
    gnorm = eng.optimizer_step(lin.parameters(), opt, 1.0)
    assert math.isnan(gnorm) and eng.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))   # no update
    assert all(p.grad is None for p in lin.parameters()) and not opt.state      # grads dropped
    lin(torch.ones(1, 3)).sum().backward()                                     # a good step
    eng.optimizer_step(lin.parameters(), opt, 1.0, loss=0.5)
    assert eng.bad_in_a_row == 0 and not torch.equal(before[0], lin.weight)
    lin(torch.ones(1, 3)).sum().backward()                 # finite gradients, but an inf loss
    eng.optimizer_step(lin.parameters(), opt, 1.0, loss=math.inf)
    assert eng.skipped_steps == 2 and eng.bad_in_a_row == 1
    with pytest.raises(TrainingDivergedError, match=r"2 optimizer steps in a row.*max_bad_steps=2"):
        eng.optimizer_step(lin.parameters(), opt, 1.0, loss=math.nan)


def test_no_checkpoint_of_non_finite_weights(tmp_path, tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy)
    with torch.no_grad():
        next(model.parameters())[0, 0] = math.inf
    with pytest.raises(TrainingDivergedError, match="not finite"):
        save_checkpoint(tmp_path, 5, model, tok)
    assert latest_checkpoint(tmp_path) is None
    assert not list((tmp_path / "checkpoints").glob("*step_*"))
    eng = Engine(tmp_path, "t", progress=False, tensorboard=False)
    with pytest.raises(TrainingDivergedError, match="final model"):
        eng.save_final(model, tok)
    assert not (tmp_path / "final").exists()


def _sft_cfg(tmp_path, **kw):
    cfg = SFTConfig(out=str(tmp_path / "sft"), steps=6, batch_size=8, save_every=2, eval_every=0,
                    log_every=1, progress=False, lr=3e-3, warmup_steps=2, **kw)
    cfg.model.size = "tiny"
    cfg.data.n_train, cfg.data.n_test = 64, 0
    return cfg


def _nan_loss_at(monkeypatch, calls):
    """Make sft_loss return nan on the given (1-based) calls."""
    real, n = sft_trainer.sft_loss, [0]

    def loss(model, batch, *args):
        n[0] += 1
        out = real(model, batch, *args)
        return out * math.nan if calls == "all" or n[0] in calls else out
    monkeypatch.setattr(sft_trainer, "sft_loss", loss)


def test_sft_skips_one_nan_step_and_finishes_with_finite_weights(tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, {3})
    res = train_sft(_sft_cfg(tmp_path))
    assert res["train/skipped_steps"] == 1 and math.isfinite(res["sft/final_loss"])
    rows = [r for r in read_metrics(tmp_path / "sft" / "metrics.jsonl") if "sft/loss" in r]
    assert [r["train/skipped_steps"] for r in rows] == [0, 0, 1, 1, 1, 1]
    assert rows[2]["sft/loss"] is None and math.isfinite(rows[3]["sft/loss"])   # NaN logged as null
    final, _ = load_model_and_tokenizer(tmp_path / "sft" / "final")
    assert _all_finite(final)
    ckpt, _ = load_model_and_tokenizer(latest_checkpoint(tmp_path / "sft"))
    assert _all_finite(ckpt)


def test_sft_persistent_nan_stops_with_a_clear_error(tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, "all")
    with pytest.raises(TrainingDivergedError) as e:
        train_sft(_sft_cfg(tmp_path, max_bad_steps=3))
    assert "3 optimizer steps in a row had a non-finite loss" in str(e.value)
    assert "max_bad_steps=3" in str(e.value)
    assert not (tmp_path / "sft" / "final").exists()
    ckpt = latest_checkpoint(tmp_path / "sft")                     # step 2: weights untouched
    assert ckpt is not None and _all_finite(load_model_and_tokenizer(ckpt)[0])


def _rl_args(tmp_path, policy, probs):
    return [f"out={tmp_path / 'rl'}", f"model.name_or_path={policy}",
            f"data.train_path={probs / 'train.jsonl'}", f"data.test_path={probs / 'test.jsonl'}",
            "steps=2", "prompts_per_step=4", "sampling.n=2", "sampling.max_new_tokens=12",
            "minibatch_size=4", "eval_every=0", "eval_k=0", "save_every=1", "progress=false",
            "algo=grpo", "kl.coef=0"]


def _nan_policy_loss_at(monkeypatch, calls):
    real, n = rl_trainer.ppo_policy_loss, [0]

    def loss(*a, **kw):
        n[0] += 1
        pl, pm = real(*a, **kw)
        return (pl * math.nan if calls == "all" or n[0] in calls else pl), pm
    monkeypatch.setattr(rl_trainer, "ppo_policy_loss", loss)


def test_rl_skips_a_nan_update(tmp_path, tiny_policy, problems_dir, monkeypatch):
    _nan_policy_loss_at(monkeypatch, {2})      # the second of four minibatch updates
    res = rl_trainer.train_rl(load_config(RLConfig, None, _rl_args(tmp_path, tiny_policy, problems_dir)))
    assert res["train/skipped_steps"] == 1
    assert _all_finite(load_model_and_tokenizer(tmp_path / "rl" / "final")[0])


def test_rl_persistent_nan_exits_1_with_one_line(tmp_path, tiny_policy, problems_dir, monkeypatch,
                                                 capsys):
    from rewardlab.cli.main import main
    _nan_policy_loss_at(monkeypatch, "all")
    args = _rl_args(tmp_path, tiny_policy, problems_dir) + ["max_bad_steps=3"]
    assert main(["rl"] + [a for kv in args for a in ("--set", kv)]) == 1
    err = capsys.readouterr().err.strip()
    assert "3 optimizer steps in a row had a non-finite loss" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "rl" / "final").exists()


def test_non_finite_numbers_are_written_as_null_never_as_nan_tokens(tmp_path):
    import json
    from rewardlab.io import read_jsonl, write_json, write_jsonl
    from rewardlab.training.metrics import MetricsLogger
    write_jsonl(tmp_path / "r.jsonl", [{"score": math.nan, "s": [1.0, math.inf, -math.inf], "ok": 0.5}])
    write_json(tmp_path / "r.json", {"m": {"loss": math.nan}})
    text = (tmp_path / "r.jsonl").read_text() + (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_jsonl(tmp_path / "r.jsonl") == [{"score": None, "s": [1.0, None, None], "ok": 0.5}]
    log = MetricsLogger(tmp_path / "run", tensorboard=False)
    log.log(1, {"loss": math.nan, "lr": 0.1})
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text(), parse_constant=lambda c: 1 / 0)
    assert row["loss"] is None and row["lr"] == 0.1


def test_atomic_files_follow_the_umask(tmp_path):
    import os
    from rewardlab.io import write_json
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644

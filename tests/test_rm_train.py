"""Reward-model training: data checks, loss goes down, exact resume, every objective runs."""

import json
import math
import random

import pytest

from rewardlab.data.testbed import generate_problems, oracle_label
from rewardlab.io import DataError
from rewardlab.reward_models.models import build_reward_model, load_reward_model
from rewardlab.reward_models.data import read_rm_rows
from rewardlab.reward_models.train import (RMTrainConfig, encode_rows, objective_loss, split_rows,
                                        train_reward_model)
from rewardlab.training.metrics import read_metrics


def _corrupt(rng, steps):
    """Change one computation step's result (and, half the time, the final answer)."""
    steps = list(steps)
    k = rng.randrange(max(1, len(steps) - 1))
    lhs, _, c = steps[k].rpartition(" ")
    steps[k] = f"{lhs} {int(c) + rng.choice([1, 2])}"
    if rng.random() < 0.5:
        ans = steps[-1].split()[-1]
        steps[-1] = f"#### {int(ans) + 1}"
    return steps, k


def _problems(n, seed=0):
    rng = random.Random(seed)
    return [(p, *_corrupt(rng, p.steps)) for p in generate_problems(n=n, seed=seed)]


def write_step_rows(path, n=24, seed=0, soft=False):
    rows = []
    for p, bad, _ in _problems(n, seed):
        for steps in (p.steps, bad):
            res = oracle_label(p.question, "\n".join(steps), p.answer)
            labels = [0.75 * y + 0.1 for y in res.labels] if soft else res.labels
            rows.append({"id": p.id, "question": p.question, "steps": steps,
                         "step_labels": labels, "outcome": int(res.outcome)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_pair_rows(path, n=24, seed=0, step_pref=False):
    rows = []
    for p, bad, k in _problems(n, seed):
        if step_pref:
            rows.append({"question": p.question, "prefix": p.steps[:k],
                         "chosen_step": p.steps[k], "rejected_step": bad[k]})
        else:
            rows.append({"question": p.question, "chosen": p.steps, "rejected": bad})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tmp_path, tiny_policy, data, **kw):
    base = dict(model=str(tiny_policy), data=[str(data)], out=str(tmp_path / "run"), batch_size=8,
                epochs=1, lr=3e-3, warmup_ratio=0.0, progress=False, device="cpu", log_every=1,
                eval_split=0.2)
    base.update(kw)
    return RMTrainConfig(**base)


# ------------------------------------------------------------------ data checks

def test_rows_are_checked_with_file_line_and_field(tmp_path):
    good = {"question": "q", "steps": ["1 + 1 = 2", "#### 2"], "step_labels": [1, 1], "outcome": 1}
    cases = [
        ('{"question": "q"', "malformed JSON", None),
        (json.dumps({**good, "step_labels": [1]}), "1 labels for 2 steps", "step_labels"),
        (json.dumps({**good, "step_labels": [1, 1.5]}), r"label in \[0, 1\]", "step_labels"),
        (json.dumps({**good, "steps": "1 + 1 = 2"}), "expected list", "steps"),
        (json.dumps({**good, "steps": ["a", 3], "step_labels": [1, 1]}), "step 2", "steps"),
        (json.dumps({k: v for k, v in good.items() if k != "step_labels"}), "missing",
         "step_labels"),
    ]
    for i, (bad, msg, fld) in enumerate(cases):
        f = tmp_path / f"bad{i}.jsonl"
        f.write_text(json.dumps(good) + "\n" + bad + "\n")
        with pytest.raises(DataError, match=msg) as e:
            read_rm_rows(f, "prm")
        assert e.value.line == 2 and f"{f}:2" in str(e.value) and e.value.field == fld
    f = tmp_path / "orm.jsonl"
    f.write_text(json.dumps({"question": "q", "steps": ["#### 2"], "outcome": 2}) + "\n")
    with pytest.raises(DataError, match="outcome"):
        read_rm_rows(f, "orm")
    f.write_text(json.dumps({"question": "q", "chosen": ["#### 2"]}) + "\n")
    with pytest.raises(DataError, match="rejected"):
        read_rm_rows(f, "bt")
    f.write_text(json.dumps({"question": "q", "prefix": [], "chosen_step": "",
                             "rejected_step": "x"}) + "\n")
    with pytest.raises(DataError, match="chosen_step"):
        read_rm_rows(f, "prm", preference=True)


def test_split_rows_is_seeded_and_disjoint():
    rows = list(range(20))
    tr, ev = split_rows(rows, 0.2, seed=3)
    assert len(ev) == 4 and sorted(tr + ev) == rows
    assert split_rows(rows, 0.2, seed=3) == (tr, ev)
    assert split_rows(rows, 0.0, seed=3) == (rows, [])


# ------------------------------------------------------------------ training

def test_prm_training_reduces_loss_and_writes_a_run(tmp_path, tiny_policy):
    data = write_step_rows(tmp_path / "prm.jsonl")
    cfg = _cfg(tmp_path, tiny_policy, data, kind="prm", epochs=2)
    rows = read_rm_rows(data, "prm")
    fresh = build_reward_model(tiny_policy, cfg.spec(), device="cpu", seed=cfg.seed)
    items, _ = encode_rows(fresh, rows, cfg)
    before = objective_loss(fresh, items, cfg)
    m = train_reward_model(cfg)
    trained = load_reward_model(tmp_path / "run" / "final", device="cpu")
    after = objective_loss(trained, encode_rows(trained, rows, cfg)[0], cfg)
    assert after < before - 0.05, (before, after)
    assert m["rm/finished"] == 1.0 and m["rm/steps"] == m["rm/total_steps"] == 10
    for k in ("eval/step_auroc", "eval/step_f1", "eval/step_ece", "eval/loss", "rm/final_loss"):
        assert k in m
    run = tmp_path / "run"
    assert (run / "tb").is_dir() and (run / "rm_summary.json").exists()
    logged = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in logged if "rm/loss" in r] == list(range(1, 11))
    ckpt = run / "checkpoints" / "step_0000010"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "rewardlab_rm.json",
              "trainer_state.pt"):
        assert (ckpt / f).exists(), f
    # the model card: what it is, its base, its data, its metrics, the command
    card = (run / "final" / "README.md").read_text()
    assert "process reward model" in card and f"Base model: `{tiny_policy}`" in card
    assert f"`{data}`" in card and "0.2 of the rows held out" in card
    auroc = next(line for line in card.splitlines() if line.startswith("| eval/step_auroc |"))
    assert float(auroc.split("|")[2]) == pytest.approx(m["eval/step_auroc"], abs=1e-3)
    assert "## How it was made" in card and "pytest" in card   # this process's command line
    assert "AutoModelForCausalLM" in card and "Objective: prm; 10 optimizer steps" in card


def test_interrupted_run_resumes_exactly(tmp_path, tiny_policy):
    data = write_step_rows(tmp_path / "prm.jsonl", n=16)
    kw = dict(kind="prm", form="head", tag="<extra_0>", epochs=2, grad_accum=2, batch_size=4,
              warmup_ratio=0.2)
    full = train_reward_model(_cfg(tmp_path / "a", tiny_policy, data, **kw))
    part = train_reward_model(_cfg(tmp_path / "b", tiny_policy, data, stop_after=3, **kw))
    assert part["rm/finished"] == 0.0 and part["rm/steps"] == 3
    assert not (tmp_path / "b" / "run" / "final").exists()
    resumed = train_reward_model(_cfg(tmp_path / "b", tiny_policy, data, **kw))
    assert resumed["rm/steps"] == full["rm/steps"] == full["rm/total_steps"]
    assert resumed["rm/final_loss"] == pytest.approx(full["rm/final_loss"], abs=1e-6)
    qs, steps = ["sam has 3 apples . buys 4 more . how many apples ?"], [["3 + 4 = 7", "#### 7"]]
    sa = load_reward_model(tmp_path / "a" / "run" / "final", device="cpu").score(qs, steps)
    sb = load_reward_model(tmp_path / "b" / "run" / "final", device="cpu").score(qs, steps)
    assert sa[0].step_scores == pytest.approx(sb[0].step_scores, abs=1e-6)
    losses = [r["rm/loss"] for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")
              if "rm/loss" in r]
    assert len(losses) == full["rm/total_steps"]                  # no duplicated rows


@pytest.mark.parametrize("kind,extra,key", [
    ("orm", dict(orm_loss="last"), "eval/outcome_auroc"),
    ("orm", dict(), "eval/outcome_ece"),
    ("bt", dict(margin=0.5, centering=0.01), "eval/pair_acc"),
    ("prm_pref", dict(), "eval/pair_acc"),
    ("prm_soft", dict(form="lm", tag="<|prm_label|>"), "eval/step_ece"),
])
def test_every_objective_trains(tmp_path, tiny_policy, kind, extra, key):
    if kind in ("orm", "prm_soft"):
        data = write_step_rows(tmp_path / "d.jsonl", n=12, soft=kind == "prm_soft")
    else:
        data = write_pair_rows(tmp_path / "d.jsonl", n=16, step_pref=kind == "prm_pref")
    cfg_kind = {"prm_pref": "prm", "prm_soft": "prm"}.get(kind, kind)
    cfg = _cfg(tmp_path, tiny_policy, data, kind=cfg_kind, preference=kind == "prm_pref",
               steps=4, **extra)
    m = train_reward_model(cfg)
    assert key in m and math.isfinite(m["rm/final_loss"])
    assert m["rm/steps"] == m["rm/total_steps"] == 4                 # steps sets the run
    rm = load_reward_model(tmp_path / "run", device="cpu")            # a run dir loads final/
    assert rm.kind == cfg_kind
    if kind == "prm_soft":
        assert len(rm.tokenizer) == rm.backbone.get_input_embeddings().weight.shape[0]


def test_config_errors_are_loud(tmp_path, tiny_policy):
    from rewardlab.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="preference"):
        load_config(RMTrainConfig, None, ["kind=bt", "preference=true"])
    with pytest.raises(ConfigError, match="orm_loss"):
        load_config(RMTrainConfig, None, ["orm_loss=first"])
    with pytest.raises(ConfigError, match="no training data"):
        train_reward_model(RMTrainConfig(out=str(tmp_path / "x"), progress=False))

"""`rewardlab pairs` and `rewardlab po`: pairs from labelled samples (outcome, Step-DPO, KTO
unpaired), the trainer on a tiny testbed policy for every loss, exact resume, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rewardlab.cli.main import main
from rewardlab.data.testbed import make_splits, TestbedConfig
from rewardlab.io import DataError, write_jsonl
from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.preference.losses import PREFERENCE_LOSSES, sequence_logps
from rewardlab.preference.pairs import (first_error, make_pair_file, outcome_pairs, read_pairs,
                                        step_pairs, unpaired_rows)
from rewardlab.preference.trainer import POConfig, train_po
from rewardlab.reward_models.labeling import get_labeler
from rewardlab.reward_models.pipeline import corrupt_rows, label_rows
from rewardlab.training.metrics import read_metrics

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ------------------------------------------------------------------------------ pure functions

def test_sequence_logps_is_the_loop_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    labels = ids.clone()
    labels[:, :2] = -100                       # prompt
    labels[1, 4] = -100                        # padding
    logps, lengths = sequence_logps(logits, labels)
    lp = torch.log_softmax(logits, -1)
    want = [sum(lp[b, t - 1, ids[b, t]].item() for t in range(1, 5) if labels[b, t] != -100)
            for b in range(2)]
    assert logps.tolist() == pytest.approx(want, abs=1e-5)
    assert lengths.tolist() == [3, 2]
    longer = torch.cat([logits, torch.randn(2, 3, 7)], 1)         # more padding: same result
    padded = torch.cat([labels, torch.full((2, 3), -100)], 1)
    assert sequence_logps(longer, padded)[0].tolist() == pytest.approx(logps.tolist(), abs=1e-6)


def test_step_dpo_is_dpo_on_step_pairs():
    x = [torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5]), torch.tensor([-1.2, -2.2]),
         torch.tensor([-2.5, -1.0])]
    from rewardlab.preference.losses import dpo_loss, PreferenceInputs, PreferenceLossConfig
    a, _ = PREFERENCE_LOSSES.get("step_dpo")(PreferenceInputs(*x), PreferenceLossConfig(beta=0.3))
    b, _ = dpo_loss(*x, beta=0.3)
    assert a.item() == pytest.approx(b.item())


def _row(pid, steps, labels, outcome=None):
    return {"id": pid, "question": f"q{pid}", "gold": "0", "steps": steps, "step_labels": labels,
            "outcome": int(min(labels) > 0.5) if outcome is None else outcome}


def test_outcome_pairs_hand_case():
    rows = [_row("a", ["1", "#### 1"], [1, 1]), _row("a", ["2", "#### 2"], [0, 0]),
            _row("a", ["2", "#### 2"], [0, 0]),                        # duplicate: counted once
            _row("a", ["3", "#### 3"], [1, 0]), _row("b", ["1"], [1])]  # b: no wrong response
    pairs = outcome_pairs(rows)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("1\n#### 1", "2\n#### 2"),
                                                             ("1\n#### 1", "3\n#### 3")]
    assert all(p["kind"] == "outcome" and p["prefix"] == [] for p in pairs)
    assert len(outcome_pairs(rows, max_per_problem=1)) == 1
    assert len(outcome_pairs(rows, label="step_labels")) == 2
    kto = unpaired_rows(rows)
    assert [r["label"] for r in kto] == [True, False, False, True]


def test_step_pairs_first_error():
    assert first_error([1, 0.9, 0.2, 1]) == 2 and first_error([1, 1]) is None
    rows = [_row("a", ["x", "y", "z"], [1, 1, 1]),
            _row("a", ["x", "w", "z"], [1, 0, 0]),      # first error at k=1, after prefix [x]
            _row("a", ["v", "y"], [0, 1]),              # first error at k=0, after the empty prefix
            _row("a", ["x", "w2"], [1, 0.4])]
    pairs = step_pairs(rows)
    got = {(tuple(p["prefix"]), p["chosen"], p["rejected"]) for p in pairs}
    assert got == {(("x",), "y", "w"), ((), "x", "v"), (("x",), "y", "w2")}
    assert all(p["kind"] == "step" for p in pairs)


# ------------------------------------------------------------------------------ data fixtures

@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Oracle-labelled rows: each testbed problem's right solution and corrupted copies of it."""
    train, _ = make_splits(TestbedConfig(max_ops=2), 12, 0, seed=0)
    oracle = get_labeler("oracle")
    base = label_rows([{"id": p.id, "question": p.question, "gold": p.answer, "steps": p.steps,
                        "response": p.solution, "outcome": 1} for p in train], oracle)
    rows = base + corrupt_rows(base, oracle, rate=2.0, seed=0)
    path = tmp_path_factory.mktemp("samples") / "labelled.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.fixture(scope="module")
def pair_files(samples, tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    s1 = make_pair_file(samples, d / "outcome.jsonl", "outcome")
    s2 = make_pair_file(samples, d / "step.jsonl", "step")
    assert s1["n_pairs"] > 8 and s2["n_pairs"] > 8
    return {"outcome": d / "outcome.jsonl", "step": d / "step.jsonl"}


def _cfg(out, pairs, loss="dpo", **kw):
    kw = {"steps": 4, "batch_size": 4, "save_every": 2, "eval_every": 0, "log_every": 1,
          "progress": False, "lr": 1e-3, "warmup_steps": 1, "max_len": 48, **kw}
    cfg = POConfig(out=str(out), loss=loss, pairs=str(pairs), **kw)
    cfg.model.size = "tiny"
    cfg.model.device = "cpu"
    return cfg


def test_pairs_cli_writes_outcome_and_step_pairs(samples, tmp_path, capsys):
    assert main(["pairs", "--input", str(samples), "--out", str(tmp_path / "p.jsonl"),
                 "--kind", "step"]) == 0
    rows = read_pairs(tmp_path / "p.jsonl")
    assert rows and all(r["kind"] == "step" for r in rows)
    assert "step rows" in capsys.readouterr().out


def test_pairs_files_train_a_bradley_terry_rm_as_they_are(samples, tmp_path):
    """`rewardlab pairs` writes responses as texts after a prefix of steps; the BT reader takes
    them as step lists (prefix + the response's lines), so pairs → train-rm --kind bt works."""
    from rewardlab.reward_models.data import read_rm_rows
    for kind in ("outcome", "step"):
        out = tmp_path / f"{kind}.jsonl"
        assert main(["pairs", "--input", str(samples), "--out", str(out), "--kind", kind]) == 0
        raw = read_pairs(out)
        rows = read_rm_rows(out, "bt")
        assert len(rows) == len(raw)
        for r, p in zip(rows, raw):
            assert r.chosen == list(p["prefix"]) + p["chosen"].split("\n")
            assert r.rejected == list(p["prefix"]) + p["rejected"].split("\n")
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"question": "q", "chosen": "  ", "rejected": "1 + 1 = 2"}])
    with pytest.raises(DataError, match="bad.jsonl.*chosen"):
        read_rm_rows(bad, "bt")


# ------------------------------------------------------------------------------ the trainer

@pytest.mark.parametrize("loss", ["dpo", "ipo", "kto", "orpo", "simpo", "step_dpo"])
def test_every_loss_trains(tmp_path, pair_files, loss):
    pairs = pair_files["step" if loss == "step_dpo" else "outcome"]
    res = train_po(_cfg(tmp_path / loss, pairs, loss, eval_pairs=str(pairs)))
    assert all(torch.isfinite(torch.tensor(v)) for k, v in res.items() if isinstance(v, float))
    assert "po/rewards/chosen" in res and "eval/po/loss" in res
    if loss in ("dpo", "ipo", "step_dpo"):        # the reference is the starting policy
        first = read_metrics(tmp_path / loss / "metrics.jsonl")[0]
        assert first["po/rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    m0, _ = load_model_and_tokenizer(tmp_path / loss / "init")
    m1, _ = load_model_and_tokenizer(tmp_path / loss / "final")
    changed = [not torch.equal(a, b) for a, b in zip(m0.parameters(), m1.parameters())]
    assert sum(changed) / len(changed) > 0.9


def test_resume_is_exact(tmp_path, pair_files):
    full = train_po(_cfg(tmp_path / "full", pair_files["outcome"], steps=6))
    part = train_po(_cfg(tmp_path / "part", pair_files["outcome"], steps=6, stop_at=3))
    assert part["po/stopped_at"] == 3
    res = train_po(_cfg(tmp_path / "part", pair_files["outcome"], steps=6))
    assert res["po/loss"] == pytest.approx(full["po/loss"], abs=1e-6)
    ma, _ = load_model_and_tokenizer(tmp_path / "full" / "final")
    mb, _ = load_model_and_tokenizer(tmp_path / "part" / "final")
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ma.parameters(), mb.parameters()))
    steps = [r["step"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if "po/loss" in r]
    assert steps == list(range(1, 7))


# ------------------------------------------------------------------------------ bad input

GOOD = {"question": "q", "chosen": "a", "rejected": "b"}
BAD_PAIRS = {
    "malformed JSON": ('{"question": "q", "chosen": ', None, "malformed JSON"),
    "missing rejected": (json.dumps({"question": "q", "chosen": "a"}), "rejected", "missing"),
    "missing question": (json.dumps({"chosen": "a", "rejected": "b"}), "question", "missing"),
    "empty chosen": (json.dumps({**GOOD, "chosen": "  "}), "chosen", "empty"),
    "identical": (json.dumps({**GOOD, "rejected": "a"}), "rejected", "identical"),
    "chosen not a string": (json.dumps({**GOOD, "chosen": 3}), "chosen", "expected string"),
    "unknown kind": (json.dumps({**GOOD, "kind": "x"}), "kind", "expected outcome, step"),
}


@pytest.mark.parametrize("case", list(BAD_PAIRS))
def test_bad_pairs_exit_2_naming_file_line_field(tmp_path, case, capsys):
    line, field, msg = BAD_PAIRS[case]
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    out = tmp_path / "run"
    assert main(["po", "--pairs", str(path), "--out", str(out), "--set", "model.size=tiny"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}:2" in err and msg in err
    if field:
        assert f"field '{field}'" in err
    assert not out.exists()                    # refused before any work


def test_empty_pairs_file_and_missing_reference(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["po", "--pairs", str(empty), "--out", str(tmp_path / "r1")]) == 2
    assert "file is empty" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    assert main(["po", "--pairs", str(good), "--out", str(tmp_path / "r2"), "--set",
                 f"ref_model={tmp_path / 'nowhere'}"]) == 2
    assert "needs a reference model" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "r2").exists()
    # ORPO needs none: the same setting does not stop it at that check
    assert main(["po", "--pairs", str(empty), "--loss", "orpo", "--out", str(tmp_path / "r3")]) == 2


def test_step_dpo_refuses_outcome_pairs(tmp_path, pair_files, capsys):
    assert main(["po", "--loss", "step_dpo", "--pairs", str(pair_files["outcome"]),
                 "--out", str(tmp_path / "r")]) == 2
    assert "step pairs" in capsys.readouterr().err


BAD_SAMPLES = {
    "missing steps": ({"question": "q", "outcome": 1}, "steps"),
    "missing outcome": ({"question": "q", "steps": ["a"]}, "outcome"),
    "outcome not a number": ({"question": "q", "steps": ["a"], "outcome": "yes"}, "outcome"),
    "empty step": ({"question": "q", "steps": ["a", " "], "outcome": 1}, "steps"),
}


@pytest.mark.parametrize("case", list(BAD_SAMPLES))
def test_pairs_bad_samples_exit_2_and_write_nothing(tmp_path, case, capsys):
    row, field = BAD_SAMPLES[case]
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"question": "q", "steps": ["a"], "outcome": 1}) + "\n"
                    + json.dumps(row) + "\n")
    out = tmp_path / "p.jsonl"
    assert main(["pairs", "--input", str(path), "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}:2: field '{field}'" in err
    assert not out.exists() and not list(tmp_path.glob(".p.jsonl*"))


def test_pairs_with_no_pair_at_all_is_an_error(tmp_path):
    path = tmp_path / "s.jsonl"
    write_jsonl(path, [_row("a", ["1"], [1]), _row("b", ["2"], [0])])
    with pytest.raises(DataError, match="no outcome pairs"):
        make_pair_file(path, tmp_path / "p.jsonl")
    assert not (tmp_path / "p.jsonl").exists()


def test_strict_pairs_name_the_problem_without_a_pair(tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    write_jsonl(path, [_row("a", ["1"], [1]), _row("a", ["2"], [0]), _row("b", ["3"], [1])])
    out = tmp_path / "p.jsonl"
    assert main(["pairs", "--input", str(path), "--out", str(out)]) == 0      # b skipped, counted
    assert "1 without a pair" in " ".join(capsys.readouterr().out.split())
    out.unlink()
    assert main(["pairs", "--input", str(path), "--out", str(out), "--strict"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}:3: problem 'b' has no outcome pair" in err and not out.exists()


def test_pairs_from_orm_and_prm_scores(tmp_path):
    rows = [{**_row("a", ["x", "y"], [1, 1]), "score": 0.9, "step_scores": [0.9, 0.8]},
            {**_row("a", ["x", "z"], [1, 0]), "score": 0.2, "step_scores": [0.9, 0.1]}]
    assert [p["chosen"] for p in outcome_pairs(rows, label="score")] == ["x\ny"]
    assert [(p["prefix"], p["chosen"], p["rejected"]) for p in step_pairs(rows, "step_scores")] == \
        [(["x"], "y", "z")]


def test_print_config(capsys):
    assert main(["po", "--loss", "orpo", "--print-config"]) == 0
    assert "loss: orpo" in capsys.readouterr().out
    assert main(["po-iterative", "--design", "step_dpo", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "kind: step" in text and "loss: step_dpo" in text


def test_cli_subprocess_bad_pairs_exit_2(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({**GOOD, "rejected": ""}) + "\n")
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-m", "rewardlab", "po", "--pairs", str(path), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2
    assert f"{path}:1" in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ iterative mode

def _fake_sampler(model, tok, problems, n, sampling=None, seed=0, style="gsm8k", prompt_fn=None,
                  step_split="lines"):
    """Stands in for the policy: per problem, its right solution and n-1 corrupted copies."""
    import random
    from rewardlab.reward_models.pipeline import corrupt_steps
    rng = random.Random(seed)
    rows = []
    for p in problems:
        for j in range(n):
            steps = list(p.steps) if j == 0 else (corrupt_steps(p.steps, rng) or list(p.steps))
            rows.append({"id": p.id, "sample": j, "question": p.question, "gold": p.answer,
                         "response": "\n".join(steps), "answer": None, "steps": steps,
                         "outcome": int(steps == list(p.steps))})
    return rows


@pytest.mark.parametrize("design", ["dpo", "step_dpo"])
def test_iterative_rounds_resume_and_budget(tmp_path, monkeypatch, design):
    import rewardlab.preference.iterative as it
    monkeypatch.setattr(it, "sample_responses", _fake_sampler)
    cfg = it.po_design_config(design, out=str(tmp_path / "it"), seed=0, policy="testbed",
                              train_path="", test_path="", n_samples=24, n=3, rounds=2,
                              max_new_tokens=16,
                              overrides=["po.model.size=tiny", "po.model.device=cpu",
                                         "po.data.n_train=20", "po.data.n_test=2",
                                         "po.data.testbed.max_ops=2", "po.batch_size=4",
                                         "po.max_len=48", "po.save_every=0", "po.eval_every=0"])
    assert cfg.rounds * cfg.problems_per_round * cfg.sampling.n == 24
    res = it.train_po_iterative(cfg)
    assert res["po/n_samples"] == 24 and res["po/n_pairs"] > 0 and "eval/accuracy" in res
    rows = read_metrics(tmp_path / "it" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1] and all("eval/accuracy" in r for r in rows)
    kinds = {r["kind"] for r in read_pairs(tmp_path / "it" / "round_1" / "pairs.jsonl")}
    assert kinds == {"step" if design == "step_dpo" else "outcome"}
    import yaml
    r1 = yaml.safe_load((tmp_path / "it" / "round_1" / "config.yaml").read_text())
    assert r1["ref_model"] == str(tmp_path / "it" / "round_0" / "final")   # ref: previous
    # a rerun skips the finished rounds and gives the same result
    monkeypatch.setattr(it, "train_po", lambda cfg: pytest.fail("a finished round was retrained"))
    again = it.train_po_iterative(cfg)
    assert {k: v for k, v in again.items() if k != "po/wall_s"} == \
        {k: v for k, v in res.items() if k != "po/wall_s"}


# ------------------------------------------------------------------------------ formats

def test_kto_on_unpaired_rows_and_trl_standard_pairs(tmp_path, samples):
    s = make_pair_file(samples, tmp_path / "kto.jsonl", "unpaired")
    rows = read_pairs(tmp_path / "kto.jsonl")
    assert s["n_pairs"] == len(rows) and {r["label"] for r in rows} == {True, False}
    res = train_po(_cfg(tmp_path / "kto", tmp_path / "kto.jsonl", "kto", steps=2))
    assert "po/kl" in res and torch.isfinite(torch.tensor(res["po/loss"]))
    # TRL's standard format (prompt used verbatim, EOS after the completions): the same
    # sequences, so the same losses, as rewardlab's format
    for kind in ("outcome", "step"):
        make_pair_file(samples, tmp_path / f"{kind}.jsonl", kind)
        make_pair_file(samples, tmp_path / f"{kind}_trl.jsonl", kind, fmt="trl")
        trl = read_pairs(tmp_path / f"{kind}_trl.jsonl")
        assert "prompt" in trl[0] and "question" not in trl[0]
        a = train_po(_cfg(tmp_path / f"a_{kind}", tmp_path / f"{kind}.jsonl", "simpo", steps=2))
        b = train_po(_cfg(tmp_path / f"b_{kind}", tmp_path / f"{kind}_trl.jsonl", "simpo", steps=2))
        assert a["po/loss"] == pytest.approx(b["po/loss"], abs=1e-6)


def test_conversational_rows_use_the_chat_template(tiny_policy):
    from rewardlab.models.loading import load_tokenizer
    from rewardlab.preference.trainer import row_texts
    tok = load_tokenizer(tiny_policy)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    row = {"prompt": [{"role": "user", "content": "1 + 1 ?"}],
           "chosen": [{"role": "assistant", "content": "2"}],
           "rejected": [{"role": "assistant", "content": "3"}], "kind": "outcome", "chat": True,
           "prefix": [], "line": 1}
    prompt, comps, eos = row_texts(row, tok, None)
    assert prompt == "<user>1 + 1 ?</s><assistant>" and comps == ["2</s>", "3</s>"] and not eos
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        row_texts(row, tok, None)


MORE_BAD = {
    "mixed pairs and unpaired": (json.dumps({"question": "q", "completion": "a", "label": True}),
                                 None, "mixes pairs and unpaired"),
    "label not a bool": (json.dumps({"question": "q", "completion": "a", "label": 1}), "label",
                         "expected boolean"),
    "empty message": (json.dumps({"prompt": [{"role": "user", "content": "q"}],
                                  "chosen": [{"role": "assistant", "content": ""}],
                                  "rejected": [{"role": "assistant", "content": "b"}]}),
                      "chosen", "empty"),
    "string prompt, message completions": (json.dumps({"prompt": "q", "chosen": [
        {"role": "assistant", "content": "a"}], "rejected": "b"}), "chosen", "all be strings"),
}


@pytest.mark.parametrize("case", list(MORE_BAD))
def test_more_bad_rows(tmp_path, case):
    line, field, msg = MORE_BAD[case]
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(DataError, match=msg) as e:
        read_pairs(path)
    assert e.value.line == 2 and e.value.field == field


def test_unpaired_rows_need_kto(tmp_path, capsys):
    path = tmp_path / "kto.jsonl"
    path.write_text(json.dumps({"question": "q", "completion": "a", "label": True}) + "\n")
    assert main(["po", "--pairs", str(path), "--loss", "dpo", "--out", str(tmp_path / "r")]) == 2
    assert "loss kto only" in " ".join(capsys.readouterr().err.split())


def test_shipped_po_configs_load():
    from rewardlab.config import load_config
    from rewardlab.preference.iterative import IterativePOConfig
    root = Path(__file__).resolve().parents[1] / "configs" / "po"
    assert load_config(POConfig, root / "dpo.yaml").loss == "dpo"
    assert load_config(IterativePOConfig, root / "iterative_step_dpo.yaml").po.loss == "step_dpo"

"""TRL's data formats: read (auto-detected or --format), written by `label --format trl`, and a TRL
stepwise file training a PRM as it is; gsm8k/math500 falling back to the hub."""

import json
import sys
import types

import pytest

from rewardlab.cli.main import main
from rewardlab.data import datasets as ds
from rewardlab.data.formats import (FORMATS, read_records, to_trl_preference, to_trl_stepwise)
from rewardlab.data.testbed import generate_problems, oracle_label
from rewardlab.io import DataError
from rewardlab.reward_models.data import read_rm_rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trl_stepwise_rows(n=10):
    """Testbed problems as TRL stepwise rows: a right solution and one with a wrong answer."""
    rows = []
    for p in generate_problems(n=n, seed=7):
        wrong = p.steps[:-1] + [f"#### {int(p.answer) + 1}"]
        for steps in (p.steps, wrong):
            res = oracle_label(p.question, "\n".join(steps), p.answer)
            rows.append({"prompt": p.question, "completions": steps,
                         "labels": [bool(v) for v in res.labels]})
    return rows


def test_trl_stepwise_becomes_native_rows(tmp_path):
    f = _write(tmp_path / "trl.jsonl", [
        {"prompt": "Which is larger, 9.8 or 9.11?",
         "completions": ["The fractional parts are .8 and .11.", "So 9.11 is larger."],
         "labels": [True, False]}])
    [row] = read_records(f, "prm")
    assert row == {"question": "Which is larger, 9.8 or 9.11?",
                   "steps": ["The fractional parts are .8 and .11.", "So 9.11 is larger."],
                   "step_labels": [1.0, 0.0], "outcome": 0.0}
    [prm] = read_rm_rows(f, "prm")
    assert prm.steps == row["steps"] and prm.step_labels == [1.0, 0.0] and prm.source[1] == 1
    [orm] = read_rm_rows(f, "orm")              # the outcome: every step right
    assert orm.outcome == 0.0


def test_trl_preference_standard_conversational_and_implicit(tmp_path):
    f = _write(tmp_path / "pref.jsonl", [
        {"prompt": "1 + 2 * 3 = ?", "chosen": "2 * 3 = 6\n1 + 6 = 7", "rejected": "1 + 2 = 3\n3 * 3 = 9"},
        {"prompt": [{"role": "user", "content": "1 + 1 = ?"}],
         "chosen": [{"role": "assistant", "content": "1 + 1 = 2\n\n#### 2"}],
         "rejected": [{"role": "assistant", "content": "#### 3"}]},
        {"chosen": [{"role": "user", "content": "2 + 2 = ?"}, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "2 + 2 = ?"}, {"role": "assistant", "content": "5"}]},
        {"chosen": "What is 3 + 3? It is 6.", "rejected": "What is 3 + 3? It is 7."},
    ])
    rows = read_rm_rows(f, "bt")
    assert [(r.question, r.chosen, r.rejected) for r in rows] == [
        ("1 + 2 * 3 = ?", ["2 * 3 = 6", "1 + 6 = 7"], ["1 + 2 = 3", "3 * 3 = 9"]),
        ("1 + 1 = ?", ["1 + 1 = 2", "#### 2"], ["#### 3"]),     # blank lines split paragraphs
        ("2 + 2 = ?", ["4"], ["5"]),
        ("What is 3 + 3? It is", ["6."], ["7."]),
    ]


def test_trl_unpaired_and_prompt_completion(tmp_path):
    f = _write(tmp_path / "kto.jsonl", [
        {"prompt": "1 + 1 = ?", "completion": "1 + 1 = 2\n#### 2", "label": True},
        {"prompt": [{"role": "user", "content": "1 + 1 = ?"}],
         "completion": [{"role": "assistant", "content": "#### 3"}], "label": False}])
    rows = read_rm_rows(f, "orm")
    assert [(r.question, r.steps, r.outcome) for r in rows] == [
        ("1 + 1 = ?", ["1 + 1 = 2", "#### 2"], 1.0), ("1 + 1 = ?", ["#### 3"], 0.0)]
    pc = _write(tmp_path / "pc.jsonl", [{"prompt": "1 + 1 = ?", "completion": "#### 2"}])
    assert read_records(pc, "solutions") == [
        {"question": "1 + 1 = ?", "steps": ["#### 2"], "response": "#### 2"}]
    with pytest.raises(DataError, match=r"pc\.jsonl:1: row matches no accepted format"):
        read_rm_rows(pc, "orm")                   # no label: nothing to train an ORM on


def test_unknown_format_lists_fields_found_and_formats_accepted(tmp_path, capsys):
    f = _write(tmp_path / "odd.jsonl", [{"prompt": "q", "completions": ["a"], "labels": [True]},
                                        {"input": "q", "output": "a", "score": 1}])
    with pytest.raises(DataError) as e:
        read_rm_rows(f, "prm")
    msg = str(e.value)
    assert "odd.jsonl:2" in msg and "Fields found: input, output, score" in msg
    assert "trl-stepwise {prompt, completions, labels}" in msg and "rewardlab-steps" in msg
    rc = main(["train-rm", "--kind", "prm", "--data", str(f), "--out", str(tmp_path / "r"),
               "--set", "progress=false"])
    assert rc == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "odd.jsonl:2" in err and "Fields found: input, output, score" in err


def test_bad_trl_rows_name_file_line_and_field(tmp_path):
    cases = [({"prompt": "q", "completions": ["a", "b"], "labels": [True]}, "labels"),
             ({"prompt": "q", "completions": ["a"], "labels": ["yes"]}, "labels"),
             ({"prompt": "q", "completions": "a", "labels": [True]}, "completions"),
             ({"prompt": 3, "completions": ["a"], "labels": [True]}, "prompt"),
             ({"prompt": "", "completions": ["a"], "labels": [True]}, "prompt")]
    for row, field in cases:
        f = _write(tmp_path / "bad.jsonl", [_trl_stepwise_rows(1)[0], row])
        with pytest.raises(DataError, match=rf"bad\.jsonl:2: field '{field}'"):
            read_rm_rows(f, "prm")


def test_format_option_forces_a_format(tmp_path, capsys):
    f = _write(tmp_path / "trl.jsonl", _trl_stepwise_rows(1))
    assert len(read_rm_rows(f, "prm", fmt="trl")) == 2
    assert len(read_rm_rows(f, "prm", fmt="trl-stepwise")) == 2
    with pytest.raises(DataError, match="matches no accepted format"):
        read_rm_rows(f, "prm", fmt="rewardlab")
    with pytest.raises(ValueError, match="unknown data format"):
        read_rm_rows(f, "prm", fmt="parquet")
    with pytest.raises(ValueError, match="not accepted here"):
        read_rm_rows(f, "prm", fmt="trl-preference")
    # the CLI refuses a bad --format before any work, naming the config field
    rc = main(["train-rm", "--kind", "prm", "--data", str(f), "--format", "trl-preference",
               "--out", str(tmp_path / "r")])
    assert rc == 2 and "data_format" in capsys.readouterr().err
    assert sorted(FORMATS.names()) == sorted(["rewardlab-steps", "rewardlab-pairs",
                                              "rewardlab-step-pairs", "trl-stepwise",
                                              "trl-preference", "trl-unpaired",
                                              "trl-prompt-completion"])


def test_trl_stepwise_file_trains_a_prm_as_it_is(tmp_path, tiny_policy, capsys):
    """The file TRL's PRMTrainer takes (prompt/completions/labels), given to train-rm unchanged."""
    data = _write(tmp_path / "trl_prm.jsonl", _trl_stepwise_rows())
    out = tmp_path / "prm"
    rc = main(["train-rm", "--kind", "prm", "--data", str(data), "--model", str(tiny_policy),
               "--out", str(out), "--steps", "3", "--set", "batch_size=8",
               "--set", "progress=false", "--set", "device=cpu", "--set", "eval_split=0.25"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "final" / "rewardlab_rm.json").exists()
    summary = capsys.readouterr().out
    assert "eval/step_auroc" in summary and "rm/steps" in summary
    from rewardlab.config import load_config
    from rewardlab.reward_models.train import RMTrainConfig
    cfg = load_config(RMTrainConfig, str(out / "config.yaml"))
    assert cfg.steps == 3 and cfg.model == str(tiny_policy) and cfg.data_format == "auto"


def test_label_format_trl_writes_stepwise_and_preference(tmp_path, capsys):
    probs = generate_problems(n=3, seed=1)
    samples = []
    for p in probs:
        wrong = p.steps[:-1] + [f"#### {int(p.answer) + 1}"]
        for j, steps in enumerate((p.steps, wrong)):
            samples.append({"id": p.id, "sample": j, "question": p.question, "gold": p.answer,
                            "response": "\n".join(steps), "steps": steps,
                            "outcome": int(steps is p.steps)})
    inp = _write(tmp_path / "samples.jsonl", samples)
    out, pairs = tmp_path / "trl.jsonl", tmp_path / "pairs.jsonl"
    rc = main(["label", "--input", str(inp), "--format", "trl", "--out", str(out),
               "--pairs", str(pairs)])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert set(rows[0]) == {"prompt", "completions", "labels"}
    assert all(isinstance(v, bool) for r in rows for v in r["labels"])
    assert rows[0]["completions"] == probs[0].steps and all(rows[0]["labels"])
    prefs = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert len(prefs) == 3 and set(prefs[0]) == {"prompt", "chosen", "rejected"}
    assert isinstance(prefs[0]["chosen"], str)
    # what was written reads back as the same rows
    back = read_rm_rows(out, "prm")
    assert [r.steps for r in back] == [s["steps"] for s in samples]
    assert [r.chosen for r in read_rm_rows(pairs, "bt")] == [p.steps for p in probs]
    # soft labels stay probabilities
    assert to_trl_stepwise({"question": "q", "steps": ["a", "b"], "step_labels": [1, 0.5]}
                           )["labels"] == [1.0, 0.5]
    assert to_trl_preference({"question": "q", "chosen": ["a", "b"], "rejected": ["c"]}) == {
        "prompt": "q", "chosen": "a\nb", "rejected": "c"}
    # --step-pairs has no TRL form; an unknown --format is a usage error
    assert main(["label", "--input", str(inp), "--format", "trl", "--out", str(out),
                 "--step-pairs", str(tmp_path / "sp.jsonl")]) == 2
    assert main(["label", "--input", str(inp), "--format", "csv", "--out", str(out)]) == 2


# --------------------------------------------------------------------------------------------
# gsm8k / math500 from the hub when the shared data folder is absent


def _no_shared_data(monkeypatch, tmp_path):
    monkeypatch.delenv(ds.DATA_DIR_ENV, raising=False)

    def missing():
        raise DataError("shared/data", "data folder not found")
    monkeypatch.setattr(ds, "find_data_dir", missing)
    calls = []
    hub = {("openai/gsm8k", "main", "test"): [
               {"question": "Tom has 2 apples and buys 3. How many?",
                "answer": "2+3=<<2+3=5>>5\n#### 5"}],
           ("HuggingFaceH4/MATH-500", None, "test"): [
               {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2",
                "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"}]}

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if (name, config, split) not in hub:
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (offline)")
        return hub[(name, config, split)]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_gsm8k_and_math500_fall_back_to_the_hub(monkeypatch, tmp_path):
    calls = _no_shared_data(monkeypatch, tmp_path)
    [p] = ds.load_dataset_by_name("gsm8k", "test")
    assert (p.id, p.answer, p.source) == ("gsm8k-test-0", "5", "gsm8k")
    [m] = ds.load_dataset_by_name("math500", "test")
    assert (m.id, m.answer) == ("test/algebra/1.json", "2")
    assert calls == [("openai/gsm8k", "main", "test"), ("HuggingFaceH4/MATH-500", None, "test")]
    # offline: one clear error naming the hub id, the split and how to use local files
    with pytest.raises(DataError, match=r"openai/gsm8k split=train.*REWARDLAB_DATA_DIR"):
        ds.load_gsm8k("train")


def test_explicit_data_dir_that_is_missing_stays_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not name a folder"):
        ds.load_gsm8k("test")


def test_cli_reads_gsm8k_from_the_hub_without_shared_data(monkeypatch, tmp_path, capsys):
    _no_shared_data(monkeypatch, tmp_path)
    assert main(["data", "show", "gsm8k", "-n", "1"]) == 0
    assert "Tom has 2 apples" in capsys.readouterr().out


def test_score_reads_trl_prompt_completion_rows(tmp_path, tiny_policy, capsys):
    from rewardlab.reward_models.models import RMSpec, build_reward_model
    build_reward_model(tiny_policy, RMSpec(kind="orm"), device="cpu").save_pretrained(tmp_path / "orm")
    q = "sam has 3 apples . buys 4 more . how many apples ?"
    sols = _write(tmp_path / "pc.jsonl", [
        {"prompt": q, "completion": "3 + 4 = 7\n#### 7"},
        {"prompt": [{"role": "user", "content": q}],
         "completion": [{"role": "assistant", "content": "#### 8"}], "label": False},
        {"prompt": q, "completions": ["3 + 4 = 7", "#### 7"], "labels": [True, True]}])
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(tmp_path / "orm"), "--input", str(sols), "--out", str(out),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["question"] for r in rows] == [q, q, q] and all(0 <= r["score"] <= 1 for r in rows)
    assert rows[0]["completion"] == "3 + 4 = 7\n#### 7"       # the input row is kept
    bad = _write(tmp_path / "bad.jsonl", [{"text": "3 + 4 = 7"}])
    assert main(["score", "--model", str(tmp_path / "orm"), "--input", str(bad), "--out",
                 str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "bad.jsonl:1" in err and "Fields found: text" in err and "trl-prompt-completion" in err


def test_prompt_completion_file_is_a_dataset_for_sft(tmp_path):
    f = _write(tmp_path / "sft.jsonl", [
        {"prompt": "1 + 1 = ?", "completion": "1 + 1 = 2\n#### 2"},
        {"prompt": [{"role": "user", "content": "2 + 2 = ?"}],
         "completion": [{"role": "assistant", "content": "#### 4"}], "answer": "4"},
        {"prompt": "3 + 3 = ?", "completion": "#### 7", "label": False}])   # unpaired: skipped
    probs = ds.load_dataset_by_name(str(f))
    assert [(p.question, p.solution, p.answer, p.steps) for p in probs] == [
        ("1 + 1 = ?", "1 + 1 = 2\n#### 2", "2", ["1 + 1 = 2", "#### 2"]),
        ("2 + 2 = ?", "#### 4", "4", ["#### 4"])]
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'completion'"):
        ds.load_dataset_by_name(str(bad))

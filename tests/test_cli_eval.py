import json

import pytest

from rewardlab.cli.main import main
from rewardlab.data.testbed import generate_problems
from rewardlab.io import read_jsonl, write_jsonl
from test_bon import tiny_rms  # noqa: F401  (fixture: untrained ORM and PRM on the tiny policy)


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    write_jsonl(path, (p.to_dict() for p in generate_problems(n=4, seed=11)))
    return path


def _flat(text: str) -> str:
    return "".join(text.split())  # rich wraps long paths


def test_cli_eval_writes_predictions_and_summary(tiny_policy, problems_file, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tiny_policy), "--dataset", "testbed", "--data",
               str(problems_file), "--k", "2", "--max-new-tokens", "8", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == 4 and 0 <= summary["accuracy"] <= 1 and "pass@2" in summary
    assert len(read_jsonl(out / "predictions.jsonl")) == 4
    assert "accuracy" in capsys.readouterr().out


def test_cli_eval_bad_input_exit_2(tiny_policy, problems_file, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(problems_file.read_text().splitlines()[0] + "\n{not json\n")
    rc = main(["eval", "--model", str(tiny_policy), "--data", str(bad), "--out", str(tmp_path)])
    assert rc == 2 and f"{bad}:2" in _flat(capsys.readouterr().err)
    rc = main(["eval", "--model", str(tmp_path / "missing"), "--data", str(problems_file)])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_cli_sample_label_and_pairs(tiny_policy, problems_file, tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    rc = main(["sample", "--model", str(tiny_policy), "--data", str(problems_file), "--n", "2",
               "--max-new-tokens", "8", "--out", str(samples)])
    assert rc == 0 and read_jsonl(samples)
    # hand-made samples with known labels, so pairs exist
    p = generate_problems(n=1, seed=11)[0]
    wrong = p.steps[:-1] + [f"#### {int(p.answer) + 1}"]
    rows = [{"id": p.id, "question": p.question, "gold": p.answer, "steps": s,
             "outcome": int(s[-1] == p.steps[-1])} for s in (p.steps, wrong)]
    write_jsonl(samples, rows)
    out, bt, sp = tmp_path / "rm.jsonl", tmp_path / "bt.jsonl", tmp_path / "sp.jsonl"
    rc = main(["label", "--method", "oracle", "--input", str(samples), "--out", str(out),
               "--pairs", str(bt), "--step-pairs", str(sp)])
    assert rc == 0
    labelled = read_jsonl(out)
    assert labelled[0]["step_labels"] == [1.0] * len(p.steps)
    assert labelled[1]["step_labels"][-1] == 0.0
    assert len(read_jsonl(bt)) == 1 and len(read_jsonl(sp)) == 1
    # sample-then-label in one go, with Monte-Carlo labels
    rc = main(["label", "--method", "mc", "--model", str(tiny_policy), "--data", str(problems_file),
               "--limit", "2", "--n", "1", "--mc-n", "2", "--max-new-tokens", "6", "--out", str(out)])
    assert rc == 0 and all(0 <= x <= 1 for r in read_jsonl(out) for x in r["step_labels"])


def test_cli_label_bad_input_exit_2(tmp_path, capsys):
    bad = tmp_path / "s.jsonl"
    bad.write_text(json.dumps({"question": "q", "gold": "1", "steps": ["#### 1"]}) + "\n"
                   + json.dumps({"question": "q", "gold": "1", "steps": "#### 1"}) + "\n")
    rc = main(["label", "--method", "oracle", "--input", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2 and f"{bad}:2" in _flat(capsys.readouterr().err)


def test_cli_label_usage_errors_exit_2(tmp_path):
    ok = tmp_path / "s.jsonl"
    ok.write_text(json.dumps({"question": "q", "gold": "1", "steps": ["#### 1"]}) + "\n")
    assert main(["label", "--method", "mc", "--input", str(ok), "--out", str(tmp_path / "o")]) == 2
    assert main(["label", "--method", "vibes", "--input", str(ok)]) == 2


def test_cli_bon(tiny_policy, tiny_rms, problems_file, tmp_path, capsys):
    out = tmp_path / "bon"
    rc = main(["bon", "--policy", str(tiny_policy), "--orm", tiny_rms["orm"], "--prm",
               tiny_rms["prm"], "--data", str(problems_file), "--max-n", "2", "--limit", "2",
               "--n-trials", "2", "--max-new-tokens", "6", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "bon.json").read_text())
    assert set(res["table"]) >= {"orm", "prm-product", "majority", "random", "oracle"}
    assert (out / "bon.png").exists() and "best-of-N" in capsys.readouterr().out
    rc = main(["bon", "--policy", str(tiny_policy), "--orm", str(tmp_path / "nope"),
               "--data", str(problems_file), "--out", str(out)])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_cli_bon_with_a_plain_causal_lm_as_prm(tiny_policy, problems_file, tmp_path, capsys):
    # --prm-tag: any causal LM scores steps as an LM-head PRM (Math-Shepherd style)
    from rewardlab.reward_models.models import RMSpec, load_reward_model
    from rewardlab.data.datasets import split_steps

    out = tmp_path / "bon_tag"
    args = ["bon", "--policy", str(tiny_policy), "--prm", str(tiny_policy), "--data",
            str(problems_file), "--max-n", "2", "--limit", "2", "--n-trials", "2",
            "--max-new-tokens", "6", "--device", "cpu", "--out", str(out)]
    assert main(args + ["--prm-tag", " ки"]) == 0
    res = json.loads((out / "bon.json").read_text())
    assert {"prm-product", "prm-min", "prm-last"} <= set(res["table"])
    rows = read_jsonl(out / "samples.jsonl")
    rm = load_reward_model(tiny_policy, device="cpu", spec=RMSpec(tag=" ки"))
    question = {p["id"]: p["question"] for p in read_jsonl(problems_file)}
    row = rows[0]
    [direct] = rm.score([question[row["id"]]], [split_steps(row["responses"][0], "lines")])
    assert row["scores"]["prm-product"][0] == pytest.approx(direct.score, abs=1e-6)
    assert main(args) == 2            # without the tag a plain LM is not a reward model
    assert "--prm-tag" in _flat(capsys.readouterr().err)
    assert main(args + ["--prm-tag", ""]) == 2


@pytest.mark.parametrize("cmd", ["eval", "bon"])
def test_cli_model_directory_without_model_files_exit_2(tmp_path, problems_file, capsys, cmd):
    empty = tmp_path / "empty"
    empty.mkdir()
    flag = "--model" if cmd == "eval" else "--policy"
    assert main([cmd, flag, str(empty), "--data", str(problems_file), "--out", str(tmp_path / "o")]) == 2
    err = _flat(capsys.readouterr().err)
    assert str(empty) in err and "cannotload" in err
    assert not (tmp_path / "o").exists()

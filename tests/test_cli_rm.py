"""`rewardlab train-rm` and `rewardlab score`, in process and in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

from rewardlab.cli.main import main
from rewardlab.data.testbed import generate_problems, oracle_label
from rewardlab.reward_models.models import RMSpec, build_reward_model


def _prm_rows(n=12):
    rows = []
    for p in generate_problems(n=n, seed=5):
        wrong = p.steps[:-1] + [f"#### {int(p.answer) + 1}"]
        for steps in (p.steps, wrong):
            res = oracle_label(p.question, "\n".join(steps), p.answer)
            rows.append({"id": p.id, "question": p.question, "steps": steps,
                         "step_labels": res.labels, "outcome": int(res.outcome)})
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_rm_then_score(tmp_path, tiny_policy, capsys):
    data = _write(tmp_path / "rm.jsonl", _prm_rows())
    cfg = tmp_path / "rm.yaml"
    cfg.write_text("epochs: 1\nbatch_size: 8\nlr: 0.003\nprogress: false\ndevice: cpu\n")
    out = tmp_path / "prm"
    rc = main(["train-rm", "--kind", "prm", "--data", str(data), "--base", str(tiny_policy),
               "--out", str(out), "--config", str(cfg), "--set", "form=head",
               "--set", "eval_split=0.25"])
    assert rc == 0
    assert (out / "final" / "rewardlab_rm.json").exists() and (out / "config.yaml").exists()
    assert json.loads((out / "final" / "rewardlab_rm.json").read_text())["form"] == "head"
    assert "eval/step_auroc" in capsys.readouterr().out

    sols = _write(tmp_path / "sols.jsonl", [
        {"id": "a", "question": "sam has 3 apples . buys 4 more . how many apples ?",
         "steps": ["3 + 4 = 7", "#### 7"]},
        {"question": "sam has 3 apples . buys 4 more . how many apples ?",
         "response": "3 + 4 = 8\n\n#### 8\n"}])
    scored = tmp_path / "scores.jsonl"
    rc = main(["score", "--rm", str(out / "final"), "--input", str(sols), "--out", str(scored),
               "--device", "cpu", "--aggregation", "min"])
    assert rc == 0
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert rows[0]["id"] == "a" and len(rows[0]["step_scores"]) == 2
    assert len(rows[1]["step_scores"]) == 2 and rows[1]["response"].startswith("3 + 4")
    assert all(r["score"] == pytest.approx(min(r["step_scores"])) for r in rows)
    assert "2 solutions" in capsys.readouterr().out


def test_score_with_a_plain_causal_lm_as_prm(tmp_path, tiny_policy, capsys):
    from rewardlab.reward_models.models import RMSpec, load_reward_model

    q = "sam has 3 apples . buys 4 more . how many apples ?"
    sols = _write(tmp_path / "sols.jsonl", [{"question": q, "steps": ["3 + 4 = 7", "#### 7"]}])
    scored = tmp_path / "scores.jsonl"
    args = ["score", "--rm", str(tiny_policy), "--input", str(sols), "--out", str(scored),
            "--device", "cpu"]
    assert main(args + ["--prm-tag", " ки"]) == 0
    [row] = [json.loads(line) for line in scored.read_text().splitlines()]
    [direct] = load_reward_model(tiny_policy, device="cpu", spec=RMSpec(tag=" ки")).score(
        [q], [["3 + 4 = 7", "#### 7"]])
    assert row["step_scores"] == pytest.approx(direct.step_scores, abs=1e-6)
    capsys.readouterr()
    assert main(args) == 2                       # a plain LM without the tag: how to use one
    assert "--prm-tag" in "".join(capsys.readouterr().err.split())
    assert main(args + ["--prm-tag", ""]) == 2   # an empty tag is a usage error


def test_bad_input_exits_2_naming_file_and_line(tmp_path, tiny_policy, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "steps": ["#### 1"], "step_labels": [1]})
                   + "\n{not json\n")
    rc = main(["train-rm", "--kind", "prm", "--data", str(bad), "--base", str(tiny_policy),
               "--out", str(tmp_path / "r"), "--set", "progress=false"])
    assert rc == 2
    assert "bad.jsonl:2" in capsys.readouterr().err.replace("\n", "")
    rc = main(["train-rm", "--kind", "bt", "--data", str(bad), "--set", "preference=true"])
    assert rc == 2
    rm = build_reward_model(tiny_policy, RMSpec(kind="orm"), device="cpu")
    rm.save_pretrained(tmp_path / "orm")
    sols = _write(tmp_path / "sols.jsonl", [{"question": "q", "steps": ["#### 1"]},
                                            {"question": "q", "steps": ["#### 1", 7]}])
    rc = main(["score", "--rm", str(tmp_path / "orm"), "--input", str(sols),
               "--out", str(tmp_path / "o.jsonl")])
    assert rc == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "sols.jsonl:2" in err and "steps" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_subprocess_bad_input_exits_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "how many ?", "steps": ["1 + 1 = 2"]}\n{"question": 3}\n')
    env = {**os.environ, "COLUMNS": "400", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rewardlab.cli.main", "score", "--rm", str(tmp_path / "none"),
           "--out", str(tmp_path / "s.jsonl"), "--input", str(bad)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:2" in proc.stderr and "question" in proc.stderr
    assert not (tmp_path / "s.jsonl").exists()


def test_ensemble_rm_then_score(tmp_path, tiny_policy, capsys):
    a, b = (build_reward_model(tiny_policy, RMSpec(kind="orm"), device="cpu", seed=s)
            .save_pretrained(tmp_path / f"orm{s}") for s in (0, 1))
    rows = _write(tmp_path / "sol.jsonl", _prm_rows(3))
    assert main(["ensemble-rm", "--member", str(a), "--member", str(b), "--out", str(tmp_path / "ens")]) == 0
    scored = {}
    for name, model in [("a", a), ("b", b), ("ens", tmp_path / "ens")]:
        assert main(["score", "--model", str(model), "--input", str(rows), "--device", "cpu",
                     "--out", str(tmp_path / f"{name}.jsonl")]) == 0
        scored[name] = [json.loads(x)["score"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert scored["ens"] == pytest.approx([(x + y) / 2 for x, y in zip(scored["a"], scored["b"])])
    assert scored["a"] != scored["b"]
    # a PRM next to an ORM, an unknown reduction, a missing member: exit 2, no manifest
    prm = build_reward_model(tiny_policy, RMSpec(kind="prm", tag=" ки"), device="cpu").save_pretrained(tmp_path / "prm")
    capsys.readouterr()
    assert main(["ensemble-rm", "--member", str(a), "--member", str(prm), "--out", str(tmp_path / "mix")]) == 2
    assert "one kind" in capsys.readouterr().err
    assert main(["ensemble-rm", "--member", str(a), "--reduce", "max", "--out", str(tmp_path / "mx")]) == 2
    assert main(["ensemble-rm", "--member", str(tmp_path / "nope"), "--out", str(tmp_path / "no")]) == 2
    assert "nope" in capsys.readouterr().err
    assert not any((tmp_path / d / "rewardlab_ensemble.json").exists() for d in ("mix", "mx", "no"))

"""One naming across the CLI (--model, --steps, --samples, --num-problems/-n) and every old name
still working as a deprecated alias that warns (docs/cli_naming.md)."""

import json

import pytest
import typer

from rewardlab.cli.main import build_app, main
from rewardlab.cli.naming import DEPRECATED, rename_args
from rewardlab.data.testbed import generate_problems
from rewardlab.io import read_jsonl, write_jsonl


def _command(path: str):
    cmd = typer.main.get_command(build_app())
    for part in path.split():
        cmd = cmd.commands[part]
    return cmd


def _value(param) -> str:
    return "3"   # valid for every aliased option: int, float and str alike


def _parse(cmd, args: list[str]) -> dict:
    required = []
    for p in cmd.params:   # fill the other required options so that parsing succeeds
        if p.param_type_name == "option" and p.required and not set(p.opts) & set(args):
            required += [p.opts[0], _value(p)]
        elif p.param_type_name == "argument" and p.required:
            required.append(_value(p))
    with cmd.make_context(cmd.name, args + required) as ctx:
        return dict(ctx.params)


CASES = [(c, old, new) for c, m in DEPRECATED.items() for old, new in m.items()]


@pytest.mark.parametrize("command,old,new", CASES, ids=[f"{c}:{o}" for c, o, _ in CASES])
def test_every_deprecated_alias_parses_as_the_new_name_and_warns(command, old, new, capsys):
    cmd = _command(command)
    [param] = [p for p in cmd.params if new in getattr(p, "opts", [])]
    value = _value(param)
    with_new = _parse(cmd, [new, value])
    assert "deprecated" not in capsys.readouterr().err
    assert _parse(cmd, [old, value]) == with_new
    assert _parse(cmd, [f"{old}={value}"]) == with_new
    err = " ".join(capsys.readouterr().err.split())
    assert f"{old} is deprecated, use {new}" in err and f"rewardlab {command}" in err
    assert old not in [o for p in cmd.params for o in getattr(p, "opts", [])]  # help shows only new


def test_the_new_names_exist_where_the_issue_asks():
    want = {"sft": ["--model", "--steps"], "rl": ["--model", "--steps"],
            "train-rm": ["--model", "--steps", "--format"], "eval": ["--model", "--samples", "-n"],
            "sample": ["--model", "--samples", "--num-problems", "-n"],
            "label": ["--model", "--samples", "--num-problems", "-n", "--format"],
            "bon": ["--model", "--samples", "--num-problems", "-n"],
            "score": ["--model"], "eval-prm": ["--model", "--num-problems", "-n"],
            "data show": ["--num-problems", "-n"],
            "data testbed": ["--num-problems", "-n", "--min-ops", "--max-ops"],
            "demo": ["--steps"]}
    for command, names in want.items():
        opts = {o for p in _command(command).params for o in getattr(p, "opts", [])}
        assert set(names) <= opts, (command, set(names) - opts)


def test_rename_args_leaves_values_and_the_rest_alone(capsys):
    assert rename_args(["--nx", "--n", "--limit"], {"--n": "--samples"}) == \
        ["--nx", "--samples", "--limit"]
    capsys.readouterr()
    assert rename_args(["--n", "1", "--n", "2"], {"--n": "--samples"}) == \
        ["--samples", "1", "--samples", "2"]
    assert capsys.readouterr().err.count("deprecated") == 1    # one warning per name


def test_new_names_end_to_end(tmp_path, capsys):
    out = tmp_path / "tb.jsonl"
    assert main(["data", "testbed", "-n", "5", "--max-ops", "2", "--out", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 5 and max(len(r["steps"]) for r in rows) <= 3   # ≤ 2 ops + answer
    assert main(["data", "testbed", "--num-problems", "2", "--min-ops", "3", "--max-ops", "2",
                 "--out", str(out)]) == 2                                 # impossible knobs
    assert "deprecated" not in capsys.readouterr().err
    assert main(["data", "testbed", "--n", "2", "--out", str(out)]) == 0   # old name: warns
    assert "--n is deprecated, use --num-problems" in capsys.readouterr().err
    assert len(read_jsonl(out)) == 2
    assert main(["sft", "--steps", "0", "--out", str(tmp_path / "s")]) == 2   # --steps >= 1
    assert main(["sft", "--steps", "4", "--print-config"]) == 0
    assert "\nsteps: 4\n" in capsys.readouterr().out
    assert main(["rl", "--model", "runs/x", "--steps", "7", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "model:\n" in printed and "name_or_path: runs/x" in printed and "\nsteps: 7\n" in printed
    assert main(["train-rm", "--model", "some/policy", "--steps", "9", "--format", "trl",
                 "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "\nmodel: some/policy\n" in printed and "\nsteps: 9\n" in printed
    assert "data_format: trl" in printed


def test_grade_reads_eval_predictions_as_they_are(tiny_policy, tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, (p.to_dict() for p in generate_problems(n=3, seed=4)))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_policy), "--data", str(problems), "-n", "2",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == 2
    capsys.readouterr()
    assert main(["grade", "--dataset", "testbed", "--path", str(problems),
                 "--predictions", str(out / "predictions.jsonl")]) == 0
    graded = read_jsonl(out / "predictions.graded.jsonl")
    evaluated = read_jsonl(out / "predictions.jsonl")
    assert [g["correct"] for g in graded] == [e["correct"] for e in evaluated]
    assert f"accuracy: {summary['accuracy']:.4f}" in capsys.readouterr().out

"""``rewardlab data show|testbed`` and ``rewardlab grade`` through main(argv) and a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewardlab.cli.main import main
from rewardlab.data.problem import Problem
from rewardlab.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def problems_file(tmp_path):
    """A small testbed-format dataset (Problem.to_dict rows) that needs no shared data."""
    probs = [Problem(f"p{i}", f"q{i}", f"{i} + 1 = {i + 1}\n#### {i + 1}", str(i + 1), "testbed",
                     [f"{i} + 1 = {i + 1}", f"#### {i + 1}"]) for i in range(4)]
    f = tmp_path / "problems.jsonl"
    f.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in probs))
    return f


def _preds(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_grade_prediction_and_answer_fields(tmp_path, problems_file, capsys):
    preds = _preds(tmp_path / "preds.jsonl", [
        {"id": "p0", "prediction": "0 + 1 = 1\n#### 1"},
        {"id": "p1", "prediction": "1 + 1 = 3\n#### 3"},
        {"id": "p2", "answer": "3"},
        {"id": "p3", "prediction": "so the answer is $4.00."},
    ])
    out = tmp_path / "res.jsonl"
    rc = main(["grade", "--dataset", "testbed", "--path", str(problems_file),
               "--predictions", str(preds), "--out", str(out)])
    assert rc == 0
    assert "accuracy: 0.7500 (3/4)" in capsys.readouterr().out
    res = read_jsonl(out)
    assert res[1] == {"id": "p1", "pred": "3", "gold": "2", "correct": False}
    assert [r["correct"] for r in res] == [True, False, True, True]


def test_grade_default_out_and_dataset_as_path(tmp_path, problems_file):
    preds = _preds(tmp_path / "preds.jsonl", [{"id": "p0", "prediction": "#### 1"}])
    assert main(["grade", "--dataset", str(problems_file), "--predictions", str(preds)]) == 0
    assert read_jsonl(tmp_path / "preds.graded.jsonl")[0]["correct"] is True


def test_grade_custom_field_and_math_style(tmp_path, problems_file):
    preds = _preds(tmp_path / "p.jsonl", [{"id": "p1", "text": r"so $\boxed{\frac{4}{2}}$"}])
    out = tmp_path / "o.jsonl"
    assert main(["grade", "--dataset", str(problems_file), "--predictions", str(preds),
                 "--pred-field", "text", "--style", "math", "--out", str(out)]) == 0
    assert read_jsonl(out)[0]["correct"] is True


def test_grade_unknown_id_names_line(tmp_path, problems_file, capsys):
    preds = _preds(tmp_path / "preds.jsonl", [{"id": "p0", "answer": "1"}, {"id": "zzz", "answer": "1"}])
    rc = main(["grade", "--dataset", str(problems_file), "--predictions", str(preds)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "preds.jsonl:2" in err and "zzz" in err
    assert not (tmp_path / "preds.graded.jsonl").exists()


@pytest.mark.parametrize("content, needle", [
    ('{"id": "p0", "prediction": "#### 1"}\n{not json\n', "bad.jsonl:2"),
    ('{"id": "p0"}\n', "bad.jsonl:1"),
    ('{"prediction": "#### 1"}\n', "bad.jsonl:1"),
    ("", "empty"),
])
def test_grade_bad_predictions(tmp_path, problems_file, capsys, content, needle):
    preds = tmp_path / "bad.jsonl"
    preds.write_text(content)
    assert main(["grade", "--dataset", str(problems_file), "--predictions", str(preds)]) == 2
    assert needle in capsys.readouterr().err


def test_grade_missing_files(tmp_path, problems_file):
    assert main(["grade", "--dataset", str(problems_file),
                 "--predictions", str(tmp_path / "none.jsonl")]) == 2
    preds = _preds(tmp_path / "preds.jsonl", [{"id": "p0", "answer": "1"}])
    assert main(["grade", "--dataset", str(tmp_path / "gone.jsonl"), "--predictions", str(preds)]) == 2
    assert main(["grade", "--dataset", "nonsense", "--predictions", str(preds)]) == 2


def test_grade_bad_style(tmp_path, problems_file):
    preds = _preds(tmp_path / "preds.jsonl", [{"id": "p0", "answer": "1"}])
    assert main(["grade", "--dataset", str(problems_file), "--predictions", str(preds),
                 "--style", "latex"]) == 2


def test_data_show(problems_file, capsys):
    assert main(["data", "show", "testbed", "--path", str(problems_file), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "p0" in out and "p1" in out and "p2" not in out and "#### 2" in out


def test_data_show_shared_gsm8k(capsys):
    from rewardlab.data.datasets import find_data_dir
    from rewardlab.io import DataError
    try:
        find_data_dir()
    except DataError as e:
        pytest.skip(str(e))
    assert main(["data", "show", "math500", "-n", "1"]) == 0  # "[asy]" must not break markup
    assert main(["data", "show", "gsm8k", "--split", "train", "-n", "2"]) == 0
    assert "gsm8k-train-1" in capsys.readouterr().out


def test_data_show_missing(tmp_path):
    assert main(["data", "show", "testbed", "--path", str(tmp_path / "nope.jsonl")]) == 2


def test_data_testbed_then_grade(tmp_path, capsys):
    pytest.importorskip("rewardlab.data.testbed")
    out = tmp_path / "tb.jsonl"
    assert main(["data", "testbed", "--n", "20", "--out", str(out), "--seed", "3",
                 "--min-steps", "2", "--max-steps", "3", "--max-operand", "5"]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 20 and all(2 <= len(r["steps"]) - 1 <= 4 for r in rows)
    preds = _preds(tmp_path / "preds.jsonl", [{"id": r["id"], "prediction": r["solution"]} for r in rows])
    capsys.readouterr()
    assert main(["grade", "--dataset", "testbed", "--path", str(out), "--predictions", str(preds)]) == 0
    assert "accuracy: 1.0000 (20/20)" in capsys.readouterr().out
    # same seed, same problems
    again = tmp_path / "tb2.jsonl"
    assert main(["data", "testbed", "--n", "20", "--out", str(again), "--seed", "3",
                 "--min-steps", "2", "--max-steps", "3", "--max-operand", "5"]) == 0
    assert read_jsonl(again) == rows
    assert main(["data", "testbed", "--n", "5", "--out", str(again), "--min-steps", "5",
                 "--max-steps", "2"]) == 2


def test_grade_subprocess(tmp_path, problems_file):
    preds = _preds(tmp_path / "preds.jsonl", [{"id": "p0", "prediction": "#### 1"},
                                               {"id": "p1", "prediction": "#### 7"}])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "rewardlab.cli.main", "grade", "--dataset",
                           str(problems_file), "--predictions", str(preds)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy: 0.5000 (1/2)" in proc.stdout
    assert [r["correct"] for r in read_jsonl(tmp_path / "preds.graded.jsonl")] == [True, False]

"""Null in a required field is a bad row, named by file, line and field (issue 21)."""

import json

import pytest

from rewardlab.cli.main import main
from rewardlab.io import DataError, read_jsonl


def test_null_in_a_required_field_names_file_line_and_field(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n"
                 + json.dumps({"question": "q", "answer": None}) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:2: field 'answer': null in a required field"):
        read_jsonl(p, required=["question", "answer"])
    assert read_jsonl(p, required=["question"])[1]["answer"] is None   # optional: null is fine


def test_cli_null_answer_and_question_exit_2(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": "x", "answer": None}) + "\n")
    assert main(["data", "show", str(data)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "p.jsonl:1" in err and "'answer'" in err and "null" in err
    rows = tmp_path / "rm.jsonl"
    rows.write_text(json.dumps({"question": None, "steps": ["1 + 1 = 2"], "step_labels": [1]}) + "\n")
    assert main(["train-rm", "--kind", "prm", "--data", str(rows), "--out", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "rm.jsonl:1" in err and "'question'" in err and not (tmp_path / "o" / "final").exists()

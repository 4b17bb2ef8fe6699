"""rewardlab.data.datasets: the shared GSM8K/MATH500 files, generic JSONL, errors that name the line."""

from __future__ import annotations

import json

import pytest

from rewardlab.data import datasets as ds
from rewardlab.data.datasets import (
    find_data_dir,
    load_dataset_by_name,
    load_gsm8k,
    load_jsonl,
    load_math500,
    load_testbed,
    split_steps,
)
from rewardlab.data.problem import Problem
from rewardlab.io import DataError


@pytest.fixture(scope="module")
def data_dir():
    try:
        return find_data_dir()
    except DataError as e:
        pytest.skip(str(e))


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# the shared files


def test_gsm8k_counts_and_fields(data_dir):
    train, test = load_gsm8k("train"), load_gsm8k("test")
    assert (len(train), len(test)) == (7473, 1319)
    p = test[0]
    assert p.id == "gsm8k-test-0" and p.source == "gsm8k" and p.answer == "18"
    assert p.question.startswith("Janet")
    assert "<<16-3-4=9>>" in p.solution and p.solution.endswith("#### 18")
    assert p.steps[-1] == "#### 18" and len(p.steps) == 3
    assert len({q.id for q in train}) == len(train)
    assert all(q.steps[-1] == f"#### {q.answer}" and "," not in q.answer for q in train + test)


def test_gsm8k_strip_annotations_and_limit(data_dir):
    p = load_gsm8k("test", limit=1, keep_calc_annotations=False)
    assert len(p) == 1 and "<<" not in "".join(p[0].steps) and "<<" in p[0].solution
    assert load_gsm8k("test", limit=0) == []
    with pytest.raises(ValueError):
        load_gsm8k("test", limit=-1)


def test_math500_counts_and_fields(data_dir):
    probs = load_math500()
    assert len(probs) == 500
    p = probs[0]
    assert p.id == "test/precalculus/807.json" and p.source == "math500"
    assert p.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert p.meta == {"subject": "Precalculus", "level": 2}
    assert len(p.steps) == 3 and p.steps[1].startswith("[asy]") and p.steps[1].endswith("[/asy]")
    assert all(q.steps and all(s.strip() == s and s for s in q.steps) for q in probs)


def test_load_by_name(data_dir, tmp_path):
    assert len(load_dataset_by_name("gsm8k", "test", limit=5)) == 5
    assert len(load_dataset_by_name("math500", "test", limit=2)) == 2
    f = tmp_path / "tb.jsonl"
    rows = [Problem(f"t{i}", f"q{i}", "1 + 1 = 2\n#### 2", "2", "testbed", ["1 + 1 = 2", "#### 2"])
            for i in range(3)]
    _write(f, [json.dumps(r.to_dict()) for r in rows])
    assert load_dataset_by_name("testbed", path=f) == rows
    assert load_dataset_by_name(str(f)) == rows
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset_by_name("nonsense")


def test_env_var_overrides_data_dir(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    _write(tmp_path / "gsm8k" / "test.jsonl", [json.dumps({"question": "q", "answer": "a\n#### 1,234"})])
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path))
    (p,) = load_gsm8k("test")
    assert p.answer == "1234" and p.steps == ["a", "#### 1234"]


def test_hub_id_goes_through_datasets_load_dataset(monkeypatch):
    import datasets
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"question": "q1", "answer": "x <<1+1=2>>2\n#### 2"},
                {"question": "q2", "answer": "#### 5"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    probs = load_gsm8k("test", path="openai/gsm8k")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert [p.answer for p in probs] == ["2", "5"]
    assert load_dataset_by_name("openai/gsm8k", "train", limit=1)[0].question == "q1"
    assert calls[-1] == ("openai/gsm8k", "main", "train")


def test_hub_row_of_wrong_type(monkeypatch):
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"question": "q", "answer": 3}])
    with pytest.raises(DataError, match=r"openai/gsm8k split=test row:1: field 'answer'"):
        load_gsm8k("test", path="openai/gsm8k")


# --------------------------------------------------------------------------------------------
# steps and the generic loader


@pytest.mark.parametrize("text, mode, want", [
    ("a\n\n b \nc\n", "lines", ["a", "b", "c"]),
    ("p1 l1\np1 l2\n\n  \n\np2\n", "blank", ["p1 l1\np1 l2", "p2"]),
    ("s1. s2. s3.", r"(?<=\.)\s+", ["s1.", "s2.", "s3."]),
    ("", "lines", []),
    ("x\n\n[asy]\na\n\nb\n[/asy]\n\ny", "blank", ["x", "[asy]\na\n\nb\n[/asy]", "y"]),
])
def test_split_steps(text, mode, want):
    assert split_steps(text, mode) == want


def test_split_steps_bad_regex():
    with pytest.raises(ValueError, match="regular expression"):
        split_steps("a", "(")


def test_load_jsonl_field_mapping(tmp_path):
    f = _write(tmp_path / "mine.jsonl", [
        json.dumps({"q": "What?", "a": "4", "sol": "2+2=4\n\n#### 4", "uid": 7, "extra": 1}),
        json.dumps({"q": "Who?", "a": "5", "sol": "one\n\ntwo", "uid": "b"}),
    ])
    probs = load_jsonl(f, question_field="q", answer_field="a", solution_field="sol",
                       id_field="uid", source="mine", step_split="blank")
    assert [p.id for p in probs] == ["7", "b"]
    assert probs[0].steps == ["2+2=4", "#### 4"] and probs[0].meta == {"extra": 1}
    assert probs[1].source == "mine" and probs[1].question == "Who?"
    plain = load_jsonl(f, question_field="q", answer_field="a")
    assert plain[0].id == "jsonl-0" and plain[0].steps is None


# --------------------------------------------------------------------------------------------
# bad input names the file and the line


def _assert_names(err: DataError, fname: str, line: int | None):
    msg = str(err)
    assert fname in msg
    if line is not None:
        assert f":{line}" in msg and err.line == line


def test_malformed_json(tmp_path):
    f = _write(tmp_path / "bad.jsonl", [json.dumps({"question": "q", "answer": "#### 1"}), "{oops"])
    with pytest.raises(DataError) as e:
        load_gsm8k(path=f)
    _assert_names(e.value, "bad.jsonl", 2)


def test_missing_field(tmp_path):
    f = _write(tmp_path / "nofield.jsonl", [json.dumps({"question": "q", "answer": "#### 1"}),
                                             json.dumps({"question": "q"})])
    with pytest.raises(DataError, match="field 'answer'") as e:
        load_gsm8k(path=f)
    _assert_names(e.value, "nofield.jsonl", 2)


def test_wrong_type(tmp_path):
    f = _write(tmp_path / "types.jsonl", [json.dumps({"problem": "p", "solution": "s", "answer": 3})])
    with pytest.raises(DataError, match="field 'answer'") as e:
        load_math500(path=f)
    _assert_names(e.value, "types.jsonl", 1)
    g = _write(tmp_path / "types2.jsonl", [json.dumps({"question": ["q"], "answer": "#### 1"})])
    with pytest.raises(DataError, match="field 'question'") as e:
        load_gsm8k(path=g)
    _assert_names(e.value, "types2.jsonl", 1)


def test_gsm8k_answer_without_marker(tmp_path):
    f = _write(tmp_path / "nomark.jsonl", [json.dumps({"question": "q", "answer": "just 5"})])
    with pytest.raises(DataError, match="####") as e:
        load_gsm8k(path=f)
    _assert_names(e.value, "nomark.jsonl", 1)


def test_empty_file(tmp_path):
    f = _write(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match="empty") as e:
        load_gsm8k(path=f)
    _assert_names(e.value, "empty.jsonl", None)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        load_jsonl(tmp_path / "nope.jsonl")
    _assert_names(e.value, "nope.jsonl", None)


def test_testbed_rows_checked(tmp_path):
    f = _write(tmp_path / "tb.jsonl", [json.dumps({"id": "a", "question": "q", "solution": "s",
                                                   "answer": "1", "source": "t", "steps": [1]})])
    with pytest.raises(DataError, match="field 'steps'") as e:
        load_testbed(f)
    _assert_names(e.value, "tb.jsonl", 1)

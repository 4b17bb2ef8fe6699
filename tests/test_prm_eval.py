"""Earliest-error evaluation (ProcessBench), PRM score bias, `rewardlab eval-prm`, and the RM
data augmentation (corrupted / truncated / deduplicated rows)."""

import json
import random

import pytest

from rewardlab.cli.main import main
from rewardlab.data.testbed import generate_problems, minimal_pairs, oracle_label
from rewardlab.eval.prm_eval import (choose_threshold, earliest_error_eval,
                                     earliest_error_metrics, first_error, minimal_pair_metrics,
                                     predict_first_error, read_processbench, score_bias,
                                     split_by_problem)
from rewardlab.io import DataError
from rewardlab.reward_models.labeling import get_labeler
from rewardlab.reward_models.models import load_reward_model, RMSpec, build_reward_model
from rewardlab.reward_models.pipeline import (augment_rows, corrupt_steps, dedupe_rows,
                                              repair_steps, shorten_steps, truncate_steps)


def test_first_error_and_prediction():
    assert first_error([1, 1, 0, 1]) == 2 and first_error([1.0, 0.9]) == -1
    assert predict_first_error([0.9, 0.4, 0.1], 0.5) == 1
    assert predict_first_error([0.9, 0.6], 0.5) == -1
    assert predict_first_error([0.5], 0.5) == -1        # strictly below the threshold


def test_earliest_error_metrics_by_hand():
    scores = [[0.9, 0.2, 0.1],   # label 1  pred 1  hit
              [0.3, 0.9],        # label 1  pred 0  miss (flagged too early)
              [0.9, 0.9, 0.8],   # label 2  pred -1 miss (error not found)
              [0.9, 0.8],        # label -1 pred -1 hit
              [0.9, 0.4]]        # label -1 pred 1  miss
    labels = [1, 1, 2, -1, -1]
    m = earliest_error_metrics(scores, labels, 0.5)
    assert m["acc_err"] == pytest.approx(1 / 3) and m["acc_correct"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))   # = 0.4
    assert m["f1"] == pytest.approx(0.4) and (m["n_err"], m["n_correct"]) == (3, 2)
    # threshold 0.35: row 1 now passes step 0 (0.3 < 0.35 still flags it), row 5 passes
    m2 = earliest_error_metrics(scores, labels, 0.35)
    assert (m2["acc_err"], m2["acc_correct"]) == (pytest.approx(1 / 3), 1.0)
    assert earliest_error_metrics([[0.9]], [-1], 0.5)["f1"] != earliest_error_metrics(
        [[0.9]], [-1], 0.5)["f1"]                                   # nan: no erroneous solution
    zero = earliest_error_metrics([[0.9], [0.1]], [0, -1], 0.5)
    assert zero["f1"] == 0.0
    with pytest.raises(ValueError, match="outside"):
        earliest_error_metrics([[0.9]], [3], 0.5)


def test_choose_threshold_on_validation_then_test():
    val = [[0.9, 0.3], [0.95, 0.9], [0.2]]
    val_y = [1, -1, 0]
    t = choose_threshold(val, val_y)
    # any threshold in (0.3, 0.9] separates the validation set perfectly; ties go toward 0.5
    assert t == 0.5 and earliest_error_metrics(val, val_y, t)["f1"] == 1.0
    out = earliest_error_eval(val, val_y, [[0.45, 0.9], [0.9]], [0, -1])
    assert out["eval/earliest_error_threshold"] == 0.5
    assert out["eval/earliest_error_f1"] == 1.0
    fixed = earliest_error_eval([], [], [[0.45, 0.9], [0.9]], [0, -1], threshold=0.4)
    assert fixed["eval/earliest_error_acc_err"] == 0.0 and fixed["eval/earliest_error_f1"] == 0.0


def test_split_by_problem_keeps_problems_whole():
    ids = ["a", "a", "b", "c", "c", "d"]
    val, test = split_by_problem(ids, seed=1)
    assert sorted(val + test) == list(range(6))
    assert not {ids[i] for i in val} & {ids[i] for i in test}
    assert len({ids[i] for i in val}) == 2


def test_score_bias_by_hand():
    b = score_bias([0.2, 0.4, 0.9, 0.1], [2, 2, 3, 5], [1, 0, 1, 0])
    assert b["bias/score_by_steps"] == {"2": pytest.approx(0.3), "3": 0.9, "5": 0.1}
    assert b["bias/count_by_steps"] == {"2": 2, "3": 1, "5": 1}
    assert b["bias/score_correct"] == pytest.approx(0.55)
    assert b["bias/score_wrong"] == pytest.approx(0.25)
    json.dumps(b)


# ---------------------------------------------------------------------------------------------
# ProcessBench files and `rewardlab eval-prm`

def _pb_rows():
    rows = []
    for i, p in enumerate(generate_problems(n=6, seed=3)):
        steps = list(p.steps)
        if i % 2:
            steps[0] = steps[0].rsplit("=", 1)[0] + f"= {int(steps[0].rsplit('=', 1)[1]) + 1}"
        res = oracle_label(p.question, "\n".join(steps), p.answer)
        rows.append({"id": p.id, "problem": p.question, "steps": steps,
                     "final_answer_correct": bool(res.outcome),
                     "label": first_error(res.labels)})
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_processbench_checks_rows(tmp_path):
    rows = _pb_rows()
    assert [r["label"] for r in rows] == [-1, 0, -1, 0, -1, 0]
    assert read_processbench(_write_jsonl(tmp_path / "ok.jsonl", rows)) == rows
    (tmp_path / "ok.json").write_text(json.dumps(rows))
    assert read_processbench(tmp_path / "ok.json", limit=2) == rows[:2]
    cases = [({"label": 7}, "label"), ({"label": True}, "label"), ({"steps": []}, "steps"),
             ({"steps": ["a", ""]}, "steps"), ({"final_answer_correct": "yes"},
                                                "final_answer_correct"), ({"problem": ""}, "problem")]
    for patch, fld in cases:
        bad = [rows[0], {**rows[1], **patch}]
        with pytest.raises(DataError) as e:
            read_processbench(_write_jsonl(tmp_path / "bad.jsonl", bad))
        assert e.value.line == 2 and e.value.field == fld and "bad.jsonl" in str(e.value)
    bad = [rows[0], {k: v for k, v in rows[1].items() if k != "label"}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"bad.json: field 'label': row 2: missing"):
        read_processbench(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def tiny_prm(tiny_policy, tmp_path_factory):
    rm = build_reward_model(tiny_policy, RMSpec(kind="prm", tag=" ки"), device="cpu", seed=0)
    return str(rm.save_pretrained(tmp_path_factory.mktemp("prm") / "prm"))


def test_eval_prm_cli(tmp_path, tiny_prm, capsys):
    rows = _pb_rows()
    data = _write_jsonl(tmp_path / "pb.jsonl", rows)
    # threshold 1.0: every solution is flagged at step 0 → acc_err = 3/3, acc_correct = 0, F1 = 0
    rc = main(["eval-prm", "--prm", tiny_prm, "--data", str(data), "--threshold", "1.0",
               "--device", "cpu", "--out", str(tmp_path / "t1")])
    assert rc == 0
    s = json.loads((tmp_path / "t1" / "summary.json").read_text())
    assert (s["eval/earliest_error_acc_err"], s["eval/earliest_error_acc_correct"],
            s["eval/earliest_error_f1"]) == (1.0, 0.0, 0.0)
    # threshold 0: nothing is flagged → acc_err = 0, acc_correct = 1
    assert main(["eval-prm", "--prm", tiny_prm, "--data", str(data), "--threshold", "0",
                 "--device", "cpu", "--out", str(tmp_path / "t0")]) == 0
    s0 = json.loads((tmp_path / "t0" / "summary.json").read_text())
    assert (s0["eval/earliest_error_acc_err"], s0["eval/earliest_error_acc_correct"]) == (0.0, 1.0)
    # threshold 0.5: the predictions are the model's own step scores read by hand
    assert main(["eval-prm", "--prm", tiny_prm, "--data", str(data), "--threshold", "0.5",
                 "--device", "cpu", "--out", str(tmp_path / "t5")]) == 0
    rm = load_reward_model(tiny_prm, device="cpu")
    res = rm.score([r["problem"] for r in rows], [r["steps"] for r in rows])
    want = [next((k for k, p in enumerate(x.step_scores) if p < 0.5), -1) for x in res]
    preds = [json.loads(x) for x in (tmp_path / "t5" / "predictions.jsonl").read_text().splitlines()]
    assert [p["pred"] for p in preds] == want
    hits_e = sum(w == r["label"] for w, r in zip(want, rows) if r["label"] >= 0)
    hits_c = sum(w == -1 for w, r in zip(want, rows) if r["label"] < 0)
    s5 = json.loads((tmp_path / "t5" / "summary.json").read_text())
    assert s5["eval/earliest_error_acc_err"] == pytest.approx(hits_e / 3)
    assert s5["eval/earliest_error_acc_correct"] == pytest.approx(hits_c / 3)
    # validation split: threshold chosen on half of the rows, the other half scored
    assert main(["eval-prm", "--prm", tiny_prm, "--data", str(data), "--device", "cpu",
                 "--out", str(tmp_path / "v")]) == 0
    sv = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert sv["eval/n_val"] == 3 and sv["eval/n_test"] == 3
    assert 0 < sv["eval/earliest_error_threshold"] < 1
    assert "earliest_error_f1" in capsys.readouterr().out


def test_eval_prm_cli_bad_rows_exit_2(tmp_path, tiny_prm, capsys):
    rows = _pb_rows()
    rows[2]["label"] = 9
    data = _write_jsonl(tmp_path / "pb.jsonl", rows)
    assert main(["eval-prm", "--prm", tiny_prm, "--data", str(data), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "pb.jsonl:3" in err and "label" in err
    assert main(["eval-prm", "--prm", tiny_prm, "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# RM data augmentation

Q = "max has 5 apples . buys 8 more . loses 8 . gets 2 times as many . how many apples ?"
STEPS = ["5 + 8 = 13", "13 - 8 = 5", "5 * 2 = 10", "#### 10"]


def test_corrupt_steps_breaks_one_equation_and_carries_it_on():
    rng = random.Random(0)
    for _ in range(50):
        out = corrupt_steps(STEPS, rng)
        labels = oracle_label(Q, "\n".join(out), "10").labels
        j = next(i for i, (a, b) in enumerate(zip(out, STEPS)) if a != b)   # first change
        # an equation changed (not the answer line), the steps before it intact, the first
        # error there or later (an operand changed to another number of the question is a
        # right step by the oracle's rule) and the answer wrong
        assert j < 3 and first_error(labels) >= j and labels[-1] == 0
        assert out[-1] != "#### 10"                     # the wrong value reaches the answer
    assert corrupt_steps(["#### 3"], rng) is None


def test_truncate_and_augment_rows_are_labelled_exactly():
    rng = random.Random(1)
    cut = truncate_steps(STEPS, rng)
    assert cut and "\n".join(STEPS).startswith("\n".join(cut))
    row = {"id": "p", "question": Q, "gold": "10", "steps": STEPS, "outcome": 1,
           "step_labels": [1.0] * 4}
    rows = augment_rows([row, dict(row)], get_labeler("oracle"), corrupt=2.0, truncate=1.0, seed=0)
    assert rows[0] == row and len(dedupe_rows(rows)) == len(rows)
    assert {r.get("augment") for r in rows[1:]} <= {"corrupt", "truncate"} and len(rows) >= 3
    for r in rows[1:]:
        res = oracle_label(Q, "\n".join(r["steps"]), "10")
        assert r["step_labels"] == [float(x) for x in res.labels]
        assert r["outcome"] == int(res.outcome) == 0
    with pytest.raises(ValueError, match="rate"):
        augment_rows([row], get_labeler("oracle"), corrupt=-1)


def test_prm_label_metrics_on_rows(tiny_prm):
    from rewardlab.eval.prm_eval import prm_label_metrics

    rows = []
    for r in _pb_rows():
        res = oracle_label(r["problem"], "\n".join(r["steps"]), "x")
        rows.append({"id": r["id"], "question": r["problem"], "steps": r["steps"],
                     "step_labels": [1.0 if k < r["label"] or r["label"] < 0 else 0.0
                                     for k in range(len(r["steps"]))],
                     "outcome": int(r["final_answer_correct"])})
        assert res is not None
    m = prm_label_metrics(load_reward_model(tiny_prm, device="cpu"), rows)
    assert m["eval/earliest_error_n_err"] + m["eval/earliest_error_n_correct"] == 3
    assert 0 < m["eval/earliest_error_threshold"] < 1
    assert sum(m["bias/count_by_steps"].values()) == 6
    n_right = sum(r["outcome"] for r in rows)
    assert (m["bias/n_correct"], m["bias/n_wrong"]) == (n_right, 6 - n_right)


def test_repair_steps_fixes_the_first_wrong_equation():
    wrong = ["5 + 8 = 13", "13 - 8 = 6", "6 * 2 = 12", "#### 12"]
    assert repair_steps(wrong) == STEPS
    assert oracle_label(Q, "\n".join(repair_steps(wrong)), "10").labels == [1, 1, 1, 1]
    assert repair_steps(STEPS) is None and repair_steps(["#### 1"]) is None
    row = {"id": "p", "question": Q, "gold": "10", "steps": wrong, "outcome": 0,
           "step_labels": [1.0, 0.0, 0.0, 0.0]}
    rows = augment_rows([row], get_labeler("oracle"), repair=1.0)
    assert [r.get("augment") for r in rows] == [None, "repair"]
    assert rows[1]["step_labels"] == [1.0] * 4 and rows[1]["outcome"] == 1


def test_shorten_steps_stops_one_operation_early():
    short = shorten_steps(STEPS)
    assert short == ["5 + 8 = 13", "13 - 8 = 5", "#### 5"]
    # every computation step stays right; only the answer line shows the missing operation
    assert oracle_label(Q, "\n".join(short), "10").labels == [1, 1, 0]
    assert shorten_steps(["5 + 8 = 13", "#### 13"]) is None            # one equation
    assert shorten_steps(["5 + 8 = 13", "13 - 8 = 5"]) is None         # no answer line
    assert shorten_steps(["5 + 8 = 13", "13 - 8 = 5", "#### 4"]) is None   # answer not the result
    wrong = ["5 + 8 = 13", "13 - 8 = 6", "6 * 2 = 12", "#### 12"]
    row = {"id": "p", "question": Q, "gold": "10", "steps": wrong, "outcome": 0,
           "step_labels": [1.0, 0.0, 0.0, 0.0]}
    rows = augment_rows([row], get_labeler("oracle"), repair=1.0, shorten=1.0)
    # the row, its repair, and a shortened copy of each (the repair's: right steps, wrong answer)
    assert [r.get("augment") for r in rows] == [None, "repair", "shorten", "shorten"]
    assert rows[3]["steps"] == short and rows[3]["step_labels"] == [1.0, 1.0, 0.0]
    assert rows[3]["outcome"] == 0


def test_minimal_pairs_off_by_one_after_the_reference_prefix():
    pairs = minimal_pairs([Q, "not a testbed question ?"], seed=0)
    assert [p.right for p in pairs] == STEPS and [p.kind for p in pairs] == ["+", "-", "*", "answer"]
    for k, p in enumerate(pairs):
        assert p.prefix == STEPS[:k] and p.question == Q
        right = oracle_label(Q, "\n".join(p.prefix + [p.right]), "10").labels
        wrong = oracle_label(Q, "\n".join(p.prefix + [p.wrong]), "10").labels
        assert right[-1] == 1 and wrong[-1] == 0 and right[:-1] == wrong[:-1] == [1] * k
        old, new = int(p.right.split()[-1]), int(p.wrong.split()[-1])
        assert abs(old - new) == 1 and p.wrong.rsplit(" ", 1)[0] == p.right.rsplit(" ", 1)[0]


def test_minimal_pair_metrics_by_hand():
    class Scores:   # a PRM stand-in: the last step's score is looked up by its text
        kind = "prm"
        table = {"5 + 8 = 13": 0.9, "5 + 8 = 14": 0.2, "13 - 8 = 5": 0.4, "13 - 8 = 4": 0.1,
                 "13 - 8 = 6": 0.1, "5 * 2 = 10": 0.7, "5 * 2 = 11": 0.8, "5 * 2 = 9": 0.8,
                 "#### 10": 0.6, "#### 11": 0.3, "#### 9": 0.3}

        def score(self, questions, steps, batch_size=64):
            return [type("R", (), {"step_scores": [0.5] * (len(s) - 1) + [self.table[s[-1]]]})()
                    for s in steps]

    m = minimal_pair_metrics(Scores(), minimal_pairs([Q], seed=0))
    # +: 0.9 > 0.2 separated; -: 0.4 > 0.1 ordered, not separated; *: 0.7 < 0.8; answer: separated
    assert m["probe/n_pairs"] == 4 and m["probe/pair_acc"] == 0.75 and m["probe/separated"] == 0.5
    assert (m["probe/separated/+"], m["probe/separated/-"], m["probe/pair_acc/*"]) == (1.0, 0.0, 0.0)
    assert m["probe/mean_right"] == pytest.approx((0.9 + 0.4 + 0.7 + 0.6) / 4)
    assert minimal_pair_metrics(Scores(), []) == {}

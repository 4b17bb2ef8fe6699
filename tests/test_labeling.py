import json

import pytest

import rewardlab.reward_models.labeling as rollout  # the module whose sampler the test replaces
from rewardlab.data.testbed import generate_problems
from rewardlab.io import DataError
from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.reward_models.labeling import (JudgeLabeler, Labeler, MCLabeler, get_labeler, prefix_prompt,
                                        register_labeler)
from rewardlab.reward_models.pipeline import (make_pairs, make_step_pairs, read_samples,
                                        sample_and_label)

Q = "sam has 3 apples . buys 4 more . loses 2 . how many apples ?"


def test_oracle_labels_a_hand_broken_solution():
    oracle = get_labeler("oracle")
    assert oracle.label_steps(Q, ["3 + 4 = 7", "7 - 2 = 5", "#### 5"], "5") == [1.0, 1.0, 1.0]
    # arithmetic broken at step 2, so the final answer is wrong too
    assert oracle.label_steps(Q, ["3 + 4 = 7", "7 - 2 = 6", "#### 6"], "5") == [1.0, 0.0, 0.0]
    # right arithmetic on an operand nobody established
    assert oracle.label_steps(Q, ["3 + 5 = 8", "8 - 2 = 6", "#### 6"], "5") == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        oracle.label_steps(Q, ["3 + 4 = 7\n7 - 2 = 5", "#### 5"], "5")


def test_registry_guards():
    with pytest.raises(ValueError, match="unknown labeller"):
        get_labeler("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_labeler("oracle")(type("X", (Labeler,), {}))


def _items(n=3):
    return [(p.question, p.steps, p.answer) for p in generate_problems(n=n, seed=2)]


def test_mc_labeler_batches_all_prefixes_in_one_call(monkeypatch):
    items = _items()
    calls = []

    def stub(model, tok, prompts, cfg, seed=None, compute_logprobs=True, **kw):
        calls.append(prompts)
        gold = {prefix_prompt(q, s, k): g for q, s, g in items for k in range(1, len(s))}
        # completion j of every prefix: correct for j = 0 only
        texts = [f"#### {gold[p]}" if j == 0 else "#### -1" for p in prompts for j in range(cfg.n)]
        return type("B", (), {"texts": texts})()

    monkeypatch.setattr(rollout, "generate_rollouts", stub)
    soft = MCLabeler(None, None, n=4, soft=True).label_batch(items)
    hard = MCLabeler(None, None, n=4).label_batch(items)
    assert len(calls) == 2 and len(calls[0]) == sum(len(s) - 1 for _, s, _ in items)  # one each
    for (q, steps, g), s_row, h_row in zip(items, soft, hard):
        assert s_row == [0.25] * (len(steps) - 1) + [1.0]  # last step: the solution's own outcome
        assert h_row == [1.0] * len(steps)


def test_mc_labeler_continues_in_the_policy_prompt(monkeypatch):
    """prompt_fn (e.g. a chat template): every prefix prompt is that prompt + the steps so far."""
    items = _items(2)
    seen = []

    def stub(model, tok, prompts, cfg, seed=None, compute_logprobs=True, **kw):
        seen.extend(prompts)
        return type("B", (), {"texts": ["#### -1"] * (len(prompts) * cfg.n)})()

    monkeypatch.setattr(rollout, "generate_rollouts", stub)
    MCLabeler(None, None, n=2, prompt_fn=lambda p: f"<user>{p.question}</user>\n").label_batch(items)
    want = [f"<user>{q}</user>\n" + "\n".join(s[:k]) + "\n" for q, s, _ in items for k in range(1, len(s))]
    assert seen == want
    assert prefix_prompt("q", ["a", "b"], 1) == "q\na\n"    # default: question + newline


def test_mc_labeler_tiny_model(tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy)
    items = _items(2)
    items.append((Q, ["3 + 4 = 7", "7 - 2 = 6", "#### 6"], "5"))
    kw = dict(n=3, max_new_tokens=8, seed=4)
    soft = get_labeler("mc", model=model, tokenizer=tok, soft=True, **kw).label_batch(items)
    hard = get_labeler("mc", model=model, tokenizer=tok, **kw).label_batch(items)
    for (_, steps, _), s_row, h_row in zip(items, soft, hard):
        assert len(s_row) == len(h_row) == len(steps)
        assert all(0.0 <= x <= 1.0 and x * 3 == round(x * 3) for x in s_row)
        assert h_row == [float(x > 0) for x in s_row]          # hard = any completion correct
    assert soft[0][-1] == 1.0 and soft[2][-1] == 0.0


def test_judge_labeler_plumbing(tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy)
    judge = JudgeLabeler(model, tok, yes_token="+", no_token="-", batch_size=2)
    items = _items(3)
    labels = judge.label_batch(items)
    assert [len(x) for x in labels] == [len(s) for _, s, _ in items]
    assert all(0.0 < x < 1.0 for row in labels for x in row)
    # batching does not change verdicts (left padding, positions from the mask)
    assert judge.label_steps(*items[1]) == pytest.approx(labels[1], abs=1e-5)
    assert "(none)" in judge.prompt(Q, ["3 + 4 = 7"], 0)
    with pytest.raises(ValueError, match="same token"):
        JudgeLabeler(model, tok)          # " Yes" and " No" are both <unk> for the testbed
    with pytest.raises(ValueError, match="must contain"):
        JudgeLabeler(model, tok, template="{question}", yes_token="+", no_token="-")


def test_sample_and_label_rows(tiny_policy):
    from rewardlab.models.sampling import SamplingConfig

    model, tok = load_model_and_tokenizer(tiny_policy)
    probs = generate_problems(n=3, seed=7)
    rows = sample_and_label(model, tok, probs, 2, get_labeler("oracle"),
                            SamplingConfig(max_new_tokens=12), seed=0)
    assert rows and len(rows) <= 6
    for r in rows:
        assert {"id", "question", "steps", "step_labels", "outcome", "answer", "gold",
                "response"} <= set(r)
        assert len(r["steps"]) == len(r["step_labels"]) >= 1 and r["outcome"] in (0, 1)
        assert all(s and "\n" not in s for s in r["steps"])


def _row(pid, steps, labels, outcome):
    return {"id": pid, "question": "q" + pid, "gold": "5", "steps": steps, "step_labels": labels,
            "outcome": outcome}


def test_pairs_and_step_pairs():
    rows = [_row("a", ["3 + 4 = 7", "7 - 2 = 5", "#### 5"], [1, 1, 1], 1),
            _row("a", ["3 + 4 = 7", "7 - 2 = 6", "#### 6"], [1, 0, 0], 0),
            _row("a", ["3 + 4 = 8", "8 - 2 = 6", "#### 6"], [0, 0, 0], 0),
            _row("a", ["3 + 4 = 7", "7 - 2 = 5", "#### 5"], [1, 1, 1], 1),   # duplicate
            _row("b", ["1 + 1 = 2", "#### 2"], [1, 0], 0)]                   # no correct sample
    pairs = make_pairs(rows)
    assert len(pairs) == 2 and all(p["question"] == "qa" for p in pairs)
    assert all(p["chosen"][-1] == "#### 5" and p["rejected"][-1] == "#### 6" for p in pairs)
    assert len(make_pairs(rows, max_pairs_per_problem=1)) == 1
    sp = make_step_pairs(rows)
    got = {(tuple(p["prefix"]), p["chosen_step"], p["rejected_step"]) for p in sp}
    assert got == {((), "3 + 4 = 7", "3 + 4 = 8"), (("3 + 4 = 7",), "7 - 2 = 5", "7 - 2 = 6")}


def test_read_samples_names_file_and_line(tmp_path):
    good = {"question": "q", "gold": "1", "steps": ["#### 1"]}
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "steps": []}) + "\n")
    with pytest.raises(DataError, match=r"s\.jsonl:2: field 'steps'"):
        read_samples(p)
    p.write_text(json.dumps({**good, "step_labels": [1, 0]}) + "\n")
    with pytest.raises(DataError, match=r"s\.jsonl:1: field 'step_labels'"):
        read_samples(p, need_labels=True)

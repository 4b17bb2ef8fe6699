from math import comb

import pytest

import rewardlab.eval.evaluate as rollout  # the module whose sampler the test replaces
from rewardlab.data.problem import Problem
from rewardlab.data.testbed import generate_problems
from rewardlab.eval.evaluate import evaluate_policy, evaluate_responses, majority_vote, pass_at_k
from rewardlab.data.prompts import template_prompt_fn
from rewardlab.models.loading import load_model_and_tokenizer


def test_pass_at_k_matches_the_combinatorial_formula():
    n, c = 5, 2
    for k in range(1, 6):
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    assert [round(pass_at_k(5, 2, k), 6) for k in range(1, 6)] == [0.4, 0.7, 0.9, 1.0, 1.0]
    assert pass_at_k(8, 0, 3) == 0.0 and pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - comb(187, 100) / comb(200, 100))
    for bad in [(5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_majority_vote_ties_and_none():
    assert majority_vote(["3", "5", "5", "3"]) == "3"      # tie: the first to occur
    assert majority_vote(["3", "5", "5"]) == "5"
    assert majority_vote([None, None, "7", None]) == "7"   # None answers never vote
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote([" 4", "4 ", "2"]) == "4"         # compared after stripping


def _problems(n=4, seed=5):
    return generate_problems(n=n, seed=seed)


def test_evaluate_responses_perfect_and_wrong():
    probs = _problems()
    right = [p.solution for p in probs]
    wrong = [p.solution.rsplit("####", 1)[0] + f"#### {int(p.answer) + 1}" for p in probs]
    s, rows = evaluate_responses(probs, right, [[w, r, w] for r, w in zip(right, wrong)])
    assert s["accuracy"] == 1.0 and s["step_acc"] == 1.0 and s["k"] == 3
    assert s["maj@k"] == 0.0                               # two wrong votes beat one right
    assert s["pass@1"] == pytest.approx(1 / 3) and s["pass@2"] == pytest.approx(2 / 3)
    assert s["pass@3"] == 1.0
    assert s["mean_steps"] == pytest.approx(sum(len(p.steps) for p in probs) / len(probs))
    assert rows[0]["pred"] == probs[0].answer and rows[0]["sample_correct"] == [False, True, False]
    s, _ = evaluate_responses(probs, wrong)
    assert s["accuracy"] == 0.0 and "maj@k" not in s


def test_evaluate_policy_with_a_policy_that_always_solves(monkeypatch):
    probs = _problems(3)
    calls = []

    def fake_generate(model, tok, prompts, cfg, seed=None, compute_logprobs=True, **kw):
        calls.append(cfg)
        texts = [probs[i].solution for i in range(len(prompts)) for _ in range(cfg.n)]
        return type("B", (), {"texts": texts, "response_mask": _ones(len(texts), 7)})()

    monkeypatch.setattr(rollout, "generate_rollouts", fake_generate)
    s, rows = evaluate_policy(None, None, probs, k=4, prompt_fn=template_prompt_fn("Q: {question}\n"))
    assert [c.temperature for c in calls] == [0.0, 1.0] and calls[1].n == 4
    assert s["accuracy"] == 1.0 and s["maj@k"] == 1.0 and s["pass@4"] == 1.0
    assert s["mean_length"] == 7 and s["unnecessary_frac"] >= 0
    assert all(r["correct"] for r in rows) and len(rows) == 3


def _ones(b, t):
    import torch
    return torch.ones(b, t, dtype=torch.long)


def test_evaluate_policy_tiny_model(tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy)
    probs = _problems(4)
    s, rows = evaluate_policy(model, tok, probs, k=2, max_new_tokens=10, seed=1)
    assert 0.0 <= s["accuracy"] <= 1.0 and 0.0 <= s["maj@k"] <= 1.0
    assert 0.0 <= s["pass@1"] <= s["pass@2"] <= 1.0
    assert 1 <= s["mean_length"] <= 10
    for key in ("mean_steps", "repeated_frac", "unnecessary_frac", "step_acc"):
        assert key in s
    assert len(rows) == 4 and {"id", "question", "gold", "response", "pred", "correct",
                               "sample_answers", "maj_pred"} <= set(rows[0])
    assert len(rows[0]["sample_answers"]) == 2
    # GSM8K-style problems (no testbed source) carry no testbed diagnostics
    gsm = [Problem(p.id, p.question, p.solution, p.answer, "gsm8k") for p in probs[:2]]
    s2, _ = evaluate_policy(model, tok, gsm, max_new_tokens=4)
    assert "step_acc" not in s2 and "maj@k" not in s2


def test_sample_diagnostics_measure_padding_in_the_samples():
    from rewardlab.data.testbed import TestbedConfig
    probs = generate_problems(TestbedConfig(unnecessary_rate=0.0), n=3, seed=9)
    clean = [p.solution for p in probs]
    # a repeat of the first step inserted after it: correct, unnecessary and repeated
    padded = [p.steps[0] + "\n" + p.solution for p in probs]
    s, rows = evaluate_responses(probs, clean, [[c, d, d, c] for c, d in zip(clean, padded)])
    assert s["unnecessary_frac"] == 0.0 and s["repeated_frac"] == 0.0   # greedy: clean
    n_comp = [len(p.steps) - 1 for p in probs]   # computation steps of the clean solution
    # per padded sample 1 of n+1 computation steps is a padding step; half the samples padded
    want = sum(0.5 / (n + 1) for n in n_comp) / len(probs)
    assert s["sample_unnecessary_frac"] == pytest.approx(want)
    assert s["sample_repeated_frac"] == pytest.approx(want)
    assert s["sample_mean_steps"] == pytest.approx(sum(len(p.steps) + 0.5 for p in probs) / len(probs))
    assert rows[0]["sample_unnecessary_frac"] == pytest.approx(0.5 / (n_comp[0] + 1))

"""Sizes past what can finish are refused at once, naming the size (issue 21)."""

import pytest

from rewardlab.cli.main import main
from rewardlab.data.testbed import generate_problems
from rewardlab.eval.bon import run_bon
from rewardlab.eval.evaluate import evaluate_policy
from rewardlab.io import write_jsonl
from rewardlab.models.sampling import (check_sample_count, generate_rollouts, MAX_SAMPLES_PER_PROMPT,
                                       SamplingConfig)


def test_check_sample_count_limits():
    check_sample_count(200, 64, 48)   # the demo's best-of-N: fine
    with pytest.raises(ValueError, match="n=1,000,000,000,000 samples per prompt"):
        check_sample_count(1, 10 ** 12, 48)
    with pytest.raises(ValueError, match="200 prompts × n=100,000 × max_new_tokens=512"):
        check_sample_count(200, MAX_SAMPLES_PER_PROMPT, 512)


def test_huge_sample_counts_fail_before_any_work(tiny_policy, monkeypatch):
    from rewardlab.models.loading import load_model_and_tokenizer
    model, tok = load_model_and_tokenizer(tiny_policy)
    problems = generate_problems(n=3, seed=1)
    with pytest.raises(ValueError, match="samples per prompt"):
        generate_rollouts(model, tok, ["a"], SamplingConfig(n=10 ** 12))
    # evaluate: refused before the greedy pass, so no generation runs at all
    import rewardlab.eval.evaluate as ev
    monkeypatch.setattr(ev, "generate_rollouts", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(ValueError, match="samples per prompt"):
        evaluate_policy(model, tok, problems, k=10 ** 12)
    with pytest.raises(ValueError, match="samples per prompt"):   # before loading the policy
        run_bon("/nonexistent/policy", problems, {}, max_n=10 ** 12)


def test_cli_eval_huge_k_exits_2(tiny_policy, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    write_jsonl(data, (p.to_dict() for p in generate_problems(n=2, seed=3)))
    rc = main(["eval", "--model", str(tiny_policy), "--data", str(data), "--k", str(10 ** 12)])
    assert rc == 2 and "samples per prompt" in capsys.readouterr().err

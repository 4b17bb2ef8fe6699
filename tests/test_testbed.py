import pytest

from rewardlab.data.testbed import (TestbedConfig, build_tokenizer, diagnostics, generate_problems,
                                    make_splits, oracle_label)

Q = "sam has 3 apples . buys 4 more . loses 2 . how many apples ?"


def test_reference_solutions_are_correct_and_compact():
    tok = build_tokenizer()
    probs = generate_problems(TestbedConfig(unnecessary_rate=0.0), 300, seed=1)
    lens = []
    for p in probs:
        res = oracle_label(p.question, p.solution, p.answer)
        assert res.outcome and all(res.labels)
        assert not any(s.unnecessary or s.repeated for s in res.steps)
        text = p.question + "\n" + p.solution
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text  # exact round trip
        lens.append(len(ids) + 1)
    assert sum(lens) / len(lens) < 64


def test_generation_is_seeded_and_knobs_hold():
    cfg = TestbedConfig(min_ops=3, max_ops=3, max_operand=5, ops="+-", unnecessary_rate=0)
    a = generate_problems(cfg, 50, seed=7)
    b = generate_problems(cfg, 50, seed=7)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in a] != [p.question for p in generate_problems(cfg, 50, seed=8)]
    for p in a:
        assert len(p.steps) == 4 and "*" not in p.solution
    train, test = make_splits(cfg, 200, 50, seed=0)
    assert not {p.question for p in train} & {p.question for p in test}


def test_unnecessary_rate_puts_flagged_steps_in_references():
    probs = generate_problems(TestbedConfig(unnecessary_rate=1.0), 200, seed=2)
    for p in probs:
        res = oracle_label(p.question, p.solution, p.answer)
        assert res.outcome and all(res.labels)
        assert sum(s.unnecessary for s in res.steps) == 1


def test_oracle_on_hand_broken_solution():
    sol = "3 + 4 = 7\n3 + 4 = 7\n4 + 2 = 6\n7 - 2 = 6\n7 - 2 = 5\n9 * 9 = 81\n#### 5"
    steps = oracle_label(Q, sol, "5").steps
    assert [s.correct for s in steps] == [True, True, True, False, True, False, True]
    assert [s.repeated for s in steps] == [False, True, False, False, False, False, False]
    assert [s.unnecessary for s in steps] == [False, True, True, False, False, False, False]
    # an error propagates: a later step using the wrong value is wrong too
    steps = oracle_label(Q, "3 + 4 = 8\n8 - 2 = 6\n#### 6", "5").steps
    assert [s.correct for s in steps] == [False, False, False]
    d = diagnostics(Q, sol, "5")
    assert d["correct"] and d["n_steps"] == 7
    assert d["repeated_frac"] == pytest.approx(1 / 6) and d["unnecessary_frac"] == pytest.approx(2 / 6)


def test_oracle_handles_garbage():
    res = oracle_label(Q, "hello\n\n3 +\n#### x", "5")
    assert res.labels == [0, 0, 0] and not res.outcome and res.answer is None


def test_bad_knobs_fail_loudly():
    with pytest.raises(ValueError, match="min_ops"):
        generate_problems(TestbedConfig(min_ops=5, max_ops=2), 5)
    with pytest.raises(ValueError, match="ops"):
        generate_problems(TestbedConfig(ops="^"), 5)
    with pytest.raises(ValueError, match="out of range"):
        generate_problems(TestbedConfig(), 10**9)


def test_tokenizer_reloads_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    text = Q + "\n3 + 4 = 7\n7 - 2 = 5\n#### 5"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.eos_token == "</s>" and tok2.pad_token == "<pad>"

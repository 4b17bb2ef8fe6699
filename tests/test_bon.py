import numpy as np
import pytest

from rewardlab.data.testbed import generate_problems
from rewardlab.eval.bon import (best_of_n, bon_table, default_ns, run_bon, score_samples,
                                weighted_vote, within_problem_auroc)
from rewardlab.eval.evaluate import pass_at_k
from rewardlab.eval.plots import plot_bon, plot_curves
from rewardlab.reward_models.models import ScoreResult


def _setup(n_problems=6, m=8, seed=0):
    """Problems whose M samples are the reference solution or a wrong answer (known counts)."""
    probs = generate_problems(n=n_problems, seed=seed)
    rng = np.random.default_rng(seed)
    samples, correct = [], []
    for p in probs:
        c = rng.random(m) < rng.uniform(0.1, 0.6)
        samples.append([p.solution if ok else f"{p.steps[0]}\n#### {int(p.answer) + 1 + j}"
                        for j, ok in enumerate(c)])
        correct.append(c.astype(float))
    return probs, samples, np.array(correct)


def test_perfect_scorer_reaches_oracle_and_random_is_mean():
    probs, samples, correct = _setup(40)
    rand = np.random.default_rng(1).random(correct.shape)
    table = best_of_n(probs, samples, {"perfect": correct.tolist(), "noise": rand.tolist()},
                      ns=[1, 2, 4, 8], n_trials=64, seed=3)
    assert set(table) == {"perfect", "noise", "majority", "random", "oracle"}
    for n in (1, 2, 4, 8):
        assert table["perfect"][n] == pytest.approx(table["oracle"][n])
        assert table["random"][n] == pytest.approx(correct.mean(), abs=0.04)  # E = mean accuracy
        exact = np.mean([pass_at_k(8, int(c.sum()), n) for c in correct])
        assert table["oracle"][n] == pytest.approx(exact, abs=0.06)     # sampled pass@N
    assert table["noise"][8] == pytest.approx(correct.mean(), abs=0.2)
    assert table["perfect"][1] == pytest.approx(correct.mean(), abs=0.06)
    assert table["oracle"][8] == pytest.approx((correct.max(1) > 0).mean())  # N = M: exact
    assert table["random"][8] == pytest.approx(correct.mean())


def test_majority_vote_by_hand():
    probs = generate_problems(n=2, seed=4)
    g0, g1 = probs[0].answer, probs[1].answer
    samples = [[f"#### {g0}", "#### 999", f"#### {g0}"],       # majority right
               ["#### 998", f"#### {g1}", "#### 998"]]         # majority wrong
    table = best_of_n(probs, samples, {}, ns=[3], n_trials=4)
    assert table["majority"][3] == 0.5 and table["oracle"][3] == 1.0
    assert table["random"][3] == pytest.approx(0.5)


def test_weighted_vote_by_hand():
    # mass: "7" = 0.1 + 0.2 = 0.3, "9" = 0.9 → 9 although 7 is the majority
    assert weighted_vote(["7", " 7", "9"], [0.1, 0.2, 0.9]) == "9"
    assert weighted_vote(["7", "7", "9"], [0.5, 0.5, 0.9]) == "7"            # 1.0 > 0.9
    assert weighted_vote(["7", "9"], [0.4, 0.4]) == "7"                      # tie: first seen
    assert weighted_vote([None, "9", "7"], [5.0, 0.1, float("-inf")]) == "9"  # None ignored, -inf = 0
    assert weighted_vote([None, ""], [1.0, 1.0]) is None
    with pytest.raises(ValueError, match="negative"):
        weighted_vote(["1"], [-0.5])
    with pytest.raises(ValueError, match="2 answers but 1"):
        weighted_vote(["1", "2"], [1.0])


def test_weighted_vote_in_best_of_n_by_hand():
    probs = generate_problems(n=2, seed=4)
    g0, g1 = probs[0].answer, probs[1].answer
    # problem 0: two wrong "999" (low scores) against one right (high score): the vote is right,
    # majority wrong. Problem 1: right answer once (score 0.3) against "998" twice (0.2 + 0.2):
    # mass 0.4 > 0.3, the vote is wrong while the argmax is right.
    samples = [["#### 999", f"#### {g0}", "#### 999"], ["#### 998", f"#### {g1}", "#### 998"]]
    scores = [[0.1, 0.9, 0.2], [0.2, 0.3, 0.2]]
    table = best_of_n(probs, samples, {"rm": scores}, ns=[3], n_trials=4, votes=["rm"])
    assert table["rm-vote"][3] == 0.5 and table["majority"][3] == 0.0
    assert table["rm"][3] == 1.0
    # N = 1: the vote picks the one sample, i.e. random
    t1 = best_of_n(probs, samples, {"rm": scores}, ns=[1], n_trials=8, votes=["rm"])
    assert t1["rm-vote"][1] == pytest.approx(t1["random"][1])
    with pytest.raises(ValueError, match="vote scorer 'nope'"):
        best_of_n(probs, samples, {"rm": scores}, ns=[3], votes=["nope"])


def test_best_of_n_rejects_bad_shapes():
    probs, samples, correct = _setup(2, 4)
    with pytest.raises(ValueError, match="shape"):
        best_of_n(probs, samples, {"x": [[0.0] * 3] * 2})
    with pytest.raises(ValueError, match="1..4"):
        best_of_n(probs, samples, {}, ns=[8])
    assert default_ns(64) == [1, 2, 4, 8, 16, 32, 64] and default_ns(6) == [1, 2, 4, 6]


class FakePRM:
    kind = "prm"

    @staticmethod
    def aggregate(step_scores, how):
        return {"product": float(np.prod(step_scores)), "min": min(step_scores),
                "last": step_scores[-1]}[how]

    def score(self, questions, steps, batch_size=64):
        return [ScoreResult([0.5] * len(s), 0.0) for s in steps]


def test_score_samples_aggregates_and_skips_empty():
    out = score_samples(FakePRM(), ["q", "q", "q"], [["a", "b"], [], ["c"]], "prm")
    assert out == {"prm-product": [0.25, float("-inf"), 0.5], "prm-min": [0.5, float("-inf"), 0.5],
                   "prm-last": [0.5, float("-inf"), 0.5]}


def test_plots_written(tmp_path):
    table = {"orm": {1: 0.2, 2: 0.3, 4: 0.35}, "random": {"1": 0.2, "2": 0.2, "4": 0.2}}
    p = plot_bon(table, tmp_path / "bon.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    q = plot_curves({"a": [(0, 1.0), (2, 0.5)], "b": []}, "t", "loss", tmp_path / "c" / "curve.png")
    assert q.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp"))      # no temporary left behind
    assert bon_table(table).row_count == 2


@pytest.fixture(scope="session")
def tiny_rms(tiny_policy, tmp_path_factory):
    """Untrained ORM and PRM on the tiny policy, saved like trained ones."""
    from rewardlab.reward_models.models import RMSpec, build_reward_model

    root = tmp_path_factory.mktemp("rms")
    out = {}
    for kind in ("orm", "prm"):
        rm = build_reward_model(tiny_policy, RMSpec(kind=kind), device="cpu", seed=0)
        out[kind] = str(rm.save_pretrained(root / kind))
    return out


def test_run_bon_real_models(tiny_policy, tiny_rms, tmp_path):
    probs = generate_problems(n=3, seed=9)
    res = run_bon(tiny_policy, probs, tiny_rms, max_n=4, max_new_tokens=8, n_trials=2,
                  out=tmp_path, device="cpu")
    table = res["table"]
    assert set(table) == {"orm", "prm-product", "prm-min", "prm-last", "orm-vote",
                          "prm-product-vote", "prm-min-vote", "prm-last-vote", "majority",
                          "random", "oracle"}
    assert res["ns"] == [1, 2, 4] and all(0 <= v <= 1 for t in table.values() for v in t.values())
    assert (tmp_path / "bon.json").exists() and (tmp_path / "samples.jsonl").exists()
    assert (tmp_path / "bon.png").read_bytes()[:4] == b"\x89PNG"
    assert set(res["auroc"]) == {"orm", "prm-product", "prm-min", "prm-last"}
    assert all(set(a) == {"within_problem_auroc", "pooled_auroc"} for a in res["auroc"].values())


def test_within_problem_auroc_sees_through_problem_difficulty():
    """A scorer that knows only how hard each problem is (its score = the problem's share of right
    answers) ranks well pooled over problems but not within one; a scorer that ranks each
    problem's right answers first gets 1.0 whatever its scale per problem."""
    from rewardlab.stats import auroc
    _, _, correct = _setup(n_problems=12, m=16, seed=3)
    rng = np.random.default_rng(0)
    difficulty = np.repeat(correct.mean(axis=1, keepdims=True), correct.shape[1], axis=1)
    w, n = within_problem_auroc(correct, difficulty)
    mixed = [i for i in range(len(correct)) if 0 < correct[i].sum() < correct.shape[1]]
    assert n == len(mixed) and w == pytest.approx(0.5)
    assert auroc(difficulty.ravel(), correct.ravel()) > 0.6
    offset = rng.normal(size=(len(correct), 1)) * 10        # each problem on its own scale
    ranker = correct + 0.1 * rng.random(correct.shape) + offset
    assert within_problem_auroc(correct, ranker)[0] == pytest.approx(1.0)
    assert within_problem_auroc(correct, -ranker)[0] == pytest.approx(0.0)
    # an unscored response (-inf, nan) ranks below every scored one
    c = np.array([[1.0, 0.0, 0.0]])
    assert within_problem_auroc(c, [[0.1, -np.inf, np.nan]])[0] == 1.0
    assert within_problem_auroc(np.ones((2, 3)), np.zeros((2, 3))) == (pytest.approx(np.nan, nan_ok=True), 0)
    with pytest.raises(ValueError, match="same"):
        within_problem_auroc(c, [[0.1, 0.2]])

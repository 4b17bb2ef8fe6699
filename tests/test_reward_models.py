"""Reward models: losses by hand, the label convention, one-pass PRM scoring == per-prefix
scoring, padding invariance, tag conventions, save/reload, and "every head parameter changed"."""

import doctest
import math

import pytest
import torch

from rewardlab.io import DataError
from rewardlab.reward_models.models import (RMSpec, ScoreResult, build_reward_model,
                                            load_reward_model)
from rewardlab.reward_models.losses import aggregate, bt_loss, orm_bce_loss, prm_ce_loss, step_logit, step_probs
from rewardlab.models.batching import last_token_index
from rewardlab.reward_models import data as rm_data
from rewardlab.reward_models.data import collate_prm, encode_prm, resolve_token_id

Q1 = "sam has 3 apples . buys 4 more . loses 2 . how many apples ?"
Q2 = "eva has 5 coins . gets 3 times as many . how many coins ?"
QUESTIONS = [Q1, Q2, Q1, Q2]
STEPS = [["3 + 4 = 7", "7 - 2 = 5", "#### 5"],
         ["5 * 3 = 15", "#### 15"],
         ["3 + 4 = 8", "8 - 2 = 6", "6 + 1 = 7", "7 * 2 = 14", "#### 14"],
         ["#### 15"]]


def _rm(tiny_policy, **kw):
    return build_reward_model(tiny_policy, RMSpec(**kw), device="cpu", seed=0)


# ------------------------------------------------------------------ pure math, by hand

def test_bt_loss_margin_and_centering_by_hand():
    rc, rr = torch.tensor([2.0]), torch.tensor([0.5])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert bt_loss(rc, rr).item() == pytest.approx(-math.log(sig(1.5)), rel=1e-6)
    assert bt_loss(rc, rr, margin=1.0).item() == pytest.approx(-math.log(sig(0.5)), rel=1e-6)
    want = -math.log(sig(0.5)) + 0.1 * (2.0 + 0.5) ** 2
    assert bt_loss(rc, rr, margin=1.0, centering=0.1).item() == pytest.approx(want, rel=1e-6)
    two = bt_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.5, 1.0]))
    assert two.item() == pytest.approx((-math.log(sig(1.5)) - math.log(sig(-1.0))) / 2, rel=1e-6)


def test_prm_soft_ce_by_hand_and_ignored_positions():
    z = torch.tensor([[[0.0, math.log(3.0)], [5.0, -5.0], [0.0, 0.0]]])   # p = 0.75, ~0, 0.5
    assert step_probs(z)[0, 0].item() == pytest.approx(0.75)
    assert step_logit(z)[0, 0].item() == pytest.approx(math.log(3.0))     # logit(0.75)
    y = torch.tensor([[0.5, -100.0, 1.0]])
    want = (-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) - math.log(0.5)) / 2
    assert prm_ce_loss(z, y).item() == pytest.approx(want, rel=1e-6)
    hard = torch.tensor([[1.0, -100.0, -100.0]])
    assert prm_ce_loss(z, hard).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert prm_ce_loss(z, torch.full((1, 3), -100.0)).item() == 0.0


def test_orm_bce_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    y = torch.tensor([[-100.0, 1.0, 1.0]])
    want = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    assert orm_bce_loss(logits, y).item() == pytest.approx(want, rel=1e-6)


def test_aggregate_and_last_token_index():
    assert aggregate([0.5, 0.8, 0.9], "product") == pytest.approx(0.36)
    assert aggregate([0.5, 0.8, 0.9], "min") == 0.5
    assert aggregate([0.5, 0.8, 0.9], "last") == 0.9
    assert all(aggregate([], how) == 1.0 for how in ("product", "min", "last"))
    with pytest.raises(ValueError):
        aggregate([0.5], "mean")
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert last_token_index(right).tolist() == [2, 3]
    assert last_token_index(left).tolist() == [3, 3]


def test_label_convention_example_runs():
    """The -100 label convention is documented by a runnable example in rm_data."""
    res = doctest.testmod(rm_data)
    assert res.attempted >= 5 and res.failed == 0


# ------------------------------------------------------------------ PRM scoring

def _per_prefix_scores(rm, question, steps):
    """Reference: one forward per prefix, reading the LAST tag only."""
    out = []
    for k in range(1, len(steps) + 1):
        enc = rm.encode(question, steps[:k])
        b = collate_prm([enc], None, rm.tokenizer.pad_token_id)
        with torch.no_grad():
            p = step_probs(rm.pair_logits(b["input_ids"], b["attention_mask"]))
        out.append(p[0, enc.tag_positions[-1]].item())
    return out


@pytest.mark.parametrize("form,tag", [("lm", " ки"), ("head", "<extra_0>")])
def test_one_pass_equals_per_prefix(tiny_policy, form, tag):
    rm = _rm(tiny_policy, kind="prm", form=form, tag=tag)
    results = rm.score(QUESTIONS, STEPS)
    for q, steps, res in zip(QUESTIONS, STEPS, results):
        ref = _per_prefix_scores(rm, q, steps)
        assert len(res.step_scores) == len(steps)
        assert max(abs(a - b) for a, b in zip(res.step_scores, ref)) < 1e-5
        assert res.score == pytest.approx(math.prod(res.step_scores), abs=1e-7)


def test_padding_side_and_batch_size_do_not_change_scores(tiny_policy):
    for spec in (dict(kind="prm"), dict(kind="orm"), dict(kind="bt")):
        rm = _rm(tiny_policy, **spec)
        ref = [rm.score([q], [s])[0] for q, s in zip(QUESTIONS, STEPS)]   # unpadded
        for side in ("right", "left"):
            rm.padding_side = side
            got = rm.score(QUESTIONS, STEPS, batch_size=3)
            for a, b in zip(ref, got):
                assert abs(a.score - b.score) < 1e-5
                assert len(a.step_scores) == len(b.step_scores)
                assert all(abs(x - y) < 1e-5 for x, y in zip(a.step_scores, b.step_scores))


def test_score_api_shapes_and_empty_solution(tiny_policy):
    prm = _rm(tiny_policy, kind="prm", aggregation="min")
    res = prm.score([Q1, Q1], [["3 + 4 = 7", "#### 7"], []])
    assert isinstance(res[0], ScoreResult) and len(res[0].step_scores) == 2
    assert res[0].score == min(res[0].step_scores)
    assert res[1].step_scores == [] and res[1].score == 1.0          # K = 0
    assert all(0.0 < p < 1.0 for p in res[0].step_scores)
    assert prm.aggregate([0.5, 0.5], "product") == 0.25
    orm = _rm(tiny_policy, kind="orm")
    [r] = orm.score([Q1], [["3 + 4 = 7"]])
    assert r.step_scores == [] and 0.0 < r.score < 1.0
    assert orm.score([], []) == []
    with pytest.raises(ValueError):
        orm.score([Q1], [])


def test_tag_conventions(tiny_policy):
    base = _rm(tiny_policy, kind="orm").tokenizer
    n = len(base)
    # Math-Shepherd: ' ки' and 'ки' are already tokens -> no resize
    for tag in (" ки", "ки"):
        rm = _rm(tiny_policy, kind="prm", tag=tag)
        assert len(rm.tokenizer) == n
        assert rm.backbone.get_input_embeddings().weight.shape[0] == n
        assert len(rm.score([Q1], [["3 + 4 = 7", "#### 7"]])[0].step_scores) == 2
    # seed blog: '<|prm_label|>' is added as a special token and the embeddings are resized
    rm = _rm(tiny_policy, kind="prm", tag="<|prm_label|>")
    assert len(rm.tokenizer) == n + 1
    assert rm.backbone.get_input_embeddings().weight.shape[0] == n + 1
    assert rm.tag_id == n
    enc = rm.encode(Q1, ["3 + 4 = 7", "#### 7"])
    assert [enc.input_ids[p] for p in enc.tag_positions] == [n, n]
    res = rm.score([Q1], [["3 + 4 = 7", "#### 7"]])[0]
    assert len(res.step_scores) == 2


def test_merged_or_contained_tag_is_refused(tiny_policy):
    rm = _rm(tiny_policy, kind="prm", tag="has")              # one token alone ...
    with pytest.raises(ValueError, match="merged with neighbouring text"):
        rm.score(["how many coins ?"], [["sam"]])        # ... but "samhas" is one unknown word
    rm = _rm(tiny_policy, kind="prm", tag=" ки")
    with pytest.raises(ValueError, match="step 2 contains the step tag"):
        rm.score([Q1], [["3 + 4 = 7", "7 ки"]])
    tok = rm.tokenizer
    with pytest.raises(ValueError, match="not a single token"):
        resolve_token_id(tok, "<|prm_label|>")
    with pytest.raises(ValueError, match="merged"):
        encode_prm(tok, "how many ?", ["sam"], "has", resolve_token_id(tok, "has"))


# ------------------------------------------------------------------ save / reload

@pytest.mark.parametrize("spec", [dict(kind="prm", form="lm", tag="<|prm_label|>"),
                                  dict(kind="prm", form="head", tag=" ки", aggregation="last"),
                                  dict(kind="orm"), dict(kind="bt")])
def test_save_reload_scores_identical(tiny_policy, tmp_path, spec):
    rm = _rm(tiny_policy, **spec)
    if rm.head is not None and rm.head.bias is not None:   # a non-trivial head (bias starts at 0)
        torch.nn.init.normal_(rm.head.bias)
    before = rm.score(QUESTIONS, STEPS)
    rm.save_pretrained(tmp_path / "rm")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "rewardlab_rm.json",
              "README.md"):
        assert (tmp_path / "rm" / f).exists()
    assert not (tmp_path / "rm" / "rm_head.safetensors").exists()   # the head is in the model
    again = load_reward_model(tmp_path / "rm", device="cpu")
    assert again.kind == spec["kind"] and again.spec == rm.spec
    after = again.score(QUESTIONS, STEPS)
    for a, b in zip(before, after):
        assert a.step_scores == b.step_scores and a.score == b.score


def test_load_plain_policy_needs_a_spec(tiny_policy):
    with pytest.raises(DataError, match="rewardlab_rm.json"):
        load_reward_model(tiny_policy, device="cpu")
    rm = load_reward_model(tiny_policy, device="cpu", spec=RMSpec(kind="prm", tag=" ки"))
    assert len(rm.score([Q1], [["#### 7"]])[0].step_scores) == 1


# ------------------------------------------------------------------ every head parameter changes

def _one_step(rm, loss):
    params = {n: p.detach().clone() for n, p in rm.named_parameters()}
    opt = torch.optim.AdamW(rm.parameters(), lr=1e-2)
    loss.backward()
    opt.step()
    return {n: not torch.equal(params[n], p.detach()) for n, p in rm.named_parameters()}


@pytest.mark.parametrize("kind,form", [("orm", "lm"), ("bt", "lm"), ("prm", "head"), ("prm", "lm")])
def test_every_head_parameter_changes_after_a_step(tiny_policy, kind, form):
    from rewardlab.reward_models.data import collate_orm, collate_pairs

    rm = _rm(tiny_policy, kind=kind, form=form)
    rm.train()
    if kind == "prm":
        b = collate_prm([rm.encode(q, s) for q, s in zip(QUESTIONS, STEPS)],
                        [[1.0] * (len(s) - 1) + [0.0] for s in STEPS], rm.tokenizer.pad_token_id)
        loss = prm_ce_loss(rm.pair_logits(b["input_ids"], b["attention_mask"]), b["labels"])
    elif kind == "orm":
        b = collate_orm([rm.encode(q, s) for q, s in zip(QUESTIONS, STEPS)], [1, 0, 0, 1],
                        rm.tokenizer.pad_token_id)
        loss = orm_bce_loss(rm.token_logits(b["input_ids"], b["attention_mask"]), b["labels"])
    else:
        encs = [rm.encode(q, s) for q, s in zip(QUESTIONS, STEPS)]
        b = collate_pairs(encs[:2], encs[2:], rm.tokenizer.pad_token_id)
        r = rm.token_logits(b["input_ids"], b["attention_mask"])[torch.arange(4), b["read_index"]]
        loss = bt_loss(r[:2], r[2:], margin=0.5, centering=0.01)
    changed = _one_step(rm, loss)
    if rm.head is not None:   # the head is the classification model's own `score`
        heads = {n: c for n, c in changed.items() if n.startswith("backbone.score.")}
        want = {"backbone.score.weight"} | ({"backbone.score.bias"} if kind == "prm" else set())
        assert set(heads) == want and all(heads.values())
    else:  # LM-head form: the label tokens' unembedding rows are the head
        w = rm.backbone.get_output_embeddings().weight
        before = {n: p for n, p in changed.items()}
        assert before["backbone.model.embed_tokens.weight"] or before.get("backbone.lm_head.weight")
        assert w.grad[rm.good_id].abs().sum() > 0 and w.grad[rm.bad_id].abs().sum() > 0
    assert all(changed.values()), [n for n, c in changed.items() if not c]


@pytest.mark.parametrize("form,tag", [("lm", " ки"), ("head", "<extra_0>")])
def test_fast_scoring_equals_the_transformers_pass(tiny_policy, form, tag, monkeypatch):
    """engine=auto scores through the fast pass (questions shared by their solutions), with the
    step scores of the transformers pass; the fast pass is really taken."""
    import rewardlab.reward_models.models as rm_mod
    rm = _rm(tiny_policy, kind="prm", form=form, tag=tag)
    torch.manual_seed(1)
    with torch.no_grad():   # large weights: every position and key matters
        for p in rm.backbone.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.25)
    qs, steps = QUESTIONS * 3 + ["x"], STEPS * 3 + [[]]
    calls = []
    real = rm_mod.response_states
    monkeypatch.setattr(rm_mod, "response_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = rm.score(qs, steps, batch_size=5)
    assert calls
    rm.engine = "hf"
    calls.clear()
    ref = rm.score(qs, steps, batch_size=5)
    assert not calls
    assert fast[-1].step_scores == [] and len({round(s, 4) for r in ref for s in r.step_scores}) > 5
    for a, b in zip(fast, ref):
        assert len(a.step_scores) == len(b.step_scores)
        assert all(abs(x - y) < 1e-5 for x, y in zip(a.step_scores, b.step_scores))
        assert abs(a.score - b.score) < 1e-5


@pytest.mark.parametrize("kind", ["orm", "prm"])
def test_ensemble_reduces_its_members_scores(tiny_policy, tmp_path, kind):
    from rewardlab.reward_models.models import EnsembleRM, save_ensemble
    # a head form, so that the seed draws another head for each member
    spec = {"kind": kind} if kind == "orm" else {"kind": "prm", "form": "head", "tag": " ки"}
    paths = [build_reward_model(tiny_policy, RMSpec(**spec), device="cpu", seed=s)
             .save_pretrained(tmp_path / f"m{s}") for s in (0, 1)]
    members = [load_reward_model(p, device="cpu").score(QUESTIONS, STEPS) for p in paths]
    for reduce, f in [("mean", lambda xs: sum(xs) / len(xs)), ("min", min)]:
        save_ensemble(tmp_path / reduce, paths, reduce)
        ens = load_reward_model(tmp_path / reduce, device="cpu")
        assert isinstance(ens, EnsembleRM) and ens.kind == kind
        got = ens.score(QUESTIONS, STEPS)
        for i, r in enumerate(got):
            if kind == "orm":
                assert r.score == pytest.approx(f([m[i].score for m in members]))
            else:
                want = [f([m[i].step_scores[k] for m in members]) for k in range(len(STEPS[i]))]
                assert r.step_scores == pytest.approx(want)
                assert r.score == pytest.approx(aggregate(want, ens.spec.aggregation))
    assert (tmp_path / "mean" / "rewardlab_ensemble.json").exists()
    # the members' scores differ, so the reduction is not one member's
    assert [r.score for r in members[0]] != [r.score for r in members[1]]


def test_ensemble_refuses_mixed_kinds_and_bad_manifests(tiny_policy, tmp_path):
    import json
    from rewardlab.reward_models.models import save_ensemble
    orm = build_reward_model(tiny_policy, RMSpec(kind="orm"), device="cpu").save_pretrained(tmp_path / "o")
    prm = build_reward_model(tiny_policy, RMSpec(kind="prm", tag=" ки"), device="cpu").save_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match="one kind"):
        save_ensemble(tmp_path / "e", [orm, prm])
    with pytest.raises(ValueError, match="reduce"):
        save_ensemble(tmp_path / "e", [orm], "max")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "rewardlab_ensemble.json").write_text(json.dumps({"members": "o"}))
    with pytest.raises(DataError, match="rewardlab_ensemble.json.*members"):
        load_reward_model(tmp_path / "bad", device="cpu")
    (tmp_path / "bad" / "rewardlab_ensemble.json").write_text(json.dumps({"members": [str(orm), str(prm)]}))
    with pytest.raises(DataError, match="one kind"):
        load_reward_model(tmp_path / "bad", device="cpu")

"""Issue 17's reward designs in the RL loop: PURE min-form, PRIME (online implicit PRM) and
VinePPO (Monte-Carlo step values). The math is tested by hand in test_refine / test_advantages /
test_losses; here: the Monte-Carlo values by hand (a scripted sampler), and each design end to
end on a tiny testbed policy (runs, trains what it should, resumes exactly)."""

import math

import pytest
import torch

from rewardlab.config import load_config
from rewardlab.rl import vine as vine_mod
from rewardlab.rl.config import RLConfig
from rewardlab.rl.trainer import RLTrainer, train_rl
from rewardlab.rl.vine import distinct_prefixes, mc_step_values, step_prefix


def _cfg(tmp_path, policy, probs, name, extra=()):
    ov = [f"out={tmp_path / name}", f"model.name_or_path={policy}",
          f"data.train_path={probs / 'train.jsonl'}", f"data.test_path={probs / 'test.jsonl'}",
          "steps=2", "prompts_per_step=4", "sampling.n=2", "sampling.max_new_tokens=16",
          "minibatch_size=4", "ppo_epochs=1", "eval_every=0", "eval_k=0", "save_every=1",
          "progress=false", "lr=1e-3", *extra]
    return load_config(RLConfig, None, ov)


PRIME = ["algo=ppo", "advantage=prime", "kl.in_reward=false", "kl.estimator=k3", "prime.lr=1e-3"]
VINE = ["algo=ppo", "advantage=vine", "kl.in_reward=false", "kl.estimator=k3", "vine.k=2"]


# --- VinePPO's Monte-Carlo values by hand --------------------------------------------------------

class _Scripted:
    """Stands in for generate_rollouts: k scripted completions per prefix prompt."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def __call__(self, model, tok, prompts, cfg, seed=None, compute_logprobs=True):
        self.calls.append((list(prompts), cfg.n, seed))
        texts = [c for p in prompts for c in self.script[p]]
        assert len(texts) == cfg.n * len(prompts)
        return type("B", (), {"texts": texts})()


def test_step_prefixes():
    assert step_prefix("Q\n", ["a", "b"], 0) == "Q\n"
    assert step_prefix("Q\n", ["a", "b"], 1) == "Q\na\n"
    assert step_prefix("Q\n", ["a", "b"], 2, "\n\n") == "Q\na\n\nb\n\n"
    jobs, where = distinct_prefixes(["Q\n", "Q\n", "R\n"], [["a", "b"], ["a"], []], ["5", "5", "1"])
    assert [j[0] for j in jobs] == ["Q\n", "Q\na\n", "R\n"] and where == [[0, 1], [0], [2]]


def test_mc_step_values_by_hand(monkeypatch):
    from rewardlab.models.sampling import SamplingConfig
    fake = _Scripted({
        "Q\n": ["2 + 3 = 5\n#### 5", "#### 4"],            # V̂(s_0) = 1/2
        "Q\n2 + 3 = 5\n": ["#### 5", "#### 5"],             # V̂(s_1) = 1 (graded with the step)
    })
    monkeypatch.setattr(vine_mod, "generate_rollouts", fake)
    vals = mc_step_values(None, None, ["Q\n", "Q\n"], [["2 + 3 = 5", "#### 5"], ["#### 4"]],
                          ["5", "5"], [1.0, 0.0], k=2, sampling=SamplingConfig(n=7), seed=11)
    # response 1: [V̂(s_0), V̂(s_1), R]; response 2 (one step) shares s_0: [V̂(s_0), R]
    assert vals == [[0.5, 1.0, 1.0], [0.5, 0.0]]
    assert fake.calls == [(["Q\n", "Q\n2 + 3 = 5\n"], 2, 11)]   # one call, distinct prefixes, n = k
    # rewards other than 1/0 give their mean
    vals = mc_step_values(None, None, ["Q\n"], [["2 + 3 = 5", "#### 5"]], ["5"], [2.0], k=2,
                          sampling=SamplingConfig(), correct_reward=2.0, incorrect_reward=-1.0)
    assert vals == [[0.5, 2.0, 2.0]]


# --- the designs in the RL loop -------------------------------------------------------------------

def test_min_form_design_refines_the_prm_scores(tmp_path, tiny_policy, problems_dir):
    from rewardlab.data.steps import step_texts
    from rewardlab.reward_models.models import RMSpec, load_reward_model
    from rewardlab.rewards.refine import min_form

    extra = [f"reward.prm.path={tiny_policy}", 'reward.prm.tag=" ки"', "reward.prm.refine=min_form",
             "reward.prm.temperature=0.5", "reward.prm.signed=true", "steps=1"]
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "minform", extra))
    problems, batch = tr.rollout(0)
    sb = tr.score(problems, batch)
    direct = load_reward_model(tiny_policy, device="cpu", spec=RMSpec(tag=" ки"))
    steps = [step_texts(t, tr.step_sep) for t in batch.texts]
    scores = [r.step_scores for r in direct.score([problems[i].question for i in batch.prompt_index],
                                                   steps)]
    want = sum(sum(min_form(s, 0.5, signed=True)) for s in scores) / len(scores)
    assert any(scores) and sb.metrics["reward/prm_return"] == pytest.approx(want, abs=1e-5)
    assert tr.prime_rm is None and not any(k.startswith(("prime/", "vine/")) for k in sb.metrics)


def test_prime_trains_the_implicit_prm_and_resumes_exactly(tmp_path, tiny_policy, problems_dir):
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "prime1", [*PRIME, "steps=1"]))
    assert tr.prime_rm is not None and tr.prime_ref is tr.ref
    before = [p.detach().clone() for p in tr.prime_rm.parameters()]
    pol = [p.detach().clone() for p in tr.policy.parameters()]
    res = tr.train()
    assert all(not torch.equal(a, b) for a, b in zip(before, tr.prime_rm.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(pol, tr.policy.parameters()))
    # step 0: π_φ = π_ref, so the implicit rewards are 0 and the loss is log 2
    assert res["prime/rm_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert res["prime/implicit_return"] == pytest.approx(0.0, abs=1e-6)
    assert list((tmp_path / "prime1" / "checkpoints").glob("step_*/prime_rm/config.json"))

    full = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "pfull", [*PRIME, "steps=3"]))
    part = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "ppart", [*PRIME, "steps=3", "stop_at=1"]))
    assert part["rl/stopped_at"] == 1
    resumed = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "ppart", [*PRIME, "steps=3"]))
    assert full["prime/rm_loss"] != pytest.approx(math.log(2), abs=1e-4)   # π_φ has moved
    for k in ("reward/total", "actor/pg_loss", "kl/ref", "prime/rm_loss", "prime/implicit_return",
              "prime/rm_grad_norm"):
        assert resumed[k] == pytest.approx(full[k], abs=1e-6), k


def test_prime_without_kl_loads_its_own_reference(tmp_path, tiny_policy, problems_dir):
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "prime0", [*PRIME, "kl.coef=0", "steps=1"]))
    assert tr.ref is None and tr.prime_ref is not None
    res = tr.train()
    assert "kl/ref" not in res and res["prime/rm_loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_vine_runs_and_resumes_exactly(tmp_path, tiny_policy, problems_dir):
    full = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "vfull", [*VINE, "steps=2"]))
    assert full["vine/rollouts"] >= 2 * 4 and 0.0 <= full["vine/value_start"] <= 1.0
    assert full["actor/grad_norm"] >= 0
    part = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "vpart", [*VINE, "steps=2", "stop_at=1"]))
    assert part["rl/stopped_at"] == 1
    resumed = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "vpart", [*VINE, "steps=2"]))
    for k in ("reward/total", "actor/pg_loss", "vine/value_start", "vine/rollouts"):
        assert resumed[k] == pytest.approx(full[k], abs=1e-6), k


def test_vine_advantages_come_from_the_mc_values(tmp_path, tiny_policy, problems_dir, monkeypatch):
    """The scored batch's advantages are vine_advantages of the MC values at the step ends."""
    import rewardlab.rl.trainer as trainer_mod
    from rewardlab.rl.advantages import vine_advantages
    seen = {}
    real = trainer_mod.mc_step_values

    def spy(*args, **kwargs):
        seen["values"] = real(*args, **kwargs)
        return seen["values"]
    monkeypatch.setattr(trainer_mod, "mc_step_values", spy)
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "vspy", VINE))
    problems, batch = tr.rollout(0)
    sb = tr.score(problems, batch)
    mask = batch.response_mask.float()
    from rewardlab.rewards.steps import batch_step_end_positions
    ends = batch_step_end_positions(batch.response_ids, batch.response_mask, tr.tok)
    last = (mask.sum(1) - 1).long().tolist()
    ends = [e[:len(v) - 1] if e else [last[i]] for i, (e, v) in enumerate(zip(ends, seen["values"]))]
    assert torch.equal(sb.advantages, vine_advantages(seen["values"], ends, mask) * mask)
    R = [v[-1] for v in seen["values"]]   # V̂(s_K) = the response's own success reward (1/0)
    assert all(r in (0.0, 1.0) for r in R) and sum(R) / len(R) == pytest.approx(sb.metrics["reward/success"])


@pytest.mark.parametrize("extra,msg", [
    (["reward.prm.refine=min_form", "reward.prm.temperature=0"], "temperature must be > 0"),
    (["advantage=prime", "kl.in_reward=true"], "kl.in_reward=false"),
    (["advantage=vine", "kl.in_reward=false", "vine.k=0"], "vine.k must be >= 1"),
    (["advantage=prime", "kl.in_reward=false", "sampling.n=1"], "sampling.n >= 2"),
    (["advantage=prime", "kl.in_reward=false", "prime.beta=0"], "prime.beta"),
    (["advantage=vine", "kl.in_reward=false", "reward.success=false",
      "reward.orm.path=x"], "reward.success=true"),
])
def test_design_settings_are_checked(tmp_path, tiny_policy, problems_dir, extra, msg):
    with pytest.raises(ValueError, match=msg):
        _cfg(tmp_path, tiny_policy, problems_dir, "bad", extra).validate()


def test_demo_offers_the_designs(tmp_path):
    from rewardlab.demo import DESIGNS, USES_PRM, DemoConfig, rl_config
    cfg = DemoConfig(out=str(tmp_path))
    rc = rl_config(cfg, "prm_min_form", 0, tmp_path / "sft", tmp_path / "rm")
    assert "prm_min_form" in USES_PRM and rc.reward.prm.refine == "min_form"
    assert rc.reward.prm.path == str(tmp_path / "rm" / "prm")
    assert rl_config(cfg, "prime", 0, tmp_path, tmp_path).advantage_name() == "prime"
    vine = rl_config(cfg, "vine", 0, tmp_path, tmp_path)
    assert vine.advantage_name() == "vine" and not vine.uses_critic and vine.reward.prm.path is None
    assert {"prime", "vine"}.isdisjoint(USES_PRM) and {"prm_min_form", "prime", "vine"} <= set(DESIGNS)


@pytest.mark.parametrize("name", ["ppo_prm_min_form", "prime", "vine"])
def test_shipped_configs_load(name):
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = load_config(RLConfig, str(path), [])
    cfg.validate()
    assert cfg.advantage_name() == {"ppo_prm_min_form": "gae", "prime": "prime", "vine": "vine"}[name]

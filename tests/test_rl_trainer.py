"""The RL loop end to end on a tiny testbed policy (plumbing, resume, parameter updates)."""

import json

import pytest
import torch

from rewardlab.config import load_config
from rewardlab.rl.config import RLConfig
from rewardlab.rl.trainer import RLTrainer, adaptive_kl_coef, train_rl
from rewardlab.training.engine import epoch_batch


def prompt_batch_indices(n, per_step, step, seed):
    return epoch_batch(n, per_step, step, seed, seed_stride=7_919)  # the RL trainer's prompt stream


def _cfg(tmp_path, policy, probs, name, extra=()):
    ov = [f"out={tmp_path / name}", f"model.name_or_path={policy}",
          f"data.train_path={probs / 'train.jsonl'}", f"data.test_path={probs / 'test.jsonl'}",
          "steps=2", "prompts_per_step=4", "sampling.n=2", "sampling.max_new_tokens=16",
          "minibatch_size=4", "ppo_epochs=1", "eval_every=0", "eval_k=0", "save_every=1",
          "progress=false", "lr=1e-3", *extra]
    return load_config(RLConfig, None, ov)


def test_prompt_batches_are_a_function_of_seed_and_step():
    a = prompt_batch_indices(100, 8, 3, seed=1)
    assert a == prompt_batch_indices(100, 8, 3, seed=1) and len(set(a)) == 8
    assert a != prompt_batch_indices(100, 8, 3, seed=2)
    epoch0 = sum((prompt_batch_indices(16, 4, s, 0) for s in range(4)), [])
    assert sorted(epoch0) == list(range(16))


def test_adaptive_kl_moves_towards_target():
    assert adaptive_kl_coef(0.1, 1.0, 0.05, 100, 1000) > 0.1
    assert adaptive_kl_coef(0.1, 0.0, 0.05, 100, 1000) < 0.1


def test_ppo_updates_every_policy_and_value_parameter(tmp_path, tiny_policy, problems_dir):
    cfg = _cfg(tmp_path, tiny_policy, problems_dir, "ppo", ["steps=1", "reward.incorrect_reward=-1.0"])
    tr = RLTrainer(cfg)
    before = {n: p.detach().clone() for n, p in tr.policy.named_parameters()}
    vbefore = {n: p.detach().clone() for n, p in tr.value.named_parameters()}
    seen = []
    res = tr.train(on_step=lambda step, m: seen.append((step, m["reward/success"])))
    assert seen == [(1, res["reward/success"])]
    changed = [n for n, p in tr.policy.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before), set(before) - set(changed)
    assert all(not torch.equal(vbefore[n], p) for n, p in tr.value.named_parameters())
    for key in ("reward/success", "response/steps", "kl/ref", "critic/vf_loss", "actor/clipfrac",
                "actor/entropy", "hack/repeated_frac", "hack/unnecessary_frac"):
        assert key in res, key
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1
    assert (tmp_path / "ppo" / "final" / "config.json").exists()
    card = (tmp_path / "ppo" / "final" / "README.md").read_text()   # the model card
    assert "# rewardlab RL model" in card and f"Base model: `{tiny_policy}`" in card
    assert "| reward/success |" in card
    assert list((tmp_path / "ppo" / "tb").iterdir())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])   # bfloat16: mixed precision
def test_rl_resume_is_exact(tmp_path, tiny_policy, problems_dir, dtype):
    d = [f"model.dtype={dtype}"]
    full = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "full", ["steps=3", *d]))
    part = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "part", ["steps=3", "stop_at=1", *d]))
    assert part["rl/stopped_at"] == 1
    resumed = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "part", ["steps=3", *d]))
    for k in ("reward/total", "actor/pg_loss", "critic/vf_loss", "kl/ref"):
        assert resumed[k] == pytest.approx(full[k], abs=1e-5), k
    from rewardlab.models.loading import load_model_and_tokenizer
    ma, _ = load_model_and_tokenizer(tmp_path / "full" / "final")
    mb, _ = load_model_and_tokenizer(tmp_path / "part" / "final")
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ma.parameters(), mb.parameters()))


@pytest.mark.parametrize("extra", [
    ["algo=grpo", "advantage=grpo_outcome", "kl.in_reward=false", "kl.estimator=k3"],
    ["algo=grpo", "advantage=rloo", "ratio=sequence"],
    ["algo=ppo", "value.kind=shared", "kl.adaptive=true"],
])
def test_algorithm_variants_run(tmp_path, tiny_policy, problems_dir, extra):
    res = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "v", ["steps=1", "entropy_coef=0.01", *extra]))
    assert 0.0 <= res["reward/success"] <= 1.0 and res["actor/grad_norm"] > 0


def test_single_update_grpo_skips_old_logprob_pass(tmp_path, tiny_policy, problems_dir):
    extra = ["steps=1", "algo=grpo", "kl.in_reward=false", "kl.estimator=k3", "entropy_coef=0.01",
             "minibatch_size=64", "ppo_epochs=1"]
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "fused", extra))
    assert tr.on_policy_single_update(4)
    res = tr.train()
    assert res["actor/ratio_mean"] == pytest.approx(1.0) and res["actor/clipfrac"] == 0.0
    assert "kl/ref" in res


@pytest.mark.parametrize("in_reward", ["true", "false"])
def test_zero_kl_coef_needs_no_reference_model(tmp_path, tiny_policy, problems_dir, in_reward):
    """kl.coef = 0: the reference model is neither loaded nor run, and the update is the one a
    KL term with weight 0 would give."""
    common = ["steps=1", "algo=grpo", f"kl.in_reward={in_reward}", "minibatch_size=8", "seed=3",
              "entropy_coef=0.01"]  # a gradient even when every sample gets the same reward
    free = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "nokl", [*common, "kl.coef=0"]))
    assert free.ref is None
    weighted = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "kl0", [*common, "kl.coef=1e-30"]))
    assert weighted.ref is not None
    res_free, res_w = free.train(), weighted.train()
    assert "kl/ref" not in res_free and "kl/ref" in res_w
    assert res_free["actor/grad_norm"] > 0  # it did train
    for a, b in zip(free.policy.parameters(), weighted.policy.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("style, rewarded", [("gsm8k", [0.0, 1.0]), ("math", [1.0, 0.0])])
def test_data_style_picks_how_responses_are_graded(tmp_path, tiny_policy, problems_dir, style, rewarded):
    """data.style=math grades the last \\boxed{}; gsm8k the text after ####, else the last number."""
    from rewardlab.data.problem import Problem
    from rewardlab.models.sampling import RolloutBatch

    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, style,
                        ["algo=grpo", "kl.coef=0", f"data.style={style}"]))
    prob = Problem(id="q", question="What is 2 + 3?", answer="5", solution="#### 5", source="x")
    texts = ["So it is \\boxed{5}.\n\nCheck: 7", "2 + 3 = 5\n#### 5"]
    ids = torch.tensor([tr.tok(t, add_special_tokens=False)["input_ids"][:6] for t in texts])
    batch = RolloutBatch(prompt_ids=torch.ones(2, 3, dtype=torch.long), prompt_mask=torch.ones(2, 3),
                         response_ids=ids, response_mask=torch.ones_like(ids), texts=texts,
                         prompt_index=[0, 0], finished=torch.ones(2, dtype=torch.bool))
    sb = tr.score([prob], batch)
    assert sb.token_rewards.sum(1).tolist() == rewarded
    assert sb.metrics["response/steps"] == (1.5 if style == "math" else 2.0)   # paragraphs vs lines


def test_bad_data_style_is_rejected(tmp_path, tiny_policy, problems_dir):
    with pytest.raises(ValueError, match="data.style must be gsm8k or math"):
        _cfg(tmp_path, tiny_policy, problems_dir, "bad", ["data.style=latex"])


@pytest.mark.parametrize("extra", [
    ["algo=grpo", "kl.in_reward=false", "kl.estimator=k3"],   # old log-probs from the update
    ["algo=ppo"],                                              # old log-prob pass, separate critic
    ["algo=ppo", "value.kind=shared", "ppo_epochs=2"],
])
def test_micro_batches_give_the_minibatch_update(tmp_path, tiny_policy, problems_dir, extra):
    """micro_batch_size: the minibatch's gradient accumulated over passes of 3, 3 and 2 responses
    (different token counts, so an unweighted mean of the passes would differ)."""
    common = ["steps=1", "minibatch_size=8", "entropy_coef=0.01", "seed=5", *extra]  # B = 4 × 2
    whole = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "whole", common))
    micro = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "micro", [*common, "micro_batch_size=3"]))
    res_w, res_m = whole.train(), micro.train()
    keys = ["actor/grad_norm", "actor/pg_loss", "actor/entropy", "kl/ref"]
    keys += ["critic/vf_loss"] if "algo=ppo" in extra else []
    for k in keys:
        assert res_m[k] == pytest.approx(res_w[k], rel=1e-4, abs=1e-7), k
    for a, b in zip(whole.policy.parameters(), micro.policy.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def _update_gradients(tr):
    """Train ``tr`` one step; the accumulated gradient of every parameter before the step."""
    grads, step = [], tr.opt.step

    def spy(*args, **kwargs):
        grads.extend(p.grad.clone() for grp in tr.opt.param_groups for p in grp["params"])
        return step(*args, **kwargs)
    tr.opt.step = spy
    return tr.train(), grads


@pytest.mark.parametrize("extra", [
    ["algo=grpo", "advantage=dr_grpo", "kl.in_reward=false", "kl.estimator=k3"],  # token-sum-norm
    ["algo=grpo", "ratio=sequence", "kl.in_reward=false", "kl.estimator=k3"],     # GSPO: seq-mean
    ["algo=ppo", "loss_agg=seq-mean-token-sum"],    # policy by responses, value loss by tokens
])
def test_micro_batches_give_the_minibatch_gradient_for_sequence_aggregations(
        tmp_path, tiny_policy, problems_dir, extra):
    """Sequence-level loss_agg: passes of 3, 3 and 2 responses weighted by their share of the
    responses (B'·L for token-sum-norm) give the minibatch's gradient. Seed 0: responses of 9
    to 16 tokens, so token shares (the token-mean weighting) would be ~1 % off. The gradient is
    compared, not the parameters after AdamW, whose first step turns float32 rounding in
    gradient entries near its ε (~1e-8) into parameter differences of up to 2·lr."""
    common = ["steps=1", "minibatch_size=8", "entropy_coef=0.01", "seed=0", *extra]
    res_w, g_w = _update_gradients(RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "whole", common)))
    res_m, g_m = _update_gradients(RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "micro",
                                                  [*common, "micro_batch_size=3"])))
    keys = ["actor/grad_norm", "actor/pg_loss", "actor/entropy", "actor/clipfrac"]
    keys += ["critic/vf_loss"] if "algo=ppo" in extra else ["actor/kl_loss"]
    for k in keys:
        assert res_m[k] == pytest.approx(res_w[k], rel=1e-4, abs=1e-7), k
    scale = max(g.abs().max().item() for g in g_w)
    assert max((a - b).abs().max().item() for a, b in zip(g_w, g_m)) <= 1e-4 * scale


def test_plain_causal_lm_as_lm_head_prm_by_its_step_tag(tmp_path, tiny_policy, problems_dir):
    # Math-Shepherd style: any causal LM, a step tag after every step, P('+') vs P('-') there
    from rewardlab.io import DataError
    from rewardlab.reward_models.models import RMSpec, load_reward_model

    prm = ["reward.prm.alpha=1.0", "reward.prm.refine=clip", "steps=1"]
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "tagged",
                        [f"reward.prm.path={tiny_policy}", 'reward.prm.tag=" ки"', *prm]))
    assert tr.prm.spec.tag == " ки" and tr.prm.spec.form == "lm"
    problems, batch = tr.rollout(0)
    sb = tr.score(problems, batch)
    direct = load_reward_model(tiny_policy, device="cpu", spec=RMSpec(tag=" ки"))
    from rewardlab.data.steps import step_texts
    steps = [step_texts(t, tr.step_sep) for t in batch.texts]
    want = [r.step_scores for r in direct.score([problems[i].question for i in batch.prompt_index], steps)]
    flat = [s for sc in want for s in sc]
    assert flat and sb.metrics["reward/prm_step_mean"] == pytest.approx(sum(flat) / len(flat), abs=1e-6)
    # without the tag, a plain LM is not a reward model: the error says how to use one
    with pytest.raises(DataError, match="reward.prm.tag"):
        RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "untagged",
                       [f"reward.prm.path={tiny_policy}", *prm]))
    for bad, msg in (("reward.prm.tag=''", "non-empty step tag"),
                     ("reward.prm.bad_token=+", "must differ")):
        with pytest.raises(ValueError, match=msg):
            _cfg(tmp_path, tiny_policy, problems_dir, "bad",
                 [f"reward.prm.path={tiny_policy}", 'reward.prm.tag=" ки"', bad, *prm]).validate()


@pytest.mark.parametrize("extra,rows", [([], 8), (["micro_batch_size=2"], 2)])
def test_reference_pass_rows_follow_the_update_passes(tmp_path, tiny_policy, problems_dir,
                                                      monkeypatch, extra, rows):
    # no-grad passes take as many rows as the update's passes with gradient (which need more
    # memory): the whole minibatch unless micro_batch_size says otherwise
    import rewardlab.rl.trainer as trainer_mod
    seen = []
    real = trainer_mod.forward_logprobs

    def spy(*args, **kwargs):
        seen.append(kwargs["micro_batch"])
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer_mod, "forward_logprobs", spy)
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, f"rows{rows}",
                        ["algo=grpo", "advantage=grpo_outcome", "kl.in_reward=false",
                         "minibatch_size=8", *extra]))
    problems, batch = tr.rollout(0)
    tr.score(problems, batch)
    assert seen == [rows]


@pytest.mark.parametrize("extra,agg,eps_high,clamp", [
    (["algo=grpo"], "token-mean", None, None),
    (["algo=grpo", "advantage=dr_grpo", "clip_eps_high=0.28"], "seq-mean-token-sum-norm", 0.28, None),
    (["algo=grpo", "ratio=sequence", "kl.clamp=10"], "seq-mean-token-mean", None, 10.0),
    (["algo=grpo", "advantage=dr_grpo", "loss_agg=token-mean"], "token-mean", None, None),
])
def test_update_uses_the_configured_aggregation_and_clip_bounds(tmp_path, tiny_policy, problems_dir,
                                                                monkeypatch, extra, agg, eps_high, clamp):
    import rewardlab.rl.trainer as losses  # the trainer module, where the loss functions are called
    seen = {}

    def spy(name, real):
        def fn(*args, **kwargs):
            seen.setdefault(name, []).append(kwargs)
            return real(*args, **kwargs)
        return fn
    monkeypatch.setattr(losses, "ppo_policy_loss", spy("pg", losses.ppo_policy_loss))
    monkeypatch.setattr(losses, "kl_loss", spy("kl", losses.kl_loss))
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "agg",
                        ["steps=1", "kl.in_reward=false", "minibatch_size=8", *extra]))
    tr.update(tr.score(*tr.rollout(0)))
    pg, kl = seen["pg"][0], seen["kl"][0]
    assert (pg["agg"], pg["norm_len"], pg["clip_eps"], pg["clip_eps_high"]) == (agg, 16, 0.2, eps_high)
    assert (kl["agg"], kl["norm_len"], kl["clamp"]) == (agg, 16, clamp)   # max_new_tokens = 16
    # the KL in the reward and in kl/ref: k1 = log π − log π_ref = −20, 20, 0.5 per token
    k = tr._kl(torch.tensor([[0.0, 0.0, 0.5]]), torch.tensor([[20.0, -20.0, 0.0]]))
    assert k.tolist() == ([[-10.0, 10.0, 0.5]] if clamp else [[-20.0, 20.0, 0.5]])


def test_trust_remote_code_reaches_every_model_the_rl_run_loads(tmp_path, tiny_policy, problems_dir,
                                                                 monkeypatch):
    # opting in must reach the critic and the reward models too, not only the policy (issue 21)
    import transformers
    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModel, transformers.AutoTokenizer):
        orig = cls.from_pretrained.__func__

        def spy(c, *a, _orig=orig, **k):
            seen.append((c.__name__, k.get("trust_remote_code")))
            return _orig(c, *a, **k)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "trc",
                   ["model.trust_remote_code=true", f"reward.prm.path={tiny_policy}",
                    'reward.prm.tag=" ки"']))
    loads = {name for name, _ in seen}
    assert {"AutoModelForCausalLM", "AutoModel", "AutoTokenizer"} <= loads   # policy, critic, tokenizers
    assert seen and all(flag is True for _, flag in seen), seen


def test_old_logprobs_from_the_sampler_skip_the_pass_and_match_it(tmp_path, tiny_policy, problems_dir,
                                                                 monkeypatch):
    """old_logprobs=sampler: PPO with the KL in the reward takes log π_old from the fast sampler
    (no teacher-forced pass after sampling) and they equal the recomputed ones up to rounding."""
    import rewardlab.models.sampling as sampling
    calls = []
    real = sampling.forward_logprobs
    monkeypatch.setattr(sampling, "forward_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(ValueError, match="old_logprobs"):
        _cfg(tmp_path, tiny_policy, problems_dir, "bad", ["old_logprobs=vllm"])
    batches = {}
    for mode in ("recompute", "sampler"):
        tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, mode, [f"old_logprobs={mode}"]))
        assert not tr.on_policy_single_update(4)        # KL in the reward: π_old is needed
        calls.clear()
        _, batches[mode] = tr.rollout(0)
        assert len(calls) == (1 if mode == "recompute" else 0)
    a, b = batches["recompute"], batches["sampler"]
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert (b.logprobs[b.response_mask == 0] == 0).all()


@pytest.mark.parametrize("at_start", [True, False])
def test_eval_at_start_decides_the_step_0_evaluation(tmp_path, tiny_policy, problems_dir, at_start):
    cfg = _cfg(tmp_path, tiny_policy, problems_dir, "ev", ["steps=2", "eval_every=1",
                                                           f"eval_at_start={str(at_start).lower()}"])
    train_rl(cfg)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "metrics.jsonl").read_text().splitlines()]
    evaluated = sorted(r["step"] for r in rows if "eval/accuracy" in r)
    assert evaluated == ([0, 1, 2] if at_start else [1, 2])


def test_single_pass_critic_gives_the_two_pass_update(tmp_path, tiny_policy, problems_dir, monkeypatch):
    """One epoch and one minibatch: the critic's values for GAE and for the value loss come from
    one pass with gradient; the policy and critic after a step equal those of the two-pass update
    (micro_batch_size=7 of 8 rows: a pass at scoring and another in the update)."""
    res = {}
    for name, extra in (("one", []), ("two", ["ppo_epochs=1", "minibatch_size=8", "micro_batch_size=7"])):
        tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, name, ["steps=1", "minibatch_size=8",
                                                                        "reward.incorrect_reward=-1.0", *extra]))
        assert tr.single_pass_critic(8) == (name == "one")
        calls = []
        real = tr.values_of
        monkeypatch.setattr(tr, "values_of", lambda *a, **k: calls.append(1) or real(*a, **k))
        problems, batch = tr.rollout(0)
        sb = tr.score(problems, batch)
        before = [p.detach().clone() for p in tr.value.parameters()]
        tr.update(sb)
        assert any(not torch.equal(a, b) for a, b in zip(before, tr.value.parameters()))
        assert len(calls) == (1 if name == "one" else 4)   # two-pass: 2 micro-batches in each
        res[name] = (sb.values, [p.detach().clone() for p in tr.policy.parameters()],
                     [p.detach().clone() for p in tr.value.parameters()])
    assert torch.allclose(res["one"][0], res["two"][0], atol=1e-6)
    for a, b in zip(res["one"][1] + res["one"][2], res["two"][1] + res["two"][2]):
        assert torch.allclose(a, b, atol=1e-6)


def test_ensembles_as_the_prm_and_the_orm(tmp_path, tiny_policy, problems_dir):
    # rewardlab ensemble-rm folders load as one reward model: the RL rewards are the ensembles' scores
    from rewardlab.data.steps import step_texts
    from rewardlab.reward_models.models import (EnsembleRM, RMSpec, build_reward_model,
                                                load_reward_model, save_ensemble)

    def ensemble(name, spec):
        members = [build_reward_model(tiny_policy, spec, device="cpu", seed=s)
                   .save_pretrained(tmp_path / f"{name}{s}") for s in (0, 1)]
        return save_ensemble(tmp_path / name, members)

    prm = ensemble("prm", RMSpec(kind="prm", form="head", tag=" ки"))
    orm = ensemble("orm", RMSpec(kind="orm"))
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "ens",
                        [f"reward.prm.path={prm}", "reward.prm.alpha=1.0", f"reward.orm.path={orm}",
                         "reward.orm.beta=1.0", "steps=1"]))
    assert isinstance(tr.prm, EnsembleRM) and isinstance(tr.orm, EnsembleRM)
    problems, batch = tr.rollout(0)
    sb = tr.score(problems, batch)
    qs = [problems[i].question for i in batch.prompt_index]
    steps = [step_texts(t, tr.step_sep) for t in batch.texts]
    flat = [s for r in load_reward_model(prm, device="cpu").score(qs, steps) for s in r.step_scores]
    assert flat and sb.metrics["reward/prm_step_mean"] == pytest.approx(sum(flat) / len(flat), abs=1e-6)
    want = [r.score for r in load_reward_model(orm, device="cpu").score(qs, steps)]
    assert sb.metrics["reward/orm"] == pytest.approx(sum(want) / len(want), abs=1e-6)

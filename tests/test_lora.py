"""LoRA policies through peft (model.lora): the reference is the policy with its adapter off,
only the adapter (and a value head) trains, checkpoints hold the adapter and resume exactly,
final/ and final_merged/ load; the fast engine samples a merged view (never the PeftModel) and
runs none of its teacher-forced passes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rewardlab.config import ConfigError, load_config
from rewardlab.models import sampling
from rewardlab.models.fast import fast_path_unsupported
from rewardlab.models.loading import load_model_and_tokenizer, LoRAConfig
from rewardlab.models.lora import is_peft
from rewardlab.rl.config import RLConfig
from rewardlab.rl.trainer import RLTrainer, train_rl
from rewardlab.sft.trainer import SFTConfig

PPO = ["algo=ppo", "value.kind=shared"]
GRPO = ["algo=grpo", "advantage=grpo_outcome", "kl.in_reward=false", "kl.estimator=k3"]


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    """A random-init Qwen2 (q/k/v biases, grouped-query attention, untied head) with the testbed
    tokenizer, saved in HF format."""
    from transformers import AutoModelForCausalLM, Qwen2Config
    from rewardlab.data.testbed import build_tokenizer
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    out = tmp_path_factory.mktemp("tiny_qwen2")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _cfg(tmp_path, policy, probs, name, extra=()):
    ov = [f"out={tmp_path / name}", f"model.name_or_path={policy}",
          f"data.train_path={probs / 'train.jsonl'}", f"data.test_path={probs / 'test.jsonl'}",
          "steps=2", "prompts_per_step=4", "sampling.n=2", "sampling.max_new_tokens=16",
          "minibatch_size=4", "ppo_epochs=1", "eval_every=0", "eval_k=0", "save_every=1",
          "progress=false", "lr=1e-2", "entropy_coef=0.01", "model.lora.r=4", "model.dtype=float32", *extra]
    return load_config(RLConfig, None, ov)


def _no_fast_path(monkeypatch):
    """The teacher-forced passes never take the fast path; the sampler does, but only on the
    merged view (a plain model, no LoRA layer), never on the PeftModel."""
    def refuse(*a, **k):
        raise AssertionError("the fast engine ran a LoRA policy")
    real = sampling.fast_generate

    def plain_only(model, *a, **k):
        assert not is_peft(model) and fast_path_unsupported(model) is None
        return real(model, *a, **k)
    monkeypatch.setattr(sampling, "fast_generate", plain_only)
    monkeypatch.setattr(sampling, "response_logits", refuse)


def test_lora_config_fields_and_errors(tmp_path, tiny_policy, problems_dir):
    assert not LoRAConfig().enabled and LoRAConfig().modules() == "all-linear"
    assert LoRAConfig(r=2, target_modules="q_proj, v_proj").modules() == ["q_proj", "v_proj"]
    cfg = _cfg(tmp_path, tiny_policy, problems_dir, "c", [*GRPO, "model.lora.target_modules=[q_proj,o_proj]"])
    assert cfg.model.lora.modules() == ["q_proj", "o_proj"] and cfg.model.lora.r == 4
    with pytest.raises(ValueError, match=r"model\.lora\.r > 0 .*value\.kind=shared"):
        _cfg(tmp_path, tiny_policy, problems_dir, "c", ["algo=ppo", "value.kind=separate"])
    _cfg(tmp_path, tiny_policy, problems_dir, "c", ["algo=ppo", "value.kind=separate", "model.lora.r=0"])
    with pytest.raises(ValueError, match="engine=fast cannot run a LoRA policy"):
        _cfg(tmp_path, tiny_policy, problems_dir, "c", [*GRPO, "sampling.engine=fast"])
    with pytest.raises(ValueError, match="lora.dropout"):
        _cfg(tmp_path, tiny_policy, problems_dir, "c", [*GRPO, "model.lora.dropout=1.5"])
    with pytest.raises(ConfigError):
        _cfg(tmp_path, tiny_policy, problems_dir, "c", [*GRPO, "model.lora.rank=4"])
    with pytest.raises(ValueError, match="sft: model.lora"):
        load_config(SFTConfig, None, ["model.lora.r=4"])


@pytest.mark.parametrize("kind,extra", [("testbed", PPO), ("testbed", GRPO),
                                        ("qwen2", [*GRPO, "model.lora.target_modules=q_proj,v_proj,down_proj"])])
def test_reference_is_the_adapter_off_and_only_the_adapter_trains(
        tmp_path, tiny_policy, tiny_qwen2, problems_dir, monkeypatch, kind, extra):
    _no_fast_path(monkeypatch)
    policy = tiny_policy if kind == "testbed" else tiny_qwen2
    tr = RLTrainer(_cfg(tmp_path, policy, problems_dir, "run", ["reward.incorrect_reward=-1.0", *extra]))
    assert is_peft(tr.policy) and tr.ref is tr.policy   # one network, no second copy
    assert not tr.fast_policy and not tr.fast_ref and fast_path_unsupported(tr.policy)
    trainable = {n for n, p in tr.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    opt_params = {id(p) for g in tr.opt.param_groups for p in g["params"]}
    assert opt_params == {id(p) for n, p in tr.policy.named_parameters() if n in trainable} | {
        id(p) for p in (tr.value.parameters() if tr.value is not None else [])}
    before = {n: p.detach().clone() for n, p in tr.policy.named_parameters()}
    vbefore = {n: p.detach().clone() for n, p in tr.value.named_parameters()} if tr.value else {}

    # step 0: the reference log-probs are the policy's, bit for bit
    problems, batch = tr.rollout(0)
    sb = tr.score(problems, batch)
    with torch.no_grad():
        logp = sampling.forward_logprobs(tr.policy, batch.input_ids, batch.attention_mask,
                                         batch.response_ids.shape[1]) * batch.response_mask
    assert torch.equal(sb.ref_logp, logp)
    if sb.old_logp is not None:
        assert torch.equal(sb.old_logp, sb.ref_logp) and sb.metrics["kl/ref"] == 0.0

    res = tr.train()
    rows = [json.loads(x) for x in (tr.out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and rows[0]["kl/ref"] == 0.0   # logged before the first update
    assert res["actor/grad_norm"] > 0
    for n, p in tr.policy.named_parameters():
        if n in trainable:
            assert not torch.equal(before[n], p), f"{n} did not train"
        else:
            assert torch.equal(before[n], p), f"base weight {n} changed"
    for n, p in tr.value.named_parameters() if tr.value is not None else []:
        assert not torch.equal(vbefore[n], p), n
    # the base model (adapter off) is still the initial policy
    base, _ = load_model_and_tokenizer(policy, "float32", "cpu")
    ids = batch.input_ids[:2]
    with torch.no_grad(), tr.policy.disable_adapter():
        assert torch.equal(tr.policy(input_ids=ids).logits, base(input_ids=ids).logits)
    final = tr.out / "final"
    assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
    assert not (final / "model.safetensors").exists()


def test_resume_is_exact_and_final_dirs_load(tmp_path, tiny_policy, problems_dir, monkeypatch):
    _no_fast_path(monkeypatch)
    common = [*PPO, "steps=3", "reward.incorrect_reward=-1.0"]
    full = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "full", [*common, "model.lora.save_merged=true"]))
    part = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "part", [*common, "stop_at=1"]))
    assert part["rl/stopped_at"] == 1
    ckpt = tmp_path / "part" / "checkpoints" / "step_0000001"
    assert (ckpt / "adapter_model.safetensors").exists() and (ckpt / "value" / "value_head.safetensors").exists()
    assert not (ckpt / "model.safetensors").exists()   # the adapter only, not the base
    resumed = train_rl(_cfg(tmp_path, tiny_policy, problems_dir, "part", common))
    for k in ("reward/total", "actor/pg_loss", "critic/vf_loss", "kl/ref"):
        assert resumed[k] == full[k], k
    a = load_file(str(tmp_path / "full" / "final" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    va = load_file(str(tmp_path / "full" / "checkpoints" / "step_0000003" / "value" / "value_head.safetensors"))
    vb = load_file(str(tmp_path / "part" / "checkpoints" / "step_0000003" / "value" / "value_head.safetensors"))
    assert all(torch.equal(va[k], vb[k]) for k in va)

    # final/ loads with peft onto the base; final_merged/ is a plain model with the same logits
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(str(tiny_policy), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "full" / "final")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "full" / "final_merged")).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert fast_path_unsupported(merged) is None   # a plain model again
    ids = torch.randint(3, base.config.vocab_size, (2, 12))
    plain, _ = load_model_and_tokenizer(tiny_policy, "float32", "cpu")
    with torch.no_grad():
        la, lm, lb = adapted(input_ids=ids).logits, merged(input_ids=ids).logits, plain(input_ids=ids).logits
    assert torch.allclose(la, lm, atol=1e-5)
    assert (la - lb).abs().max() > 1e-3   # the adapter did change the model
    # rewardlab's own loader (eval --model …/final) reads the adapter dir through transformers
    via_loader, tok = load_model_and_tokenizer(tmp_path / "full" / "final", "float32", "cpu")
    assert fast_path_unsupported(via_loader) is not None
    with torch.no_grad():
        assert torch.allclose(via_loader(input_ids=ids).logits, la, atol=1e-6)
    assert (tmp_path / "full" / "final_merged" / "tokenizer_config.json").exists()


def test_merged_sampler_is_the_adapter_model_without_touching_it(tiny_policy):
    """The merged view computes what the PeftModel computes (up to float rounding), is a plain
    model the fast path runs, and leaves the training model exactly as it was; engine=hf and a
    model without an adapter get the model itself."""
    from rewardlab.models.loading import ModelConfig
    from rewardlab.models.lora import load_policy, merged_sampler
    mc = ModelConfig(name_or_path=str(tiny_policy), device="cpu", lora=LoRAConfig(r=4))
    policy, _ = load_policy(mc)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:   # B starts at 0: give the adapter an effect
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    layers = [m for m in policy.modules()]
    ids = torch.randint(3, policy.config.vocab_size, (2, 10), generator=g)
    with torch.no_grad():
        want = policy(input_ids=ids).logits
        with merged_sampler(policy) as view:
            assert view is not policy and not is_peft(view) and fast_path_unsupported(view) is None
            assert not any("lora" in n for n, _ in view.named_parameters())
            got = view(input_ids=ids).logits
        with policy.disable_adapter():
            base = policy(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-5 and (want - base).abs().max() > 1e-3
    assert [m for m in policy.modules()] == layers and fast_path_unsupported(policy)   # put back
    after = policy.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with merged_sampler(policy, "hf") as view:
        assert view is policy
    plain, _ = load_model_and_tokenizer(tiny_policy, "float32", "cpu")
    with merged_sampler(plain) as view:
        assert view is plain


def test_lora_rollouts_sample_the_merged_view(tmp_path, tiny_policy, problems_dir, monkeypatch):
    """sampling.engine=auto: the fast sampler runs a LoRA policy's rollouts on the merged view
    (and the old log-probs still come from the PeftModel's own pass); hf: generate, as before."""
    calls = []
    real = sampling.fast_generate

    def count(model, *a, **k):
        calls.append(model)
        return real(model, *a, **k)
    monkeypatch.setattr(sampling, "fast_generate", count)
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "auto", GRPO))
    problems, batch = tr.rollout(0)
    assert calls and not any(is_peft(m) for m in calls)
    with torch.no_grad():
        logp = sampling.forward_logprobs(tr.policy, batch.input_ids, batch.attention_mask,
                                         batch.response_ids.shape[1]) * batch.response_mask
    if batch.logprobs is not None:
        assert torch.equal(batch.logprobs, logp)
    calls.clear()
    tr = RLTrainer(_cfg(tmp_path, tiny_policy, problems_dir, "hf", [*GRPO, "sampling.engine=hf"]))
    tr.rollout(0)
    assert not calls

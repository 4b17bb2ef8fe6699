"""bfloat16 training keeps float32 weights and runs its passes under autocast (what ``dtype: auto``
gives on a GPU); checked here with CPU autocast, which takes the same code path."""

import pytest
import torch

from rewardlab.models.loading import training_precision
from rewardlab.sft.trainer import train_sft
from rewardlab.rl.trainer import RLTrainer

from test_rl_trainer import _cfg
from test_rollout_sft import _sft_cfg


def test_training_precision_choices():
    mixed = training_precision("bfloat16", "cpu")
    assert mixed.storage == "float32" and mixed.compute == torch.bfloat16
    with mixed.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    pure = training_precision("bfloat16", "cpu", mixed=False)
    assert pure.storage == "bfloat16" and pure.compute is None
    with pure.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert training_precision("auto", "cpu").compute is None            # float32 on a CPU
    assert training_precision("float32", "cpu").storage == "float32"
    with pytest.raises(ValueError, match="loss scaling"):
        training_precision("float16", "cpu")
    assert training_precision("float16", "cpu", mixed=False).storage == "float16"


def _saved_dtypes(model_dir) -> set[torch.dtype]:
    from safetensors import safe_open
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


def _lm_head_dtypes(model) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen


def _step(tmp_path, policy, probs, name, mixed: bool):
    # lr 1e-6, as for GSM8K fine-tuning: far below the spacing of bfloat16 near typical weights
    cfg = _cfg(tmp_path, policy, probs, name,
               ["steps=1", "model.dtype=bfloat16",
                f"model.mixed_precision={str(mixed).lower()}", "lr=1e-6",
                "reward.incorrect_reward=-1.0", "engine=hf", "sampling.engine=hf"])
    tr = RLTrainer(cfg)
    before = {n: p.detach().clone() for n, p in tr.policy.named_parameters()}
    return tr, before


def test_mixed_precision_rl_step_moves_float32_weights_that_pure_bfloat16_loses(
        tmp_path, tiny_policy, problems_dir):
    torch.manual_seed(0)
    tr, before = _step(tmp_path, tiny_policy, problems_dir, "mixed", mixed=True)
    assert all(p.dtype == torch.float32 for p in tr.policy.parameters())
    assert all(p.dtype == torch.float32 for p in tr.ref.parameters())
    seen = _lm_head_dtypes(tr.policy)
    with torch.no_grad():   # a critic that says something (its head starts at zero)
        tr.value.head.weight.normal_(0, 0.1)
    problems, batch = tr.rollout(0)
    sb = tr.score(problems, batch)
    # values stay float32 under autocast: GAE differences of bfloat16 values would be blurred
    assert (sb.values != sb.values.bfloat16().float()).any()
    assert float(sb.advantages.abs().sum()) > 0   # something to learn from
    um = tr.update(sb)
    # the reference is stored and run like the policy: the same numbers before the first update
    assert {**um, **sb.metrics}["kl/ref"] == 0.0
    assert seen and set(seen) == {torch.bfloat16}  # every pass ran under bfloat16 autocast
    moved = sum(int((before[n] != p).sum()) for n, p in tr.policy.named_parameters())
    total = sum(p.numel() for p in tr.policy.parameters())
    assert moved > 0.9 * total

    torch.manual_seed(0)
    pure, pure_before = _step(tmp_path, tiny_policy, problems_dir, "pure", mixed=False)
    assert all(p.dtype == torch.bfloat16 for p in pure.policy.parameters())
    problems, batch = pure.rollout(0)
    sb = pure.score(problems, batch)
    assert float(sb.advantages.abs().sum()) > 0
    pure.update(sb)
    changed = sum(int((pure_before[n] != p).sum()) for n, p in pure.policy.named_parameters())
    assert changed < 0.05 * total   # the same step is rounded away for almost every weight


def test_mixed_precision_sft_and_resume_keep_float32_weights(tmp_path):
    cfg = _sft_cfg(tmp_path, "sft", stop_at=3)
    cfg.model.dtype = "bfloat16"
    part = train_sft(cfg)
    assert part["sft/stopped_at"] == 3
    cfg = _sft_cfg(tmp_path, "sft")
    cfg.model.dtype = "bfloat16"
    res = train_sft(cfg)
    assert res["sft/final_loss"] == res["sft/final_loss"]     # finite, not NaN
    assert _saved_dtypes(tmp_path / "sft" / "final") == {torch.float32}
    assert _saved_dtypes(tmp_path / "sft" / "checkpoints" / "step_0000003") == {torch.float32}


def test_mixed_precision_reward_model_training(tmp_path, tiny_policy):
    from test_rm_train import _cfg as rm_cfg, write_step_rows
    from rewardlab.reward_models.models import load_reward_model
    from rewardlab.reward_models.train import train_reward_model

    data = write_step_rows(tmp_path / "prm.jsonl")
    m = train_reward_model(rm_cfg(tmp_path, tiny_policy, data, kind="prm", dtype="bfloat16"))
    assert m["rm/finished"] == 1.0 and m["rm/final_loss"] == m["rm/final_loss"]
    assert _saved_dtypes(tmp_path / "run" / "final") == {torch.float32}
    assert load_reward_model(tmp_path / "run" / "final", device="cpu") is not None
    with pytest.raises(ValueError, match="loss scaling"):
        train_reward_model(rm_cfg(tmp_path, tiny_policy, data, kind="prm", dtype="float16",
                                  out=str(tmp_path / "fp16")))


@pytest.mark.parametrize("spec", ["lm_prm", "head_prm", "orm"])
def test_reward_model_logits_stay_float32_under_autocast(tiny_policy, spec):
    # scores feed Clip / Delta differences and best-of-N rankings: bfloat16 logits keep ~3 digits
    from rewardlab.reward_models.models import RMSpec, build_reward_model
    spec = {"lm_prm": RMSpec(), "head_prm": RMSpec(form="head"), "orm": RMSpec(kind="orm")}[spec]
    rm = build_reward_model(tiny_policy, spec, device="cpu", seed=0)
    enc = rm.encode("sam has 3 apples . buys 4 more . how many apples ?", ["3 + 4 = 7", "#### 7"])
    ids = torch.tensor([enc.input_ids])
    with training_precision("bfloat16", "cpu").autocast():
        z = (rm.pair_logits if spec.kind == "prm" else rm.token_logits)(ids, torch.ones_like(ids))
    assert z.dtype == torch.float32 and (z != z.bfloat16().float()).any()


def test_bfloat16_kv_cache_under_autocast_samples_the_same_tokens(tiny_policy, monkeypatch):
    # attention reads K/V in bfloat16 under autocast anyway: storing them so changes no token
    from rewardlab.models import fast
    from rewardlab.models.loading import load_model_and_tokenizer
    from test_fast_decode import PROMPTS, _scramble

    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    _scramble(model).eval()
    enc = tok(PROMPTS * 5, return_tensors="pt", padding=True, add_special_tokens=False)
    w = model.model.embed_tokens.weight
    assert fast._kv_dtype(w) == torch.float32

    def run(temperature):
        torch.manual_seed(0)
        with training_precision("bfloat16", "cpu").autocast():
            return fast.fast_generate(model, enc["input_ids"], enc["attention_mask"], 24, None,
                                      tok.pad_token_id, temperature)
    with training_precision("bfloat16", "cpu").autocast():
        assert fast._kv_dtype(w) == torch.bfloat16
    half = run(0.0), run(1.0)
    monkeypatch.setattr(fast, "_kv_dtype", lambda weight: weight.dtype)   # a float32 cache
    full = run(0.0), run(1.0)
    assert all(torch.equal(a, b) for a, b in zip(half, full))

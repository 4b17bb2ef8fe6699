"""The fused decoder (rewardlab.models.fast) against transformers' own generate."""

import pytest
import torch

from rewardlab.models.fast import (fast_generate, fast_path_unsupported, generation_config_extras,
                                   sample_next, top_p_filter)
from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.models.sampling import SamplingConfig, generate_rollouts, use_fast_engine

PROMPTS = ["tom has 3 apples . buys 4 more .", "ann has 12 pens .",
           "max has 5 apples . buys 8 more . loses 8 . gives 2 away .", "bob has 9 ."]


def _hf_greedy(model, enc, n, eos, pad):
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    return out[:, enc["input_ids"].shape[1]:]


def _random_model(kind: str, vocab: int):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128)
    if kind == "qwen2":  # q/k/v biases, grouped-query attention, untied head
        cfg = Qwen2Config(num_key_value_heads=2, tie_word_embeddings=False, **common)
    else:  # llama with biases everywhere and a non-default RoPE base
        cfg = LlamaConfig(num_key_value_heads=4, attention_bias=True, mlp_bias=True,
                          rope_parameters={"rope_type": "default", "rope_theta": 500.0}, **common)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # biases start at zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


def _scramble(model):
    """Random-init weights (std 0.02) give near-uniform attention and one repeated greedy token, so
    positions, masks and cache rows would hardly change the output. Large random weights make the
    greedy continuation vary with every token and position."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.25)
    return model


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("kind", ["testbed", "qwen2", "llama_bias"])
def test_greedy_tokens_match_transformers_generate(tiny_policy, kind, split, monkeypatch):
    # split: the decoding step's projections as one bmm over weight blocks (from 16 rows by
    # default; forced here at any row count). testbed: q/k/v, o, gate/up and down split; qwen2:
    # q/k/v not (biases, grouped-query attention); llama_bias: nothing (biases everywhere)
    import rewardlab.models.fast as fast_mod
    monkeypatch.setattr(fast_mod, "SPLIT_MATMUL_MIN_ROWS", 1 if split else 10**9)
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    if kind != "testbed":
        model = _random_model(kind, len(tok))
    _scramble(model).eval()
    # repeated prompts are prefilled once and share their K/V rows: the result must not change
    enc = tok(PROMPTS + PROMPTS[:2], return_tensors="pt", padding=True, add_special_tokens=False)
    assert not enc["attention_mask"].all()  # prompts of different lengths: real left padding
    ref = _hf_greedy(model, enc, 24, eos=model.config.vocab_size, pad=tok.pad_token_id)  # never drawn
    # a token the greedy continuation produces mid-way stands in for EOS, chosen so that rows stop
    # at different steps and must be padded afterwards exactly as generate pads them
    def stops(t):
        hit = ref == t
        return torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(hit[:, 0], 99, dtype=torch.long))
    eos = next(int(t) for t in ref[:, 1:12].flatten().unique() if len(set(stops(t).tolist())) >= 3)
    ref = _hf_greedy(model, enc, 24, eos=eos, pad=tok.pad_token_id)
    for compact_below in (0.0, 1.0):  # finished rows kept to the end / dropped at once
        got = fast_generate(model, enc["input_ids"], enc["attention_mask"], 24, eos, tok.pad_token_id,
                            temperature=0.0, compact_below=compact_below)
        assert got.shape == ref.shape
        assert torch.equal(got, ref)


def test_sampling_reproducible_and_stops_at_eos(tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    enc = tok(PROMPTS * 4, return_tensors="pt", padding=True, add_special_tokens=False)

    def draw(seed):
        torch.manual_seed(seed)
        return fast_generate(model, enc["input_ids"], enc["attention_mask"], 16, tok.eos_token_id,
                             tok.pad_token_id, temperature=1.0, top_p=0.9)
    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for row in a.tolist():  # after EOS only padding
        if tok.eos_token_id in row:
            k = row.index(tok.eos_token_id)
            assert all(t == tok.pad_token_id for t in row[k + 1:])


def test_sampled_tokens_do_not_depend_on_compaction(tiny_policy):
    # one uniform per (row, step): dropping finished rows from the batch must not change any
    # row's draws. The tiny policy is scrambled so that rows end at different steps.
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    _scramble(model).eval()
    enc = tok(PROMPTS * 4, return_tensors="pt", padding=True, add_special_tokens=False)
    def draw(eos, compact_below):
        torch.manual_seed(3)
        return fast_generate(model, enc["input_ids"], enc["attention_mask"], 20, eos, tok.pad_token_id,
                             temperature=1.3, top_p=0.95, compact_below=compact_below)
    free = draw(None, 0.75)    # no EOS: every row runs 20 steps

    def first(t):
        return [row.index(t) if t in row else 20 for row in free.tolist()]
    # a token drawn mid-way stands in for EOS, chosen so that rows stop at >= 3 different steps
    eos = next(int(t) for t in free[:, 1:12].flatten().unique() if len(set(first(int(t)))) >= 3)
    runs = {c: draw(eos, c) for c in (0.0, 0.75, 1.0)}    # never / default / every step
    for row, ref, k in zip(runs[0.0].tolist(), free.tolist(), first(eos)):
        assert row[:k + 1] == ref[:k + 1]                  # the same draws up to the row's EOS
        assert all(t == tok.pad_token_id for t in row[k + 1:])
    assert torch.equal(runs[0.0], runs[0.75]) and torch.equal(runs[0.0], runs[1.0])


def test_top_p_filter_matches_transformers_warper():
    from transformers.generation.logits_process import TopPLogitsWarper
    torch.manual_seed(0)
    logits = torch.randn(8, 50) * 3
    for p in (0.3, 0.75, 0.95):
        ref = TopPLogitsWarper(p)(None, logits.clone())
        got = top_p_filter(logits, p)
        assert torch.equal(torch.isinf(got), torch.isinf(ref))
        assert torch.equal(got[~torch.isinf(got)], logits[~torch.isinf(ref)])
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    # the most likely token always survives, however small top_p
    kept = ~torch.isinf(top_p_filter(logits, 1e-9))
    assert torch.equal(kept.sum(1), torch.ones(8, dtype=torch.long))
    assert torch.equal(kept.float().argmax(1), logits.argmax(1))


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_sample_next_draws_from_the_filtered_softmax(temperature, top_p):
    # 4 rows of 6 tokens with very different distributions; 40,000 draws per row
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0, -3.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [-1.0, 3.0, -1.0, 0.5, 0.5, -4.0],
                           [0.3, -0.2, 1.7, -0.9, 0.0, 1.1]])
    n = 40_000
    want = top_p_filter(logits / temperature, top_p).softmax(-1)
    torch.manual_seed(0)
    draws = sample_next(logits.repeat_interleave(n, 0), temperature, top_p).view(4, n)
    freq = torch.stack([torch.bincount(r, minlength=6) for r in draws]).float() / n
    # binomial sd ≤ sqrt(0.25 / n) = 0.0025: 0.012 is ~5 sd
    assert (freq - want).abs().max() < 0.012, (freq, want)
    assert torch.all(freq[want == 0] == 0)   # tokens top-p removed are never drawn
    torch.manual_seed(0)
    assert torch.equal(sample_next(logits.repeat_interleave(n, 0), temperature, top_p).view(4, n), draws)


def test_unsupported_models_fall_back_to_generate(tiny_policy):
    from transformers import GPT2Config, GPT2LMHeadModel
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    assert fast_path_unsupported(model) is None and use_fast_engine(model, "auto")
    assert not use_fast_engine(model, "hf")
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).eval()
    assert "gpt2" in fast_path_unsupported(gpt2)
    assert not use_fast_engine(gpt2, "auto")
    with pytest.raises(ValueError, match="engine=fast cannot run"):
        use_fast_engine(gpt2, "fast")
    batch = generate_rollouts(gpt2, tok, PROMPTS[:2], SamplingConfig(n=2, max_new_tokens=5), seed=0)
    assert batch.response_ids.shape[0] == 4
    # a generation-config logits processor the fast path lacks sends the model to generate
    model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in generation_config_extras(model)
    assert not use_fast_engine(model, "auto")


def test_lora_wrapped_model_is_not_fast(tiny_policy):
    from peft import LoraConfig, get_peft_model
    model, _ = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert fast_path_unsupported(peft_model.base_model.model) is not None  # LoRA layers ignored otherwise


def test_bad_inputs_are_rejected(tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    ids = torch.tensor([[5, 6, 7], [5, 6, tok.pad_token_id]])
    right_padded = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="left-padded"):
        fast_generate(model, ids, right_padded, 4, tok.eos_token_id, tok.pad_token_id)
    with pytest.raises(ValueError, match="engine"):
        SamplingConfig(engine="vllm")


def test_rollouts_same_tokens_with_either_engine_when_greedy(tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    a = generate_rollouts(model, tok, PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=12, engine="fast"))
    b = generate_rollouts(model, tok, PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=12, engine="hf"))
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert torch.allclose(a.logprobs, b.logprobs)


@pytest.mark.parametrize("kind,buckets,attention", [("testbed", None, "matmul"), ("testbed", 1, "matmul"),
                                                    ("qwen2", 3, "matmul"), ("testbed", None, "sdpa"),
                                                    ("qwen2", 3, "sdpa")])
def test_shared_prompt_logits_and_gradients_match_transformers(tiny_policy, kind, buckets, attention,
                                                               monkeypatch):
    """response_logits runs each distinct prompt once and the responses in length buckets; logits
    and parameter gradients must be those of one plain transformers pass over the whole
    [left-padded prompt | right-padded response] rows, with either attention path (short passes
    use matmuls, long ones scaled_dot_product_attention)."""
    from rewardlab.models import fast
    from rewardlab.models.fast import response_logits
    from rewardlab.models.sampling import position_ids_from_mask

    if attention == "sdpa":
        monkeypatch.setattr(fast, "MANUAL_ATTENTION_MAX_SCORES", 0)

    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    if kind != "testbed":
        model = _random_model(kind, len(tok))
    _scramble(model).train()
    batch = generate_rollouts(model, tok, PROMPTS, SamplingConfig(n=3, max_new_tokens=10),
                              seed=0, compute_logprobs=False)
    B, T = batch.response_ids.shape
    # responses of every length 1..T (as if each ended with EOS there), padding after
    lengths = torch.arange(B) % T + 1
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    resp = torch.where(mask.bool(), batch.response_ids, torch.full_like(batch.response_ids, tok.pad_token_id))
    ids = torch.cat([batch.prompt_ids, resp], 1)
    att = torch.cat([batch.prompt_mask, mask], 1)
    assert not batch.prompt_mask.all()  # left padding present
    ref = model(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att)).logits[:, -T - 1:-1]
    got = response_logits(model, ids, att, T, buckets=buckets)
    assert got.shape == ref.shape
    m = mask.bool()
    assert torch.allclose(got[m], ref[m], atol=1e-5)
    params = list(model.parameters())

    def grads(logits):
        loss = (logits.log_softmax(-1).gather(-1, resp[..., None])[..., 0] * m).sum()
        return torch.autograd.grad(loss, params)
    for g_ref, g_got, p in zip(grads(ref), grads(got), params):
        assert torch.allclose(g_got, g_ref, rtol=1e-4, atol=1e-4 * float(g_ref.abs().max()) + 1e-7), p.shape


@pytest.mark.parametrize("kind", ["testbed", "qwen2"])
def test_value_model_fast_values_and_gradients_match_transformers(tiny_policy, kind, tmp_path):
    """A separate critic's V_t through the fast path (each distinct prompt once, responses in
    length buckets) equals its plain transformers forward at every real response position, and
    so do the gradients of a value loss; a bare decoder cannot sample or give logits."""
    from rewardlab.models.fast import response_logits
    from rewardlab.models.value import ValueModel

    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    if kind != "testbed":
        model = _random_model(kind, len(tok))
    _scramble(model).save_pretrained(tmp_path / "m")
    value = ValueModel.from_pretrained(tmp_path / "m")
    torch.manual_seed(2)
    with torch.no_grad():
        value.head.weight.normal_(0, 1.0)
        value.head.bias.fill_(0.3)
    batch = generate_rollouts(model, tok, PROMPTS, SamplingConfig(n=3, max_new_tokens=10),
                              seed=0, compute_logprobs=False)
    B, T = batch.response_ids.shape
    # responses of every length 1..T (as if each ended with EOS there), padding after
    m = torch.arange(T)[None] < (torch.arange(B) % T + 1)[:, None]
    resp = torch.where(m, batch.response_ids, torch.full_like(batch.response_ids, tok.pad_token_id))
    ids = torch.cat([batch.prompt_ids, resp], 1)
    att = torch.cat([batch.prompt_mask, m.long()], 1)
    ref = value.response_values(ids, att, T, fast=False)
    got = value.response_values(ids, att, T, fast=True)
    assert got.shape == ref.shape == (len(ids), T)
    assert torch.allclose(got[m], ref[m], rtol=1e-5, atol=1e-5 * float(ref.detach().abs().max()))
    params = [p for p in value.parameters()]
    target = torch.randn(ref.shape)

    def grads(v):
        return torch.autograd.grad((((v - target) ** 2) * m).sum(), params)
    for g_ref, g_got, p in zip(grads(ref), grads(got), params):
        assert torch.allclose(g_got, g_ref, rtol=1e-4, atol=1e-4 * float(g_ref.abs().max()) + 1e-7), p.shape
    assert use_fast_engine(value.backbone, "auto", sampling=False)
    with pytest.raises(ValueError, match="without an LM head"):
        response_logits(value.backbone, ids, att, T)


def test_rl_engine_setting_is_checked_and_used(tiny_policy, tmp_path):
    from rewardlab.config import load_config
    from rewardlab.rl.config import RLConfig
    with pytest.raises(ValueError, match="engine"):
        load_config(RLConfig, None, ["engine=vllm"])
    with pytest.raises(ValueError, match="sampling.engine"):
        load_config(RLConfig, None, ["sampling.engine=vllm"])
    model, _ = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    assert use_fast_engine(model, "auto", sampling=False)
    model.generation_config.repetition_penalty = 1.3  # matters to sampling only
    assert use_fast_engine(model, "auto", sampling=False) and not use_fast_engine(model, "auto")


def test_min_new_tokens_matches_generate(tiny_policy):
    """EOS is masked for the first min_new_tokens tokens, as generate's min_new_tokens does; a
    model whose generation config sets it is still sampled by the fast engine."""
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    _scramble(model).eval()
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    free = _hf_greedy(model, enc, 12, eos=model.config.vocab_size, pad=tok.pad_token_id)
    eos = int(free[0, 1])  # row 0 would stop at its second token
    ref = model.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id, min_new_tokens=6)[:, enc["input_ids"].shape[1]:]
    got = fast_generate(model, enc["input_ids"], enc["attention_mask"], 12, eos, tok.pad_token_id,
                        temperature=0.0, min_new_tokens=6)
    assert torch.equal(got, ref)
    assert not (got[:, :6] == eos).any()
    model.generation_config.min_new_tokens = 6
    assert use_fast_engine(model, "auto")


def test_sampling_and_logprob_outputs_can_enter_autograd(tiny_policy):
    """fast_generate and forward_logprobs run in inference mode; what they return must still be
    usable in a later loss (inference tensors cannot be saved for backward)."""
    from rewardlab.models.sampling import forward_logprobs
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    out = fast_generate(model, enc["input_ids"], enc["attention_mask"], 6, tok.eos_token_id,
                        tok.pad_token_id, temperature=1.0)
    lp = forward_logprobs(model, torch.cat([enc["input_ids"], out], 1),
                          torch.cat([enc["attention_mask"], torch.ones_like(out)], 1), 6, fast=True)
    assert not out.is_inference() and not lp.is_inference()
    w = torch.randn(len(tok), 3, requires_grad=True)
    (torch.nn.functional.embedding(out, w).sum() * torch.exp(lp).sum()).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.parametrize("temperature,top_p,min_new", [(1.0, 1.0, 0), (0.7, 0.9, 3), (0.0, 1.0, 0)])
def test_sampler_logprobs_equal_a_teacher_forced_pass(tiny_policy, temperature, top_p, min_new):
    """The sampler's own log π(y_t) at τ (1 when greedy), from the unfiltered logits, equal what
    a teacher-forced pass gives on real tokens (rows stop at different steps, so compaction runs),
    and the tokens are the same draws as without them. Through generate_rollouts, the batch gets
    the sampler's values instead of a pass's."""
    from rewardlab.models.sampling import forward_logprobs, response_mask_from_ids
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    _scramble(model).eval()
    enc = tok(PROMPTS * 4, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    free = fast_generate(model, enc["input_ids"], enc["attention_mask"], 16, None, tok.pad_token_id,
                         temperature=1.3)
    eos = int(free[:, 2:8].flatten().mode().values)   # a frequent mid-way token stands in for EOS

    def draw(lp):
        torch.manual_seed(5)
        return fast_generate(model, enc["input_ids"], enc["attention_mask"], 16, eos, tok.pad_token_id,
                             temperature=temperature, top_p=top_p, min_new_tokens=min_new,
                             return_logprobs=lp)
    toks, lp = draw(True)
    assert torch.equal(toks, draw(False))
    mask, _ = response_mask_from_ids(toks, [eos])
    assert mask.sum(1).unique().numel() >= 2 and not mask.all()        # rows ended at different steps
    ref = forward_logprobs(model, torch.cat([enc["input_ids"], toks], 1),
                           torch.cat([enc["attention_mask"], mask], 1), toks.shape[1],
                           temperature=temperature or 1.0)
    assert torch.allclose(lp * mask, ref * mask, atol=1e-5)
    assert (lp[mask == 0] == 0).all() and (lp[mask.bool()] < 0).all()

    cfg = SamplingConfig(n=2, temperature=temperature, top_p=top_p, max_new_tokens=10)
    a = generate_rollouts(model, tok, PROMPTS, cfg, seed=3, sampler_logprobs=True)
    b = generate_rollouts(model, tok, PROMPTS, cfg, seed=3)
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5) and not torch.equal(a.logprobs, b.logprobs)

import torch

from rewardlab.data.testbed import generate_problems
from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.models.sampling import SamplingConfig, forward_logprobs, generate_rollouts, response_mask_from_ids
from rewardlab.sft.trainer import SFTConfig, collate, encode_example, train_sft


def test_load_policy_settles_padding(tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy)
    assert tok.padding_side == "left" and tok.pad_token_id is not None and tok.eos_token_id is not None
    assert model.config.architectures[0].startswith("Llama")
    assert model.dtype == torch.float32


def test_response_mask_stops_at_first_eos():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 9, 2, 0], [5, 6, 7, 8, 9]])
    mask, fin = response_mask_from_ids(ids, eos_id=2)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert fin.tolist() == [True, True, False]


def test_rollouts_deterministic_and_logprobs_match_forward(tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy)
    prompts = [p.question + "\n" for p in generate_problems(n=5, seed=3)]
    cfg = SamplingConfig(n=3, temperature=1.0, max_new_tokens=12)
    a = generate_rollouts(model, tok, prompts, cfg, seed=11)
    b = generate_rollouts(model, tok, prompts, cfg, seed=11)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert a.prompt_index == [i for i in range(5) for _ in range(3)]
    assert a.response_ids.shape[0] == 15
    # padding never carries a log-prob, and log-probs equal an unbatched forward pass
    assert torch.all(a.logprobs[a.response_mask == 0] == 0)
    for r in (0, 7):
        n = int(a.response_mask[r].sum())
        ids = tok(prompts[a.prompt_index[r]], return_tensors="pt", add_special_tokens=False)["input_ids"]
        full = torch.cat([ids, a.response_ids[r:r + 1, :n]], 1)
        lp = forward_logprobs(model, full, torch.ones_like(full), n)
        assert torch.allclose(lp[0], a.logprobs[r, :n], atol=1e-4)


def test_sft_labels_mask_prompt(tiny_policy):
    _, tok = load_model_and_tokenizer(tiny_policy)
    ids, labels = encode_example(tok, "sam has 3 apples .\n", "#### 3", 64)
    n_prompt = len(tok("sam has 3 apples .\n", add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tok.eos_token_id
    b = collate([(ids, labels), ([1, 2], [-100, 2])], pad_id=tok.pad_token_id)
    assert b["attention_mask"][1].tolist()[:3] == [1, 1, 0] and b["labels"][1, 2:].eq(-100).all()


def _sft_cfg(tmp_path, out, **kw):
    cfg = SFTConfig(out=str(tmp_path / out), steps=6, batch_size=8, save_every=3, eval_every=0,
                    log_every=1, progress=False, lr=3e-3, warmup_steps=2, **kw)
    cfg.model.size = "tiny"
    cfg.data.n_train, cfg.data.n_test = 64, 0
    return cfg


def test_sft_resume_matches_uninterrupted_run(tmp_path):
    full = train_sft(_sft_cfg(tmp_path, "a"))
    part = train_sft(_sft_cfg(tmp_path, "b", stop_at=3))
    assert part["sft/stopped_at"] == 3
    resumed = train_sft(_sft_cfg(tmp_path, "b"))
    assert abs(resumed["sft/final_loss"] - full["sft/final_loss"]) < 1e-6
    from rewardlab.training.metrics import read_metrics
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "sft/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    # the final model reloads through from_pretrained and is the same
    ma, _ = load_model_and_tokenizer(tmp_path / "a" / "final")
    mb, _ = load_model_and_tokenizer(tmp_path / "b" / "final")
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_sft_lowers_loss(tmp_path):
    cfg = _sft_cfg(tmp_path, "c")
    cfg.steps = 30
    cfg.save_every = 0
    train_sft(cfg)
    from rewardlab.training.metrics import read_metrics
    losses = [r["sft/loss"] for r in read_metrics(tmp_path / "c" / "metrics.jsonl") if "sft/loss" in r]
    assert losses[-1] < 0.6 * losses[0]
    # a model card beside the final model: base, data, closing metrics, command, usage
    card = (tmp_path / "c" / "final" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "# rewardlab SFT model" in card
    assert "Base model: `testbed (tiny, random init)`" in card and "testbed (64 generated" in card
    assert "| sft/final_loss |" in card and "## How it was made" in card
    assert "AutoModelForCausalLM.from_pretrained" in card


def test_token_logprobs_by_hand_and_entropy_without_grad():
    from rewardlab.models.sampling import token_logprobs
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.tensor([[0, 4, 2], [1, 1, 3]])
    lp, ent = token_logprobs(logits, labels, temperature=2.0, return_entropy=True)
    p = torch.softmax(logits.detach() / 2.0, -1)
    assert torch.allclose(lp, p.gather(-1, labels[..., None]).squeeze(-1).log(), atol=1e-6)
    assert torch.allclose(ent, -(p * p.log()).sum(-1), atol=1e-6) and ent.requires_grad
    lp2, ent2 = token_logprobs(logits, labels, temperature=2.0, return_entropy=True, entropy_grad=False)
    assert not ent2.requires_grad and torch.equal(ent2, ent.detach()) and torch.equal(lp2, lp)
    # entropy_coef = 0: leaving the entropy out of the graph gives the very same gradient
    with_zero = torch.autograd.grad(lp.sum() - 0.0 * ent.sum(), logits)[0]
    without = torch.autograd.grad(lp2.sum(), logits)[0]
    assert torch.equal(with_zero, without)

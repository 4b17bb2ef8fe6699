"""Prompt formats for Hugging Face chat models: data.chat / data.prompt_template in SFT and RL, and
--chat / --prompt-template / --system on the sampling commands. The GSM8K runs use a tiny Qwen2
chat model built here (a BPE tokenizer trained on GSM8K text, a ChatML template, random weights):
the code path a hub id such as Qwen2.5-Instruct takes."""

import json

import pytest
import torch

from rewardlab.config import load_config
from rewardlab.data.problem import Problem
from rewardlab.rl.config import RLConfig
from rewardlab.sft.trainer import DataConfig, SFTConfig, make_prompt_fn
from rewardlab.data.prompts import default_prompt

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    from rewardlab.data.datasets import load_dataset_by_name

    probs = load_dataset_by_name("gsm8k", "train", limit=300)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([p.question for p in probs] + [p.solution for p in probs], trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  padding_side="left")
    tok.chat_template = CHATML
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    out = tmp_path_factory.mktemp("chat_model")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _problem():
    return Problem(id="p", question="What is 2 + 3?", answer="5", solution="2 + 3 = 5\n#### 5",
                   source="gsm8k")


def test_prompt_fn_default_template_and_chat(chat_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(chat_model))
    p = _problem()
    assert make_prompt_fn(DataConfig(), tok) is default_prompt
    assert make_prompt_fn(DataConfig(prompt_template="Q: {question}\nA:"), tok)(p) == "Q: What is 2 + 3?\nA:"
    chat = make_prompt_fn(DataConfig(chat=True, system_prompt="Reason step by step."), tok)(p)
    assert chat == ("<|im_start|>system\nReason step by step.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    # the chat markers are single special tokens, not text pieces
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3


def test_plain_prompts_get_the_bos_token_a_tokenizer_adds_by_default(chat_model, tiny_policy):
    """Llama/Mistral-style tokenizers put BOS before every text; rewardlab tokenizes prompts
    without special tokens, so the prompt text carries it (once). Chat templates write their own."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    from rewardlab.models.loading import load_model_and_tokenizer
    from rewardlab.data.prompts import adds_bos

    tok = AutoTokenizer.from_pretrained(str(chat_model))
    assert not adds_bos(tok)
    tok.bos_token = "<|endoftext|>"
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    assert adds_bos(tok)
    p = _problem()
    for data in (DataConfig(), DataConfig(prompt_template="Q: {question}\nA:")):
        prompt = make_prompt_fn(data, tok)(p)
        assert prompt.startswith("<|endoftext|>") and p.question in prompt
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert ids[0] == bos and ids.count(bos) == 1
    assert not make_prompt_fn(DataConfig(chat=True), tok)(p).startswith("<|endoftext|>")
    _, testbed_tok = load_model_and_tokenizer(tiny_policy)
    assert not adds_bos(testbed_tok) and make_prompt_fn(DataConfig(), testbed_tok) is default_prompt


@pytest.mark.parametrize("data, message", [
    (dict(prompt_template="Solve:"), "must contain {question}"),
    (dict(prompt_template="{question}", chat=True), "not both"),
    (dict(system_prompt="Be brief."), "needs data.chat=true"),
])
def test_bad_prompt_settings_are_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        RLConfig(data=DataConfig(**data)).validate()
    with pytest.raises(ValueError, match=message):
        SFTConfig(data=DataConfig(**data)).validate()


def test_chat_needs_a_chat_template(tiny_policy):
    from rewardlab.models.loading import load_model_and_tokenizer
    _, tok = load_model_and_tokenizer(tiny_policy)      # the testbed tokenizer has no template
    with pytest.raises(ValueError, match="chat template"):
        make_prompt_fn(DataConfig(chat=True), tok)


@pytest.mark.filterwarnings("ignore:sft.*left out")   # a few GSM8K prompts exceed max_len
def test_sft_then_rl_on_gsm8k_with_chat_prompts(tmp_path, chat_model, monkeypatch):
    """SFT trains on chat-formatted prompts; the RL rollouts and the held-out evaluation use
    the same prompts."""
    import rewardlab.sft.trainer as sft_mod
    from rewardlab.sft.trainer import train_sft
    from rewardlab.rl.trainer import RLTrainer

    seen = []
    real_encode = sft_mod.encode_example

    def spy(tok, prompt, response, max_len):
        seen.append(prompt)
        return real_encode(tok, prompt, response, max_len)
    monkeypatch.setattr(sft_mod, "encode_example", spy)
    system = "Put the final answer after ####."
    data = ["data.dataset=gsm8k", "data.n_test=3", "data.chat=true", f'data.system_prompt="{system}"']  # quoted: YAML reads " #" as a comment
    sft = train_sft(load_config(SFTConfig, None, [
        f"out={tmp_path / 'sft'}", f"model.name_or_path={chat_model}", "model.device=cpu",
        "steps=2", "batch_size=4", "max_len=320", "warmup_steps=1", "eval_every=0",
        "save_every=0", "progress=false", *data]))
    assert len(seen) > 7000     # every GSM8K training problem
    assert all(s.startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
               and s.endswith("<|im_end|>\n<|im_start|>assistant\n") for s in seen[:50])
    assert "eval/accuracy" in sft and sft["sft/final_loss"] == sft["sft/final_loss"]   # not NaN

    # the shipped GSM8K chat config, scaled down to the tiny model on the CPU, in the precision
    # `dtype: auto` gives on a GPU: float32 weights, bfloat16 autocast
    cfg = load_config(RLConfig, "configs/gsm8k_grpo_chat.yaml", [
        f"out={tmp_path / 'rl'}", f"model.name_or_path={tmp_path / 'sft' / 'final'}",
        "model.device=cpu", "model.dtype=bfloat16", "data.n_test=3",
        "steps=1", "prompts_per_step=2", "sampling.n=2", "sampling.max_new_tokens=8",
        "minibatch_size=4", "progress=false",
        "entropy_coef=0.01"])  # a gradient even when every sample gets the same reward
    assert cfg.data.chat and cfg.data.dataset == "gsm8k" and cfg.data.system_prompt
    tr = RLTrainer(cfg)
    problems, batch = tr.rollout(0)
    prompt = tr.tok.decode(batch.input_ids[0, :batch.prompt_ids.shape[1]], skip_special_tokens=False)
    assert prompt.replace("<|endoftext|>", "") == tr.prompt_fn(problems[0])
    assert problems[0].question in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert cfg.data.system_prompt in prompt
    res = tr.train()
    assert 0.0 <= res["reward/success"] <= 1.0 and res["actor/grad_norm"] > 0
    rows = [json.loads(x) for x in (tmp_path / "rl" / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    from rewardlab.eval.evaluate import evaluate_policy   # the held-out greedy answers: chat prompts
    assert tr.prec.compute == torch.bfloat16 and next(tr.policy.parameters()).dtype == torch.float32
    with tr.prec.autocast():
        _, again = evaluate_policy(tr.policy, tr.tok, tr.test_set, greedy=True, k=0,
                                   max_new_tokens=8, prompt_fn=tr.prompt_fn)
    assert [r["response"] for r in again] == [r["response"] for r in rows]


def test_sft_rejects_max_len_that_leaves_no_solution_tokens(tmp_path, chat_model):
    from rewardlab.sft.trainer import train_sft
    cfg = load_config(SFTConfig, None, [
        f"out={tmp_path / 'sft'}", f"model.name_or_path={chat_model}", "model.device=cpu",
        "data.dataset=gsm8k", "data.chat=true", "steps=1", "max_len=16", "progress=false"])
    with pytest.raises(ValueError, match="max_len=16 tokens cuts every example"):
        train_sft(cfg)
    assert not (tmp_path / "sft" / "final").exists()


def test_keep_trainable_drops_examples_without_solution_tokens():
    from rewardlab.sft.trainer import keep_trainable
    full, cut = ([1, 2, 3], [-100, -100, 3]), ([1, 2], [-100, -100])
    with pytest.warns(UserWarning, match="1 of 2 examples"):
        assert keep_trainable([full, cut], 3) == [full]
    assert keep_trainable([full], 3) == [full]


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_cli_prompt_options(tmp_path, chat_model, capsys):
    from rewardlab.cli.main import main
    from rewardlab.data.testbed import TestbedConfig, make_splits
    from rewardlab.io import write_jsonl

    train, _ = make_splits(TestbedConfig(max_ops=2), 2, 1, seed=0)
    probs = tmp_path / "p.jsonl"
    write_jsonl(probs, [p.to_dict() for p in train])
    base = ["sample", "--model", str(chat_model), "--data", str(probs), "--n", "2",
            "--max-new-tokens", "4", "--device", "cpu"]
    assert main([*base, "--system", "hi", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--system needs --chat" in _flat(capsys.readouterr().err)
    assert main([*base, "--prompt-template", "no slot", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "{question}" in _flat(capsys.readouterr().err)
    assert not (tmp_path / "x.jsonl").exists()
    assert main([*base, "--chat", "--system", "Be brief.", "--out", str(tmp_path / "s.jsonl")]) == 0
    assert main([*base, "--out", str(tmp_path / "plain.jsonl")]) == 0
    responses = [[json.loads(x)["response"] for x in (tmp_path / f).read_text().splitlines()]
                 for f in ("s.jsonl", "plain.jsonl")]
    assert responses[0] and responses[0] != responses[1]   # same seed, other prompts

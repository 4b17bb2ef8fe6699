"""Supervised fine-tuning: problem → reference solution, loss on solution tokens only.

Each example is a prompt (``question + "\\n"``, or ``data.prompt_template`` / the tokenizer's chat
template with ``data.chat``) followed by ``solution + EOS``; labels are -100 on
prompt tokens and padding. AdamW with linear warm-up and cosine decay, gradient accumulation and
clipping, periodic greedy evaluation, TensorBoard + JSONL metrics, and HF-format checkpoints that
resume exactly (the data order is a pure function of ``seed`` and the step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rewardlab.data.problem import Problem
from rewardlab.data.testbed import TestbedConfig
from rewardlab.models.loading import ModelConfig


@dataclass
class DataConfig:
    """Which problems to train and evaluate on."""

    dataset: str = "testbed"
    """testbed | gsm8k | math500 | path/to/problems.jsonl"""
    train_path: str | None = None
    """Optional JSONL of problems (Problem rows) for training; overrides ``dataset``."""
    test_path: str | None = None
    """Optional JSONL of held-out problems."""
    n_train: int = 4000
    """Testbed: number of training problems to generate."""
    n_test: int = 200
    """Testbed: number of held-out problems; other datasets: evaluation limit."""
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    """Testbed difficulty knobs."""
    prompt_template: str | None = None
    """The policy's prompt, with ``{question}`` where the question goes (e.g.
    ``"Question: {question}\\nAnswer:"``); None: ``question + "\\n"``."""
    chat: bool = False
    """Wrap each question in the tokenizer's chat template (HF chat models), ending with the
    assistant turn's generation prompt."""
    system_prompt: str | None = None
    """With ``chat``: a system message before the question."""
    style: str | None = None
    """How responses are graded and split into steps: gsm8k (the answer after ``####``, else the
    last number; one step per line) | math (the last ``\\boxed{}``; steps are blank-line
    paragraphs). None: math for math500, else gsm8k."""

    def validate(self) -> None:
        check_prompt_settings(self.prompt_template, self.chat, self.system_prompt)
        if self.style not in (None, "gsm8k", "math"):
            raise ValueError(f"data.style must be gsm8k or math, got {self.style!r}")

    def answer_style(self) -> str:
        """``style``, or the dataset's: math for math500, gsm8k otherwise."""
        return self.style or ("math" if self.dataset == "math500" else "gsm8k")


def check_prompt_settings(template: str | None, chat: bool, system: str | None,
                          names=("data.prompt_template", "data.chat=true", "data.system_prompt")) -> None:
    """Raise ValueError, naming the settings by ``names`` (template, chat, system), for a template
    without ``{question}``, a template together with chat, or a system prompt without chat."""
    t, c, sys_ = names
    if template is not None and "{question}" not in template:
        raise ValueError(f"{t} must contain {{question}}")
    if chat and template is not None:
        raise ValueError(f"set {c} or {t}, not both")
    if system is not None and not chat:
        raise ValueError(f"{sys_} needs {c}")


@dataclass
class SFTConfig:
    """Supervised fine-tuning settings."""

    out: str = "runs/sft"
    """Run directory (checkpoints, metrics.jsonl, tb/, final/)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    max_steps: int = 300
    """Optimizer steps (testbed default: ~0.5 greedy accuracy in 2-3 min on 2 cores, room for RL)."""
    batch_size: int = 64
    """Sequences per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_len: int = 96
    """Longest training sequence, in tokens (longer examples are truncated; those cut before their
    solution starts are left out, with a warning). The default fits the testbed; GSM8K with a
    chat template needs ~1024."""
    eval_every: int = 200
    """Greedy accuracy on the held-out set every N steps (0: only at the end)."""
    save_every: int = 200
    """Checkpoint every N steps (0: only at the end)."""
    log_every: int = 10
    resume: bool = True
    """Continue from the latest checkpoint in ``out`` when there is one."""
    progress: bool = True
    stop_at: int = 0
    """Stop after this step as if interrupted, leaving a checkpoint (0: never). For budgets and tests."""

    def validate(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("sft: max_steps, batch_size and grad_accum must be >= 1")
        if self.lr <= 0:
            raise ValueError("sft: lr must be > 0")
        self.data.validate()


def prompt_of(problem: Problem) -> str:
    """rewardlab's default prompt for a problem (testbed and GSM8K alike): ``question + "\\n"``."""
    return problem.question + "\n"


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` puts its BOS token before a text by default (Llama and Mistral
    tokenizers do; Qwen's and the testbed's do not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return False
    ids = tokenizer("1", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def make_prompt_fn(data: DataConfig, tokenizer) -> Callable[[Problem], str]:
    """The policy's prompt function for a run: the tokenizer's chat template when ``data.chat``
    (with ``data.system_prompt``), ``data.prompt_template`` when set, else :func:`prompt_of`.
    SFT, RL rollouts and their held-out evaluations all use it, so a policy is trained and
    evaluated on the prompts it will be sampled with.

    rewardlab tokenizes prompts without adding special tokens (a chat template writes its own),
    so for a tokenizer that :func:`adds_bos` the plain and template prompts start with the BOS
    token's text, as the model saw in pre-training."""
    from rewardlab.eval.evaluate import chat_prompt_fn, template_prompt_fn

    if data.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat prompts need a tokenizer with a chat template, and this one has "
                             "none (use a prompt template instead)")
        return chat_prompt_fn(tokenizer, data.system_prompt)
    fn = template_prompt_fn(data.prompt_template) if data.prompt_template is not None else prompt_of
    if adds_bos(tokenizer):
        bos = tokenizer.bos_token
        return lambda p: bos + fn(p)
    return fn


def encode_example(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt) for ``prompt + response + EOS``."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + r)[:max_len]
    labels = ([-100] * len(p) + r)[:max_len]
    return ids, labels


def keep_trainable(examples: list[tuple[list[int], list[int]]], max_len: int) -> list[tuple[list[int], list[int]]]:
    """The examples that keep at least one solution token after truncation to ``max_len`` (the
    others would add nothing to the loss, and a batch of only such examples gives a NaN loss).
    Raises ValueError when none is left; warns with the count when some are dropped."""
    kept = [e for e in examples if any(t != -100 for t in e[1])]
    if not kept:
        raise ValueError(f"sft: max_len={max_len} tokens cuts every example before its solution "
                         "starts; raise max_len (e.g. --set max_len=1024 for GSM8K chat prompts)")
    if len(kept) < len(examples):
        import warnings
        warnings.warn(f"sft: {len(examples) - len(kept)} of {len(examples)} examples are longer than "
                      f"max_len={max_len} tokens before their solution starts and are left out",
                      stacklevel=2)
    return kept


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of (ids, labels) into input_ids / attention_mask / labels (B, L)."""
    width = max(len(ids) for ids, _ in examples)
    ids_t = torch.full((len(examples), width), pad_id, dtype=torch.long)
    lab_t = torch.full((len(examples), width), -100, dtype=torch.long)
    att = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, labels) in enumerate(examples):
        ids_t[i, :len(ids)] = torch.tensor(ids)
        lab_t[i, :len(labels)] = torch.tensor(labels)
        att[i, :len(ids)] = 1
    return {"input_ids": ids_t, "attention_mask": att, "labels": lab_t}


def sft_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (labels != -100)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()                       # (B, L-1, V)
    target = batch["labels"][:, 1:]                       # (B, L-1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             target.reshape(-1), ignore_index=-100)


def batch_indices(n: int, batch_size: int, step: int, micro: int, grad_accum: int, seed: int) -> list[int]:
    """Example indices of micro-batch ``micro`` of optimizer step ``step``: a pure function of
    the seed and position, so resuming needs no sampler state. Each epoch is a fresh permutation."""
    per_epoch = max(1, n // batch_size)
    k = step * grad_accum + micro
    epoch, pos = divmod(k, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[pos * batch_size:(pos + 1) * batch_size].tolist()


def load_problems(data: DataConfig, seed: int, out_dir: Path | None = None) -> tuple[list[Problem], list[Problem]]:
    """Train and held-out problems for a run; testbed problems are generated (and saved under
    ``out_dir`` as train.jsonl / test.jsonl) from the seed."""
    from rewardlab.io import write_jsonl

    if data.train_path:
        from rewardlab.data.datasets import load_dataset_by_name
        train = load_dataset_by_name(data.train_path, "train")
        test = load_dataset_by_name(data.test_path, "test", limit=data.n_test) if data.test_path else []
        return train, test
    if data.dataset == "testbed":
        from rewardlab.data.testbed import make_splits
        train, test = make_splits(data.testbed, data.n_train, data.n_test, seed=seed)
        if out_dir is not None:
            write_jsonl(out_dir / "train.jsonl", [p.to_dict() for p in train])
            write_jsonl(out_dir / "test.jsonl", [p.to_dict() for p in test])
        return train, test
    from rewardlab.data.datasets import load_dataset_by_name
    train = load_dataset_by_name(data.dataset, "train") if data.dataset != "math500" else []
    test = load_dataset_by_name(data.dataset, "test", limit=data.n_test)
    return train, test


def build_model(cfg_model: ModelConfig, out_dir: Path, seed: int, dtype: str | None = None):
    """Load the configured policy (in ``dtype``, default ``cfg_model.dtype``); ``testbed`` creates
    a fresh random one under ``out_dir``."""
    from rewardlab.models.loading import load_model_and_tokenizer, make_testbed_policy

    path = cfg_model.name_or_path
    if path == "testbed":
        path = str(make_testbed_policy(out_dir / "init", size=cfg_model.size, seed=seed))
    return load_model_and_tokenizer(path, dtype or cfg_model.dtype, cfg_model.device,
                                    cfg_model.trust_remote_code)


def train_sft(cfg: SFTConfig) -> dict:
    """Run SFT; returns the final metrics. The trained model lands in ``<out>/final``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from rewardlab.training import (MetricsLogger, latest_checkpoint, load_trainer_state,
                                    make_optimizer, quiet_transformers, save_checkpoint,
                                    seed_everything, warmup_cosine)

    quiet_transformers()
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    train, test = load_problems(cfg.data, cfg.seed, out)
    if not train:
        raise ValueError(f"sft: no training problems for dataset {cfg.data.dataset!r}")
    ckpt = latest_checkpoint(out) if cfg.resume else None
    from rewardlab.models.loading import load_model_and_tokenizer, training_precision
    # float32 weights + bfloat16 autocast for bfloat16 runs (ModelConfig.mixed_precision)
    prec = training_precision(cfg.model.dtype, cfg.model.device, cfg.model.mixed_precision)
    if ckpt is not None:
        model, tok = load_model_and_tokenizer(ckpt, prec.storage, cfg.model.device)
    else:
        model, tok = build_model(cfg.model, out, cfg.seed, prec.storage)
    device = next(model.parameters()).device
    prompt_fn = make_prompt_fn(cfg.data, tok)
    examples = keep_trainable([encode_example(tok, prompt_fn(p), p.solution, cfg.max_len) for p in train],
                              cfg.max_len)
    opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.max_steps, cfg.warmup_steps, cfg.min_lr_ratio))
    start = 0
    logger = MetricsLogger(out)
    if ckpt is not None:
        start = load_trainer_state(ckpt, opt, sched)["step"]
        logger.truncate_after(start)
    model.train()
    last: dict = {}
    t0 = time.time()
    with Progress(TextColumn("[bold]sft"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                  disable=not cfg.progress) as bar:
        task = bar.add_task("sft", total=cfg.max_steps, completed=start, info="")
        for step in range(start, cfg.max_steps):
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                idx = batch_indices(len(examples), cfg.batch_size, step, micro, cfg.grad_accum, cfg.seed)
                batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], tok.pad_token_id).items()}
                with prec.autocast():
                    loss = sft_loss(model, batch) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.item()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            last = {"sft/loss": loss_sum, "sft/grad_norm": float(gnorm), "sft/lr": sched.get_last_lr()[0]}
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                logger.log(done, last)
            if test and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps):
                with prec.autocast():
                    ev = evaluate_greedy(model, tok, test, cfg.data.answer_style(), prompt_fn)
                logger.log(done, ev)
                last.update(ev)
                model.train()
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.max_steps:
                save_checkpoint(out, done, model, tok, opt, sched)
            bar.update(task, completed=done, info=f"loss {loss_sum:.3f}"
                       + (f" acc {last['eval/accuracy']:.3f}" if "eval/accuracy" in last else ""))
            if cfg.stop_at and done >= cfg.stop_at and done < cfg.max_steps:
                save_checkpoint(out, done, model, tok, opt, sched)
                logger.close()
                return {**last, "sft/stopped_at": done}
    logger.close()
    final = out / "final"
    model.save_pretrained(str(final))
    tok.save_pretrained(str(final))
    last["sft/wall_s"] = time.time() - t0
    last["sft/final_loss"] = last.get("sft/loss", float("nan"))
    from rewardlab.io import write_json
    write_json(out / "sft_summary.json", last)
    return last


def evaluate_greedy(model, tok, problems: list[Problem], style: str = "gsm8k",
                    prompt_fn: Callable[[Problem], str] | None = None) -> dict:
    """Greedy accuracy (+ testbed diagnostics) on ``problems``, keys prefixed ``eval/``; answers
    graded in ``style`` (gsm8k | math)."""
    from rewardlab.eval.evaluate import evaluate_policy

    summary, _ = evaluate_policy(model, tok, problems, style=style, greedy=True, k=0,
                                 max_new_tokens=_max_new_tokens(problems), prompt_fn=prompt_fn)
    return {f"eval/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}


def _max_new_tokens(problems: list[Problem]) -> int:
    return 64 if all(p.source == "testbed" for p in problems) else 512

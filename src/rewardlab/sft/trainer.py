"""Supervised fine-tuning: problem → reference solution, loss on solution tokens only.

Each example is a prompt (``question + "\\n"``, or ``data.prompt_template`` / the tokenizer's chat
template with ``data.chat``) followed by ``solution + EOS``; labels are -100 on
prompt tokens and padding. AdamW with linear warm-up and cosine decay, gradient accumulation and
clipping, periodic greedy evaluation, TensorBoard + JSONL metrics, and HF-format checkpoints that
resume exactly (the data order is a pure function of ``seed`` and the step).
"""

from __future__ import annotations


from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch

from rewardlab.config import check_numbers
from rewardlab.data.config import DataConfig, load_problems, make_prompt_fn, save_splits
from rewardlab.data.problem import Problem
from rewardlab.eval.evaluate import evaluate_policy
from rewardlab.models.loading import (load_model_and_tokenizer, make_testbed_policy, ModelConfig,
                                      training_precision)
from rewardlab.training.checkpoint import seed_everything
from rewardlab.training.distributed import Dist
from rewardlab.training.engine import Engine, epoch_batch, quiet_transformers
from rewardlab.training.schedule import make_optimizer, warmup_cosine


@dataclass
class SFTConfig:
    """Supervised fine-tuning settings."""

    RANGES: ClassVar[dict[str, str]] = {
        "steps": "[1, inf)", "batch_size": "[1, inf)", "grad_accum": "[1, inf)", "lr": "(0, inf)",
        "warmup_steps": "[0, inf)", "min_lr_ratio": "[0, 1]", "weight_decay": "[0, inf)",
        "grad_clip": "[0, inf]", "max_len": "[2, inf)", "eval_every": "[0, inf)",
        "save_every": "[0, inf)", "log_every": "[0, inf)", "stop_at": "[0, inf)",
        "max_bad_steps": "[1, inf)"}

    out: str = "runs/sft"
    """Run directory (checkpoints, metrics.jsonl, tb/, final/)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    steps: int = 300
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
    """Clip the global gradient norm to this (0 or inf: no clipping, the norm is only logged)."""
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
    max_bad_steps: int = 3
    """An optimizer step whose loss or gradient norm is nan/inf is skipped (its gradients dropped,
    counted in ``train/skipped_steps``); this many skips in a row stop the run with an error."""
    report_to: str = "tensorboard"
    """Experiment trackers of the metrics log (metrics.jsonl is always written): tensorboard
    (``<out>/tb``) | wandb | trackio | mlflow | none, or a comma list, e.g. ``wandb,tensorboard``;
    through accelerate's trackers (the non-default ones are extras: ``pip install
    'rewardlab[wandb]'``). See rewardlab.training.trackers."""
    push_to_hub: str | None = None
    """Upload the final model (with its card) to this Hugging Face Hub repo (``owner/name``)
    when the run finishes; the token is huggingface_hub's (``HF_TOKEN`` or a login)."""
    overwrite: bool = False
    """Start afresh in ``out``, deleting the run there (checkpoints, metrics, final model).
    Without it, an ``out`` holding a run made with a different config is refused (the error lists
    the fields that differ) and one with the same config is resumed."""

    def validate(self) -> None:
        check_numbers(self)
        if self.model.lora.enabled:
            raise ValueError("sft: model.lora is for rl only; set model.lora.r=0")
        self.data.validate()


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


def sft_loss(model, batch: dict[str, torch.Tensor], n_tokens: float | None = None) -> torch.Tensor:
    """Next-token cross-entropy over response tokens (labels != -100): their mean, or, given
    ``n_tokens`` (the global batch's count when the batch is sharded over processes), their sum
    divided by it."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()                       # (B, L-1, V)
    target = batch["labels"][:, 1:]                       # (B, L-1)
    if n_tokens is None:
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 target.reshape(-1), ignore_index=-100)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100, reduction="sum") / n_tokens


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The number of tokens :func:`sft_loss` averages over."""
    return int((batch["labels"][:, 1:] != -100).sum())


def build_model(cfg_model: ModelConfig, out_dir: Path, seed: int, dtype: str | None = None,
                dist: Dist | None = None):
    """Load the configured policy (in ``dtype``, default ``cfg_model.dtype``); ``testbed`` creates
    a fresh random one under ``out_dir`` (the main process writes it, the others then load it)."""
    path = cfg_model.name_or_path
    if path == "testbed":
        path = str(out_dir / "init")
        if dist is None or dist.is_main:
            make_testbed_policy(path, size=cfg_model.size, seed=seed)
        if dist is not None:
            dist.barrier()
    return load_model_and_tokenizer(path, dtype or cfg_model.dtype, cfg_model.device,
                                    cfg_model.trust_remote_code)


def train_sft(cfg: SFTConfig) -> dict:
    """Run SFT; returns the final metrics. The trained model lands in ``<out>/final``."""
    quiet_transformers()
    cfg.validate()
    eng = Engine(cfg.out, "sft", resume=cfg.resume, progress=cfg.progress, config=cfg)
    dist = eng.dist
    dist.check_divides("sft: batch_size", cfg.batch_size)
    seed_everything(cfg.seed)
    # float32 weights + bfloat16 autocast for bfloat16 runs (ModelConfig.mixed_precision)
    prec = training_precision(cfg.model.dtype, cfg.model.device, cfg.model.mixed_precision)
    train, test = load_problems(cfg.data, cfg.seed)   # recorded in out once the model loads
    if not train:
        raise ValueError(f"sft: no training problems for dataset {cfg.data.dataset!r}")
    if eng.checkpoint is not None:
        model, tok = load_model_and_tokenizer(eng.checkpoint, prec.storage, cfg.model.device,
                                              cfg.model.trust_remote_code)
    else:
        model, tok = build_model(cfg.model, eng.out, cfg.seed, prec.storage, dist)
    if dist.is_main:
        save_splits(cfg.data, train, test, eng.out)
    model = eng.prepare(model)   # FSDP launch: sharded (before the optimizer); else unchanged
    device = next(model.parameters()).device
    prompt_fn = make_prompt_fn(cfg.data, tok)
    examples = keep_trainable([encode_example(tok, prompt_fn(p), p.solution, cfg.max_len) for p in train],
                              cfg.max_len)
    opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
    eng.restore(opt, sched, grad_clip=cfg.grad_clip)   # DeepSpeed: its engine starts here
    model.train()
    last: dict = {}
    with eng.progress_bar(cfg.steps) as bar:
        for step in range(eng.start, cfg.steps):
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                idx = epoch_batch(len(examples), cfg.batch_size, step * cfg.grad_accum + micro, cfg.seed)
                batch = {k: v.to(device) for k, v in
                         collate([examples[i] for i in dist.shard(idx)], tok.pad_token_id).items()}
                # sharded over processes: each rank's token sum over the global token count
                n_tok = dist.sum(target_tokens(batch)) if dist.active else None
                with prec.autocast():
                    loss = sft_loss(model, batch, n_tok) / cfg.grad_accum
                eng.backward(loss)   # DeepSpeed: through its engine
                loss_sum += loss.item()
            loss_sum = dist.sum(loss_sum)
            gnorm = eng.optimizer_step(model.parameters(), opt, cfg.grad_clip, sched, loss=loss_sum)
            done = step + 1
            last = {"sft/loss": loss_sum, "sft/grad_norm": gnorm, "sft/lr": sched.get_last_lr()[0],
                    "train/skipped_steps": eng.skipped_steps}
            if eng.due(done, cfg.log_every, cfg.steps):
                eng.log(done, last)
            # sharded weights: every rank joins every forward, so all evaluate (rank 0 logs)
            if test and (dist.is_main or dist.sharded) and eng.due(done, cfg.eval_every, cfg.steps):
                with prec.autocast():
                    ev = evaluate_greedy(model, tok, test, cfg.data.answer_style(), prompt_fn)
                eng.log(done, ev)
                last.update(ev)
                model.train()
            if eng.due(done, cfg.save_every, cfg.steps):
                eng.save(done, model, tok, opt, sched)
            bar(done, f"loss {loss_sum:.3f}"
                + (f" acc {last['eval/accuracy']:.3f}" if "eval/accuracy" in last else ""))
            if cfg.stop_at and done >= cfg.stop_at and done < cfg.steps:
                eng.save(done, model, tok, opt, sched)
                eng.close()
                return {**last, "sft/stopped_at": done}
    eng.close()
    eng.save_final(model, tok)
    last["sft/wall_s"] = eng.wall_s
    last["sft/final_loss"] = last.get("sft/loss", float("nan"))
    return eng.summary("sft_summary.json", last)


def evaluate_greedy(model, tok, problems: list[Problem], style: str = "gsm8k",
                    prompt_fn: Callable[[Problem], str] | None = None) -> dict:
    """Greedy accuracy (+ testbed diagnostics) on ``problems``, keys prefixed ``eval/``; answers
    graded in ``style`` (gsm8k | math)."""

    summary, _ = evaluate_policy(model, tok, problems, style=style, greedy=True, k=0,
                                 max_new_tokens=_max_new_tokens(problems), prompt_fn=prompt_fn)
    return {f"eval/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}


def _max_new_tokens(problems: list[Problem]) -> int:
    return 64 if all(p.source == "testbed" for p in problems) else 512

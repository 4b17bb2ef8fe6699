"""Preference optimisation (DPO, IPO, KTO, ORPO, SimPO, Step-DPO) on a file of pairs.

A thin loop over :class:`~rewardlab.training.engine.Engine`: each optimizer step takes
``batch_size`` pairs (a pure function of ``seed`` and the step, so a run resumes exactly), runs
the chosen and the rejected sequences through the policy in one (2B, T) batch, and hands the
summed response log-probs to :data:`~rewardlab.preference.losses.PREFERENCE_LOSSES`. The
reference model's log-probs (for the losses that read them) are computed once, before the loop,
with the reference frozen; the reference is ``ref_model``, else the policy the run starts from.

Metrics (metrics.jsonl + TensorBoard): ``po/loss``, ``po/rewards/{chosen,rejected,margins,
accuracies}``, ``po/logps/{chosen,rejected}``, ``po/grad_norm``, ``po/lr``; with ``eval_pairs``
the same under ``eval/po/``; with held-out problems, greedy ``eval/accuracy``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from transformers import AutoConfig

from rewardlab.config import check_numbers, ConfigError
from rewardlab.data.config import DataConfig, load_problems, make_prompt_fn
from rewardlab.data.problem import Problem
from rewardlab.eval.evaluate import evaluate_policy
from rewardlab.models.batching import pad_ids
from rewardlab.models.loading import (load_model_and_tokenizer, make_testbed_policy, ModelConfig,
                                      training_precision)
from rewardlab.preference.losses import (kto_kl_sums, needs_reference, PREFERENCE_LOSSES,
                                         PreferenceInputs, PreferenceLossConfig, sequence_logps)
from rewardlab.preference.pairs import read_pairs
from rewardlab.training.checkpoint import seed_everything
from rewardlab.training.engine import Engine, epoch_batch, quiet_transformers
from rewardlab.training.schedule import make_optimizer, warmup_cosine


@dataclass
class POConfig:
    """Preference-optimisation settings."""

    RANGES: ClassVar[dict[str, str]] = {
        "steps": "[1, inf)", "batch_size": "[1, inf)", "grad_accum": "[1, inf)", "lr": "(0, inf)",
        "warmup_steps": "[0, inf)", "min_lr_ratio": "[0, 1]", "weight_decay": "[0, inf)",
        "grad_clip": "[0, inf]", "max_len": "[2, inf)", "eval_every": "[0, inf)",
        "save_every": "[0, inf)", "log_every": "[0, inf)", "stop_at": "[0, inf)",
        "max_bad_steps": "[1, inf)", "ref_batch_size": "[1, inf)"}

    out: str = "runs/po"
    """Run directory (checkpoints, metrics.jsonl, tb/, final/)."""
    loss: str = "dpo"
    """dpo | ipo | kto | orpo | simpo | step_dpo (step_dpo: DPO on step pairs, ``rewardlab pairs
    --kind step``). orpo and simpo need no reference model."""
    pairs: str = ""
    """Training pairs (JSONL from ``rewardlab pairs``, or TRL's prompt/chosen/rejected)."""
    eval_pairs: str | None = None
    """Held-out pairs: the loss's metrics on them every ``eval_every`` steps, as ``eval/po/...``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy to train (usually an SFT model: ``runs/sft/final``)."""
    ref_model: str | None = None
    """The reference model π_ref (hub id or directory); None: the policy the run starts from."""
    data: DataConfig = field(default_factory=lambda: DataConfig(n_train=0, n_test=0))
    """How questions are prompted (prompt_template / chat, as the policy was trained), and the
    held-out problems for greedy accuracy (n_test = 0: none)."""
    hparams: PreferenceLossConfig = field(default_factory=PreferenceLossConfig)
    """The losses' β, λ, γ."""
    seed: int = 0
    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 16
    """Pairs per micro-batch (2 × batch_size sequences per forward pass)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 or inf: no clipping, the norm is only logged)."""
    max_len: int = 128
    """Longest sequence (prompt + prefix + completion), in tokens; longer ones are cut at the end.
    A pair with either completion cut away entirely is left out, with a warning."""
    ref_batch_size: int = 64
    """Pairs per forward pass when computing the reference log-probs and held-out metrics."""
    eval_every: int = 50
    """Held-out evaluation every N steps (0: only at the end)."""
    save_every: int = 50
    """Checkpoint every N steps (0: only at the end)."""
    log_every: int = 10
    resume: bool = True
    """Continue from the latest checkpoint in ``out`` when there is one."""
    progress: bool = True
    stop_at: int = 0
    """Stop after this step as if interrupted, leaving a checkpoint (0: never). For budgets and tests."""
    max_bad_steps: int = 3
    """Optimizer steps in a row with a nan/inf loss or gradient norm before the run stops."""
    report_to: str = "tensorboard"
    """Experiment trackers of the metrics log (metrics.jsonl is always written): tensorboard
    (``<out>/tb``) | wandb | trackio | mlflow | none, or a comma list, e.g. ``wandb,tensorboard``;
    through accelerate's trackers (the non-default ones are extras: ``pip install
    'rewardlab[wandb]'``). See rewardlab.training.trackers."""
    push_to_hub: str | None = None
    """Upload the final model (with its card) to this Hugging Face Hub repo (``owner/name``)
    when the run finishes; the token is huggingface_hub's (``HF_TOKEN`` or a login)."""
    overwrite: bool = False
    """Start afresh in ``out``, deleting the run there."""

    def validate(self) -> None:
        check_numbers(self)
        if self.loss not in PREFERENCE_LOSSES:
            raise ConfigError(f"loss: {self.loss!r} is not one of {', '.join(PREFERENCE_LOSSES.names())}")
        if self.model.lora.enabled:
            raise ConfigError("po: model.lora is for rl only; set model.lora.r=0")
        self.data.validate()


# ---------------------------------------------------------------------------------------------
# Rows → token ids. An example is (sequences, desirable): two (ids, labels) sequences
# [chosen, rejected] for a pair, one for an unpaired KTO row (desirable True / False).

def completion_names(row: dict) -> list[str]:
    return ["completion"] if row["kind"] == "unpaired" else ["chosen", "rejected"]


def row_texts(row: dict, tok, prompt_fn, separator: str = "\n") -> tuple[str, list[str], bool]:
    """(prompt, completions, end_with_eos) of a pair or unpaired row.

    - rewardlab rows: the policy's prompt of ``question`` followed by each prefix step +
      separator; an outcome completion ends with EOS, a step completion with the separator.
    - TRL standard rows: ``prompt`` verbatim, completions + EOS.
    - TRL conversational rows: the tokenizer's chat template; the prompt ends with the generation
      prompt, a completion is what the template renders after it (its end-of-turn included)."""
    names = completion_names(row)
    if row.get("chat"):
        if not getattr(tok, "chat_template", None):
            raise ValueError(f"po: line {row['line']} is conversational (message lists), and the "
                             "policy's tokenizer has no chat template")
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        comps = []
        for n in names:
            full = tok.apply_chat_template(row["prompt"] + row[n], tokenize=False)
            if not full.startswith(prompt):
                raise ValueError(f"po: line {row['line']}: the chat template does not render the "
                                 f"prompt as the start of prompt + {n}")
            comps.append(full[len(prompt):])
        return prompt, comps, False
    if "prompt" in row and "question" not in row:
        prompt = row["prompt"]
    else:
        prompt = prompt_fn(Problem(id=str(row.get("id", "")), question=row["question"], solution="",
                                   answer="", source="pairs"))
    prompt += "".join(s + separator for s in row["prefix"])
    if row["kind"] == "step":
        return prompt, [row[n] + separator for n in names], False
    return prompt, [row[n] for n in names], True


def encode_row(tok, prompt: str, completions: list[str], eos: bool, max_len: int):
    """[(ids, labels)] of prompt + each completion (labels -100 on the prompt), cut to
    ``max_len``; None when a completion is cut away entirely."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for text in completions:
        r = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
        ids, labels = (p + r)[:max_len], ([-100] * len(p) + r)[:max_len]
        if all(t == -100 for t in labels[1:]):
            return None
        out.append((ids, labels))
    return out


def encode_rows(rows: list[dict], tok, prompt_fn, separator: str, max_len: int, what: str) -> list:
    """Examples (sequences, desirable) of ``rows``; rows that lose a completion at ``max_len``
    are left out with a warning (all of them: ValueError)."""
    examples = []
    for r in rows:
        seqs = encode_row(tok, *row_texts(r, tok, prompt_fn, separator), max_len)
        if seqs is not None:
            examples.append((seqs, r.get("label")))
    if not examples:
        raise ValueError(f"po: max_len={max_len} tokens cuts a completion of every row in {what}; "
                         "raise max_len")
    if len(examples) < len(rows):
        warnings.warn(f"po: {len(rows) - len(examples)} of {len(rows)} rows in {what} lose a whole "
                      f"completion at max_len={max_len} tokens and are left out", stacklevel=2)
    return examples


def collate(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (ids, labels) sequences into input_ids / attention_mask / labels, each (N, L);
    labels -100 on padding."""
    ids, mask, _ = pad_ids([i for i, _ in seqs], pad_id)
    labels, _, _ = pad_ids([lab for _, lab in seqs], -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_logps(model, examples: list, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs and lengths of B examples of S sequences each, both (B, S)
    (S = 2: [chosen, rejected]; S = 1: unpaired): one forward pass over the S·B sequences."""
    B, S = len(examples), len(examples[0][0])
    batch = collate([seqs[s] for s in range(S) for seqs, _ in examples], pad_id)   # s-major
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps, lengths = sequence_logps(logits, batch["labels"])          # (S·B,)
    return logps.view(S, B).T, lengths.view(S, B).T.float()           # (B, S)


@torch.no_grad()
def reference_logps(model, examples: list, pad_id: int, device, batch_size: int) -> torch.Tensor:
    """(N, S) reference log-probs of every example, in batches, the model in eval mode."""
    model.eval()
    out = [batch_logps(model, examples[i:i + batch_size], pad_id, device)[0].cpu()
           for i in range(0, len(examples), batch_size)]
    return torch.cat(out)


def po_step_loss(name: str, hparams: PreferenceLossConfig, logps: torch.Tensor,
                 lengths: torch.Tensor, ref: torch.Tensor | None, desirable=None,
                 kto_kl: float | None = None):
    """The registered loss on one batch: logps / lengths / ref all (B, S) as :func:`batch_logps`
    returns them; ``desirable`` (B,) bool for unpaired rows (S = 1, KTO); ``kto_kl`` KTO's
    mean log-ratio over the whole batch when this one is a shard of it (see :func:`shard_kl`)."""
    x = PreferenceInputs(logps[:, 0], chosen_lengths=lengths[:, 0], kto_kl=kto_kl)
    if ref is not None:
        x.ref_chosen_logps = ref[:, 0]
    if logps.shape[1] == 2:
        x.policy_rejected_logps, x.rejected_lengths = logps[:, 1], lengths[:, 1]
        if ref is not None:
            x.ref_rejected_logps = ref[:, 1]
    else:
        x.desirable = torch.as_tensor(desirable, dtype=torch.bool, device=logps.device)
    return PREFERENCE_LOSSES.get(name)(x, hparams)


def shard_kl(name: str, logps: torch.Tensor, ref: torch.Tensor | None, dist) -> float | None:
    """KTO's batch statistic for a batch sharded over processes: the mean log-ratio h of every
    response of the WHOLE batch (:func:`kto_kl_sums` summed over the ranks, a collective every rank
    joins); None for other losses and for one process (the loss estimates it from its batch)."""
    if name != "kto" or ref is None or not dist.active:
        return None
    total, n = dist.sum(kto_kl_sums(logps, ref)).tolist()
    return total / max(n, 1.0)


def _desirable(examples: list) -> list | None:
    return [d for _, d in examples] if examples and examples[0][1] is not None else None


# ---------------------------------------------------------------------------------------------

def load_policy(cfg: POConfig, eng: Engine, storage: str):
    """The policy a run trains: from its checkpoint when resuming, else ``model.name_or_path``;
    ``testbed`` creates a fresh random policy in ``<out>/init`` (the main process writes it)."""
    if eng.checkpoint is not None:
        return load_model_and_tokenizer(eng.checkpoint, storage, cfg.model.device)
    path = cfg.model.name_or_path
    if path == "testbed":
        path = str(eng.out / "init")
        if eng.dist.is_main:
            make_testbed_policy(path, size=cfg.model.size, seed=cfg.seed)
        eng.dist.barrier()
    return load_model_and_tokenizer(path, storage, cfg.model.device, cfg.model.trust_remote_code)


def evaluate_greedy(model, tok, problems, style: str, prompt_fn) -> dict:
    """Greedy held-out accuracy (+ testbed diagnostics), keys ``eval/...``."""
    testbed = all(p.source == "testbed" for p in problems)
    summary, _ = evaluate_policy(model, tok, problems, style=style, greedy=True, k=0,
                                 max_new_tokens=64 if testbed else 512, prompt_fn=prompt_fn)
    return {f"eval/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}


def _check_reference(cfg: POConfig) -> None:
    """Refuse, before any work, a loss that needs a reference model that cannot be loaded."""
    if not needs_reference(cfg.loss) or cfg.ref_model is None:
        return
    try:
        AutoConfig.from_pretrained(cfg.ref_model, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:   # noqa: BLE001 - any failure means: no reference model
        raise ConfigError(f"po: loss {cfg.loss} needs a reference model, and ref_model="
                          f"{cfg.ref_model!r} cannot be loaded ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); give a model directory or "
                          "hub id, or leave ref_model unset to use the starting policy") from None


def _check_kind(cfg: POConfig, rows: list[dict], path: str) -> None:
    if rows[0]["kind"] == "unpaired" and cfg.loss != "kto":
        raise ConfigError(f"{path}: unpaired rows (completion/label) train with loss kto only, "
                          f"not {cfg.loss}; build pairs instead (rewardlab pairs --kind outcome)")
    if cfg.loss == "step_dpo":
        bad = next((r for r in rows if r["kind"] != "step"), None)
        if bad is not None:
            raise ConfigError(f"{path}:{bad['line']}: loss step_dpo trains on step pairs (rewardlab "
                              f"pairs --kind step); this row is an {bad['kind']} pair")


def evaluate_pairs(model, pairs, ref, cfg: POConfig, pad_id: int, device, prec) -> dict:
    """The loss's metrics over held-out examples (means over batches, weighted by batch size)."""
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad(), prec.autocast():
        for i in range(0, len(pairs), cfg.ref_batch_size):
            chunk = pairs[i:i + cfg.ref_batch_size]
            logps, lengths = batch_logps(model, chunk, pad_id, device)
            r = ref[i:i + len(chunk)].to(device) if ref is not None else None
            loss, m = po_step_loss(cfg.loss, cfg.hparams, logps, lengths, r, _desirable(chunk))
            for k, v in {"loss": loss.item(), **m}.items():
                sums[k] = sums.get(k, 0.0) + v * len(chunk)
    model.train()
    return {f"eval/po/{k}": v / len(pairs) for k, v in sums.items()}


def train_po(cfg: POConfig) -> dict:
    """Run preference optimisation; returns the final metrics. The model lands in ``<out>/final``."""
    quiet_transformers()
    cfg.validate()
    if not cfg.pairs:
        raise ConfigError("po: pairs is not set (a JSONL of preference pairs; see rewardlab pairs)")
    rows = read_pairs(cfg.pairs)                   # bad input fails here, before any work
    eval_rows = read_pairs(cfg.eval_pairs) if cfg.eval_pairs else []
    _check_kind(cfg, rows, cfg.pairs)
    if eval_rows:
        _check_kind(cfg, eval_rows, cfg.eval_pairs)
    _check_reference(cfg)
    eng = Engine(cfg.out, "po", resume=cfg.resume, progress=cfg.progress, config=cfg)
    dist = eng.dist
    dist.check_divides("po: batch_size", cfg.batch_size)
    seed_everything(cfg.seed)
    prec = training_precision(cfg.model.dtype, cfg.model.device, cfg.model.mixed_precision)
    model, tok = load_policy(cfg, eng, prec.storage)
    model = eng.prepare(model)   # FSDP launch: sharded (before the optimizer); else unchanged
    device = next(model.parameters()).device
    prompt_fn = make_prompt_fn(cfg.data, tok)
    sep = "\n\n" if cfg.data.answer_style() == "math" else "\n"
    pairs = encode_rows(rows, tok, prompt_fn, sep, cfg.max_len, cfg.pairs)
    eval_set = encode_rows(eval_rows, tok, prompt_fn, sep, cfg.max_len, cfg.eval_pairs) if eval_rows else []
    ref = ref_eval = None
    if needs_reference(cfg.loss):
        ref_path = cfg.ref_model or (str(eng.out / "init") if cfg.model.name_or_path == "testbed"
                                     else cfg.model.name_or_path)
        ref_model, _ = load_model_and_tokenizer(ref_path, prec.storage, cfg.model.device,
                                                cfg.model.trust_remote_code)
        ref_model = dist.wrap(ref_model)   # FSDP: sharded too; every rank scores every pair
        with prec.autocast():
            ref = reference_logps(ref_model, pairs, tok.pad_token_id, device, cfg.ref_batch_size)
            ref_eval = (reference_logps(ref_model, eval_set, tok.pad_token_id, device,
                                        cfg.ref_batch_size) if eval_set else None)
        del ref_model
    _, test = load_problems(cfg.data, cfg.seed, None) if cfg.data.n_test else ([], [])
    opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
    eng.restore(opt, sched, grad_clip=cfg.grad_clip)   # DeepSpeed: its engine starts here
    model.train()
    last: dict = {}
    with eng.progress_bar(cfg.steps) as bar:
        for step in range(eng.start, cfg.steps):
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                idx = dist.shard(epoch_batch(len(pairs), cfg.batch_size,
                                             step * cfg.grad_accum + micro, cfg.seed))
                chunk = [pairs[i] for i in idx]
                with prec.autocast():
                    logps, lengths = batch_logps(model, chunk, tok.pad_token_id, device)
                    r = ref[idx].to(device) if ref is not None else None
                    loss, m = po_step_loss(cfg.loss, cfg.hparams, logps, lengths, r, _desirable(chunk),
                                           shard_kl(cfg.loss, logps, r, dist))
                # each rank's mean over its shard, weighted by its share of the batch; gradients
                # are summed over ranks: the mean over the whole batch
                share = len(idx) / (cfg.batch_size * cfg.grad_accum)
                eng.backward(loss * share)   # DeepSpeed: through its engine
                for k, v in {"loss": loss.item(), **m}.items():
                    sums[k] = sums.get(k, 0.0) + v * share
            sums = dist.sum_dict(sums)
            gnorm = eng.optimizer_step(model.parameters(), opt, cfg.grad_clip, sched, loss=sums["loss"])
            done = step + 1
            last = {**{f"po/{k}": v for k, v in sums.items()}, "po/grad_norm": gnorm,
                    "po/lr": sched.get_last_lr()[0], "train/skipped_steps": eng.skipped_steps}
            if eng.due(done, cfg.log_every, cfg.steps):
                eng.log(done, last)
            # sharded weights: every rank joins every forward, so all evaluate (rank 0 logs)
            if (dist.is_main or dist.sharded) and eng.due(done, cfg.eval_every, cfg.steps) \
                    and (eval_set or test):
                ev = evaluate_pairs(model, eval_set, ref_eval, cfg, tok.pad_token_id, device, prec) \
                    if eval_set else {}
                if test:
                    with prec.autocast():
                        ev.update(evaluate_greedy(model, tok, test, cfg.data.answer_style(), prompt_fn))
                    model.train()
                eng.log(done, ev)
                last.update(ev)
            if eng.due(done, cfg.save_every, cfg.steps):
                eng.save(done, model, tok, opt, sched)
            bar(done, f"loss {sums['loss']:.3f} acc {sums.get('rewards/accuracies', float('nan')):.2f}")
            if cfg.stop_at and done >= cfg.stop_at and done < cfg.steps:
                eng.save(done, model, tok, opt, sched)
                eng.close()
                return {**last, "po/stopped_at": done}
    eng.close()
    eng.save_final(model, tok)
    last["po/wall_s"] = eng.wall_s
    last["po/n_pairs"] = len(pairs)
    return eng.summary("po_summary.json", last)


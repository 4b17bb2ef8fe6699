"""Training reward models: ORM, PRM (LM-head or head form, labels or step preferences) and
Bradley–Terry, with one thin loop.

    metrics = train_reward_model(RMTrainConfig(kind="prm", data=["rm.jsonl"], out="runs/prm"))

Each objective (``orm``, ``prm``, ``prm_pref``, ``bt``) is a registry entry of three functions —
encode a row, collate rows into a batch, and the loss ``(rm, batch, cfg) -> (loss, metrics)`` —
whose math lives in :mod:`rewardlab.reward_models.losses`. The loop is AdamW with linear warm-up and
cosine decay, gradient accumulation and clipping, a rich progress bar, TensorBoard + JSONL
metrics (``<out>/tb``, ``<out>/metrics.jsonl``) and HF-format checkpoints under
``<out>/checkpoints`` that resume exactly: the data order is a pure function of the seed and the
step, and the LR schedule spans ``steps`` (or all ``epochs``) whatever ``stop_after`` says,
so a run stopped early (or killed) continues where it left off when called again. At the end
the held-out split is scored: step AUROC/F1/ECE (PRM), outcome AUROC/ECE (ORM), pairwise
accuracy (BT and PRM step preferences). The trained model lands in ``<out>/final``.
"""

from __future__ import annotations


import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch

from rewardlab.config import check_numbers, ConfigError
from rewardlab.data.formats import ACCEPTED, resolve_formats
from rewardlab.io import DataError
from rewardlab.models.batching import IGNORE_INDEX
from rewardlab.models.loading import make_testbed_policy, training_precision
from rewardlab.reward_models.data import (collate_orm, collate_pairs, collate_prm, PairRow,
                                          read_rm_rows)
from rewardlab.reward_models.losses import (bt_loss, orm_bce_loss, prm_ce_loss, step_logit,
                                            step_probs)
from rewardlab.reward_models.models import (build_reward_model, load_reward_model, RewardModel,
                                            RMSpec)
from rewardlab.stats import auroc, ece, f1_at, pairwise_accuracy
from rewardlab.training.checkpoint import seed_everything
from rewardlab.training.distributed import Dist
from rewardlab.training.engine import Engine, epoch_batch, quiet_transformers
from rewardlab.training.modelcard import numeric_metrics
from rewardlab.training.schedule import make_optimizer, warmup_cosine


@dataclass
class RMTrainConfig:
    """Reward-model training settings."""

    RANGES: ClassVar[dict[str, str]] = {
        "eval_split": "[0, 1)", "epochs": "(0, inf)", "steps": "[0, inf)", "stop_after": "[0, inf)",
        "batch_size": "[1, inf)", "grad_accum": "[1, inf)", "lr": "(0, inf)", "warmup_ratio": "[0, 1)",
        "min_lr_ratio": "[0, 1]", "weight_decay": "[0, inf)", "grad_clip": "[0, inf]",
        "margin": "[0, inf)", "centering": "[0, inf)", "max_len": "[1, inf)", "save_every": "[0, inf)",
        "log_every": "[0, inf)", "eval_batch_size": "[1, inf)", "max_bad_steps": "[1, inf)"}

    kind: Literal["orm", "prm", "bt"] = "prm"
    """orm (outcome, BCE) | prm (process, per-step CE) | bt (Bradley–Terry pairs)."""
    form: Literal["lm", "head"] = "lm"
    """PRM form: lm (logits of the label tokens at each tag) | head (2-class token head)."""
    preference: bool = False
    """PRM only: train from step preferences (rows with prefix/chosen_step/rejected_step) with
    the Bradley–Terry loss on the steps' logit(P('+'))."""
    model: str = "testbed"
    """Backbone: a policy checkpoint directory, a hub id, or ``testbed`` (a fresh random testbed
    policy is created under ``<out>/init``)."""
    size: str = "tiny"
    """Testbed backbone size (tiny | small | base) when ``model`` is ``testbed``."""
    data: list[str] = field(default_factory=list)
    """Training JSONL file(s) (row formats in rewardlab.reward_models.data)."""
    eval_data: list[str] = field(default_factory=list)
    """Held-out JSONL file(s); when empty, ``eval_split`` of ``data`` is held out."""
    data_format: str = "auto"
    """Row format of ``data``/``eval_data``: auto (detected per row) | rewardlab | trl | a format
    name such as trl-stepwise (rewardlab.data.formats)."""
    eval_split: float = 0.1
    """Fraction of ``data`` held out for evaluation when ``eval_data`` is empty (0: none)."""
    out: str = "runs/rm"
    """Run directory (checkpoints/, final/, metrics.jsonl, tb/, rm_summary.json)."""
    epochs: float = 1.0
    """Passes over the training rows; sets the run's length when ``steps`` is 0."""
    steps: int = 0
    """Optimizer steps of the whole run (and of the LR schedule); 0: from ``epochs``. The data
    is cycled through fresh permutations as needed."""
    stop_after: int = 0
    """End this call after this many optimizer steps in all (0: run to the end), with a
    checkpoint; the schedule is unchanged, so calling again resumes the same run exactly."""
    batch_size: int = 16
    """Rows per micro-batch (a preference pair counts as one row)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    warmup_ratio: float = 0.05
    """Fraction of the optimizer steps spent on linear warm-up."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr × min_lr_ratio."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 or inf: no clipping, the norm is only logged)."""
    seed: int = 0
    tag: str = " ки"
    """PRM step tag (Math-Shepherd ' ки', seed blog '<|prm_label|>', Qwen '<extra_0>'); added
    to the vocabulary (embeddings resized) when it is not one token."""
    good_token: str = "+"
    """PRM LM-head form: label token of a good step."""
    bad_token: str = "-"
    """PRM LM-head form: label token of a bad step."""
    aggregation: Literal["product", "min", "last"] = "product"
    """PRM solution score saved with the model: product | min | last of the step scores."""
    layout: Literal["rewardlab", "trl", "qwen"] = "rewardlab"
    """PRM text layout: rewardlab (``question\\n step TAG\\n step TAG``) | trl (TRL PRMTrainer's:
    BOS, question, each step followed by the separator ``tag``, e.g. ``tag="\\n"``; a model
    TRL's users read as they read their own) | qwen (Qwen2.5-Math-PRM's chat layout)."""
    orm_loss: Literal["all", "last"] = "all"
    """ORM: BCE on every solution token (all) or on the last token only (last)."""
    margin: float = 0.0
    """Bradley–Terry margin m in −log σ(r_c − r_r − m)."""
    centering: float = 0.0
    """Bradley–Terry centering coefficient c in + c·(r_c + r_r)²."""
    max_len: int = 1024
    """Rows longer than this many tokens are skipped (counted in rm/skipped_long)."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0: only when the run stops)."""
    log_every: int = 10
    """Log training metrics every N optimizer steps."""
    eval_batch_size: int = 64
    dtype: str = "float32"
    """float32 | bfloat16 | float16 | auto."""
    mixed_precision: bool = True
    """With dtype bfloat16: float32 weights and optimizer state, passes under bfloat16 autocast
    (false: train the bfloat16 weights themselves; see ``ModelConfig.mixed_precision``)."""
    device: str = "auto"
    trust_remote_code: bool = False
    resume: bool = True
    """Continue from the latest checkpoint in ``out`` when there is one."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = True
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
        """Refuse impossible settings with a ConfigError that says how to fix them."""
        if isinstance(self.data, str):        # one path given as a string
            self.data = [self.data]
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        check_numbers(self)
        try:
            resolve_formats(ACCEPTED["prm-preference" if self.preference else self.kind],
                            self.data_format)
        except ValueError as e:
            raise ConfigError(f"rm: data_format: {e}") from None
        if self.preference and self.kind != "prm":
            raise ConfigError("rm: preference=true is for kind=prm (step preferences); for "
                              "solution-level preferences use kind=bt")
        try:
            self.spec().validate()
        except ValueError as e:
            raise ConfigError(f"rm: {e}") from None

    def spec(self) -> RMSpec:
        return RMSpec(kind=self.kind, form=self.form, tag=self.tag, good_token=self.good_token,
                      bad_token=self.bad_token, aggregation=self.aggregation, layout=self.layout)

    @property
    def objective(self) -> str:
        """Registry key of the training objective."""
        return "prm_pref" if self.kind == "prm" and self.preference else self.kind


# --------------------------------------------------------------------------------------------
# Objectives: encode a row, collate items, compute (loss, metrics)


@dataclass(frozen=True)
class Objective:
    """A training objective: ``encode(rm, row, cfg)`` → item (token ids + targets);
    ``collate(rm, items, cfg)`` → batch of tensors; ``loss(rm, batch, cfg)`` → (loss, metrics)."""

    encode: Callable[[RewardModel, Any, RMTrainConfig], tuple]
    collate: Callable[[RewardModel, list[tuple], RMTrainConfig], dict]
    loss: Callable[[RewardModel, dict, RMTrainConfig], tuple[torch.Tensor, dict]]


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, obj: Objective) -> None:
    if name in OBJECTIVES:
        raise ValueError(f"RM objective {name!r} is already registered")
    OBJECTIVES[name] = obj


def loss_units(batch: dict) -> int:
    """What an objective's loss averages over: pairs (``read_index`` batches hold chosen then
    rejected rows), else labelled positions (tokens for the ORM, tags for the PRM)."""
    if "read_index" in batch:
        return int(batch["read_index"].shape[0]) // 2
    return int((batch["labels"] != IGNORE_INDEX).sum())


def _orm_loss(rm, batch, cfg):
    logits = rm.token_logits(batch["input_ids"], batch["attention_mask"])   # (B, L)
    loss = orm_bce_loss(logits, batch["labels"])
    sel = batch["labels"] != -100
    acc = ((logits[sel] > 0).float() == (batch["labels"][sel] > 0.5).float()).float().mean()
    return loss, {"rm/loss": loss.item(), "rm/token_acc": acc.item()}


def _prm_loss(rm, batch, cfg):
    z = rm.pair_logits(batch["input_ids"], batch["attention_mask"])          # (B, L, 2)
    loss = prm_ce_loss(z, batch["labels"])
    tags = batch["tag_mask"]
    p, y = step_probs(z)[tags], batch["labels"][tags]
    acc = ((p > 0.5) == (y > 0.5)).float().mean() if len(y) else torch.tensor(float("nan"))
    return loss, {"rm/loss": loss.item(), "rm/step_acc": acc.item()}


def _pair_loss(read: Callable[[RewardModel, dict], torch.Tensor]):
    def loss_fn(rm, batch, cfg):
        r = read(rm, batch)                                                  # (2B,)
        r_chosen, r_rejected = r.chunk(2)                                    # (B,), (B,)
        loss = bt_loss(r_chosen, r_rejected, cfg.margin, cfg.centering)
        acc = (r_chosen > r_rejected).float().mean()
        return loss, {"rm/loss": loss.item(), "rm/pair_acc": acc.item(),
                      "rm/reward_margin": (r_chosen - r_rejected).mean().item(),
                      "rm/reward_mean": r.mean().item()}
    return loss_fn


def _read_scalar(rm, batch):
    logits = rm.token_logits(batch["input_ids"], batch["attention_mask"])   # (2B, L)
    return logits[torch.arange(logits.shape[0], device=logits.device), batch["read_index"]]


def _read_step_logit(rm, batch):
    z = rm.pair_logits(batch["input_ids"], batch["attention_mask"])          # (2B, L, 2)
    r = step_logit(z)                                                        # (2B, L)
    return r[torch.arange(r.shape[0], device=r.device), batch["read_index"]]


register_objective("orm", Objective(
    encode=lambda rm, row, cfg: (rm.encode(row.question, row.steps), row.outcome),
    collate=lambda rm, items, cfg: collate_orm([e for e, _ in items], [y for _, y in items],
                                               rm.tokenizer.pad_token_id, rm.padding_side,
                                               last_only=cfg.orm_loss == "last"),
    loss=_orm_loss))
register_objective("prm", Objective(
    encode=lambda rm, row, cfg: (rm.encode(row.question, row.steps), row.step_labels),
    collate=lambda rm, items, cfg: collate_prm([e for e, _ in items], [y for _, y in items],
                                               rm.tokenizer.pad_token_id, rm.padding_side),
    loss=_prm_loss))
register_objective("bt", Objective(
    encode=lambda rm, row, cfg: (rm.encode(row.question, row.chosen),
                                 rm.encode(row.question, row.rejected)),
    collate=lambda rm, items, cfg: collate_pairs([c for c, _ in items], [r for _, r in items],
                                                 rm.tokenizer.pad_token_id, rm.padding_side,
                                                 "last"),
    loss=_pair_loss(_read_scalar)))
register_objective("prm_pref", Objective(
    encode=OBJECTIVES["bt"].encode,
    collate=lambda rm, items, cfg: collate_pairs([c for c, _ in items], [r for _, r in items],
                                                 rm.tokenizer.pad_token_id, rm.padding_side,
                                                 "last_tag"),
    loss=_pair_loss(_read_step_logit)))


def encode_rows(rm: RewardModel, rows: list, cfg: RMTrainConfig) -> tuple[list[tuple], int]:
    """Encode every row for the objective; rows over ``max_len`` tokens are dropped. Returns
    (items, n_skipped). A row the tokenizer cannot tag raises DataError naming file and line."""
    enc = OBJECTIVES[cfg.objective].encode
    items, skipped = [], 0
    for row in rows:
        try:
            item = enc(rm, row, cfg)
        except ValueError as e:
            path, line = row.source
            raise DataError(path or "<rows>", str(e), line or None) from None
        ids = [x for x in item if hasattr(x, "input_ids")]
        if max(len(x.input_ids) for x in ids) > cfg.max_len:
            skipped += 1
            continue
        items.append(item)
    return items, skipped


def total_steps(n: int, cfg: RMTrainConfig) -> int:
    """Optimizer steps of the whole run: ``steps`` when set, else
    ceil(epochs · ceil(n / batch_size) / grad_accum)."""
    if cfg.steps:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * math.ceil(n / cfg.batch_size) / cfg.grad_accum))


def split_rows(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded shuffle, the last ``fraction`` held out (at least one row
    when fraction > 0 and there are two rows or more)."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_eval = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    return [rows[i] for i in idx[:-n_eval]], [rows[i] for i in idx[-n_eval:]]


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def objective_loss(rm: RewardModel, items: list[tuple], cfg: RMTrainConfig,
                   batch_size: int = 64) -> float:
    """Mean training loss of ``cfg.objective`` over encoded ``items`` (batches weighted by
    size), in eval mode and without gradient."""
    if not items:
        return float("nan")
    objective = OBJECTIVES[cfg.objective]
    was_training = rm.training
    rm.eval()
    total = 0.0
    try:
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            batch = {k: v.to(rm.device) for k, v in objective.collate(rm, chunk, cfg).items()}
            total += objective.loss(rm, batch, cfg)[0].item() * len(chunk)
    finally:
        rm.train(was_training)
    return total / len(items)


@torch.no_grad()
def evaluate_reward_model(rm: RewardModel, rows: list, preference: bool = False,
                          batch_size: int = 64) -> dict[str, float]:
    """Held-out metrics through the public scoring API.

    PRM (labelled steps): eval/step_auroc, eval/step_f1 (positive = good step, p ≥ 0.5),
    eval/step_f1_error (positive = bad step), eval/step_ece, and eval/outcome_auroc of the
    aggregated score when outcomes are given. ORM: eval/outcome_auroc, eval/outcome_ece,
    eval/outcome_f1. BT and PRM step preferences: eval/pair_acc. Soft labels count as
    positive when ≥ 0.5 for AUROC/F1; ECE uses them as they are."""

    if not rows:
        return {}
    if isinstance(rows[0], PairRow):
        qs = [r.question for r in rows]
        chosen = rm.score(qs, [r.chosen for r in rows], batch_size)
        rejected = rm.score(qs, [r.rejected for r in rows], batch_size)
        if preference:
            c, r_ = [x.step_scores[-1] for x in chosen], [x.step_scores[-1] for x in rejected]
        else:
            c, r_ = [x.score for x in chosen], [x.score for x in rejected]
        return {"eval/pair_acc": pairwise_accuracy(c, r_), "eval/n": float(len(rows))}
    res = rm.score([r.question for r in rows], [r.steps for r in rows], batch_size)
    out: dict[str, float] = {"eval/n": float(len(rows))}
    if rm.kind == "prm":
        p = [s for x in res for s in x.step_scores]
        y = [t for r in rows for t in r.step_labels]
        yb = [int(t >= 0.5) for t in y]
        out.update({"eval/step_auroc": auroc(p, yb), "eval/step_f1": f1_at(p, yb),
                    "eval/step_f1_error": f1_at([1 - v for v in p], [1 - t for t in yb]),
                    "eval/step_ece": ece(p, y), "eval/n_steps": float(len(p))})
    labelled = [(x.score, r.outcome) for x, r in zip(res, rows) if r.outcome is not None]
    if labelled:
        s, y = [a for a, _ in labelled], [b for _, b in labelled]
        out["eval/outcome_auroc"] = auroc(s, [int(t >= 0.5) for t in y])
        if rm.kind == "orm":
            out["eval/outcome_ece"] = ece(s, y)
            out["eval/outcome_f1"] = f1_at(s, [int(t >= 0.5) for t in y])
    return out


# --------------------------------------------------------------------------------------------
# The loop


def _build_or_resume(cfg: RMTrainConfig, out: Path, dtype: str, ckpt: Path | None, dist: Dist):
    if ckpt is not None:
        rm = load_reward_model(ckpt, cfg.device, dtype=dtype,
                               trust_remote_code=cfg.trust_remote_code)
        want, got = cfg.spec().to_json(), rm.spec.to_json()
        if want != got:
            raise ConfigError(f"rm: the checkpoint {ckpt} was trained with {got}, the config says "
                             f"{want}; use another out directory or pass --overwrite")
        return rm, ckpt
    base = cfg.model
    if base == "testbed":
        base = str(out / "init")
        if dist.is_main:   # one process writes the random base, the others load it
            make_testbed_policy(base, size=cfg.size, seed=cfg.seed)
        dist.barrier()
    try:
        rm = build_reward_model(base, cfg.spec(), cfg.device, dtype,
                                trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)
    except OSError as e:  # not a directory with a model, nor a hub id we can reach
        raise ConfigError(f"rm: cannot load the base model {base!r}: {e}") from None
    return rm, None


def train_reward_model(cfg: RMTrainConfig) -> dict:
    """Train (or resume) a reward model; returns the final metrics (see the module docstring)."""
    quiet_transformers()
    cfg.validate()
    if not cfg.data:
        raise ConfigError("rm: no training data; set data (JSONL files, row formats in "
                          "rewardlab.reward_models.data)")
    eng = Engine(cfg.out, "rm", resume=cfg.resume, progress=cfg.progress, tensorboard=cfg.tensorboard,
                 config=cfg)
    dist = eng.dist
    dist.check_divides("rm: batch_size", cfg.batch_size)
    seed_everything(cfg.seed)
    rows = read_rm_rows(cfg.data, cfg.kind, cfg.preference, cfg.data_format)
    if cfg.eval_data:
        train_rows, eval_rows = rows, read_rm_rows(cfg.eval_data, cfg.kind, cfg.preference,
                                                    cfg.data_format)
    else:
        train_rows, eval_rows = split_rows(rows, cfg.eval_split, cfg.seed)
    prec = training_precision(cfg.dtype, cfg.device, cfg.mixed_precision)
    rm, _ = _build_or_resume(cfg, eng.out, prec.storage, eng.checkpoint, dist)
    rm = eng.prepare(rm)   # FSDP launch: sharded (before the optimizer); else unchanged
    device = rm.device
    items, skipped = encode_rows(rm, train_rows, cfg)
    if not items:
        raise DataError(cfg.data[0], f"no training rows left (skipped {skipped} over "
                                     f"max_len={cfg.max_len} tokens)")
    objective = OBJECTIVES[cfg.objective]
    total = total_steps(len(items), cfg)
    stop = min(total, cfg.stop_after) if cfg.stop_after else total
    warmup = int(cfg.warmup_ratio * total)
    opt = make_optimizer(rm.parameters(), cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total, warmup, cfg.min_lr_ratio))
    eng.restore(opt, sched, grad_clip=cfg.grad_clip)   # DeepSpeed: its engine starts here
    rm.train()
    last: dict[str, float] = {}
    with eng.progress_bar(stop, f"train-rm {cfg.objective}") as bar:
        for step in range(eng.start, stop):
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                idx = epoch_batch(len(items), cfg.batch_size, step * cfg.grad_accum + micro,
                                  cfg.seed, partial_last=True)
                rows, placeholder = dist.shard_rows(idx)   # a short last batch: uneven shards
                batch = {k: v.to(device) for k, v in
                         objective.collate(rm, [items[i] for i in rows], cfg).items()} if rows else None
                share = 1.0   # sharded over processes: this rank's share of the batch's loss units
                if dist.active:
                    units = 0 if batch is None or placeholder else loss_units(batch)
                    share = units / max(dist.sum(units), 1)
                if batch is None:   # no rows on this rank (DDP): its gradients are zeros
                    continue
                with prec.autocast():
                    loss, m = objective.loss(rm, batch, cfg)
                eng.backward(loss / cfg.grad_accum if share == 1.0 else loss * share / cfg.grad_accum)
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + (v if share == 1.0 else v * share) / cfg.grad_accum
            sums = dist.sum_dict(sums)
            gnorm = eng.optimizer_step(rm.parameters(), opt, cfg.grad_clip, sched,
                                       loss=sums.get("rm/loss"))
            done = step + 1
            last = {**sums, "rm/grad_norm": gnorm, "rm/lr": sched.get_last_lr()[0],
                    "train/skipped_steps": eng.skipped_steps}
            if eng.due(done, cfg.log_every, stop):
                eng.log(done, last)
            if eng.due(done, cfg.save_every, stop):
                eng.save(done, rm, None, opt, sched, extra={"total_steps": total})
            bar(done, f"loss {sums['rm/loss']:.4f}")
    finished = stop == total
    with prec.autocast():
        ev = evaluate_reward_model(rm, eval_rows, cfg.preference, cfg.eval_batch_size)
        if eval_rows:
            ev["eval/loss"] = objective_loss(rm, encode_rows(rm, eval_rows, cfg)[0], cfg,
                                             cfg.eval_batch_size)
    if ev:
        eng.log(stop, ev)
    eng.close()
    summary = {
        **last, **ev, "rm/final_loss": last.get("rm/loss", float("nan")),
        "rm/steps": float(stop), "rm/total_steps": float(total), "rm/finished": float(finished),
        "rm/n_train": float(len(items)), "rm/skipped_long": float(skipped), "rm/wall_s": eng.wall_s}
    if finished:   # FSDP: the weights are gathered to rank 0, which writes them
        eng.save_final(rm, None, card=_card(rm, cfg, summary))
    return eng.summary("rm_summary.json", summary)


def _card(rm: RewardModel, cfg: RMTrainConfig, summary: dict):
    """The final model's card: its base, data, held-out metrics and the command."""
    base = f"testbed ({cfg.size}, random init, seed {cfg.seed})" if cfg.model == "testbed" \
        else cfg.model
    data = list(cfg.data) + [f"{d} (held out)" for d in cfg.eval_data]
    if not cfg.eval_data and cfg.eval_split > 0:
        data.append(f"{cfg.eval_split:g} of the rows held out for evaluation (seed {cfg.seed})")
    metrics = numeric_metrics(summary, ("eval/", "rm/final_loss", "rm/steps", "rm/n_train"))
    card = rm.model_card(base=base, data=data, metrics=metrics)
    card.details.append(f"Objective: {cfg.objective}; {int(summary['rm/steps'])} optimizer steps, "
                        f"batch {cfg.batch_size} x {cfg.grad_accum}, lr {cfg.lr:g}; the full "
                        "settings are in the run's config.yaml")
    return card

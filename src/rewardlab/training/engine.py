"""The loop plumbing every trainer shares (SFT, reward models, RL): batch order, the optimizer
step, output directory, exact resume, metrics log and progress bar.

A trainer is a thin loop over :class:`Engine`::

    eng = Engine(out, "sft", total_steps, resume=cfg.resume, progress=cfg.progress)
    ...build the model from eng.checkpoint or from scratch...
    model = eng.prepare(model)                     # FSDP: sharded; else unchanged
    ...the optimizer over model.parameters()...
    eng.restore(opt, sched, grad_clip=clip)        # resume (RNG restored); DeepSpeed starts here
    with eng.progress_bar(total) as bar:
        for step in range(eng.start, total):
            ...forward...; eng.backward(loss)      # DeepSpeed: through its engine
            gnorm = eng.optimizer_step(params, opt, grad_clip, sched, loss=loss_value)
            eng.log(step + 1, metrics); eng.save(step + 1, model, tok, opt, sched)
            bar(step + 1, info)
    eng.finish(model, tok, "sft_summary.json", summary)
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from rewardlab.io import write_json
from rewardlab.training.checkpoint import (check_finite_state, check_finite_weights,
                                           clean_stale_temps, load_trainer_state, resume_point,
                                           save_checkpoint, save_pretrained_full,
                                           TrainingDivergedError)
from rewardlab.training.distributed import clip_grad_norm, DEEPSPEED_TRAINERS, Dist, is_sharded
from rewardlab.training.metrics import MetricsLogger
from rewardlab.training.hub import check_push, push_to_hub
from rewardlab.training.modelcard import ModelCard, numeric_metrics
from rewardlab.training.rundir import prepare_run_dir, write_run_config
from rewardlab.training.trackers import report_to_of


def epoch_batch(n: int, batch_size: int, k: int, seed: int, *, seed_stride: int = 100_003,
                partial_last: bool = False) -> list[int]:
    """Indices of batch ``k`` of a stream of epochs over ``n`` items: a pure function of the seed
    and position, so resuming needs no sampler state.

    Epoch e = k // per_epoch is the permutation drawn from the seed ``seed · seed_stride + e``;
    per_epoch = ⌈n / batch_size⌉ when ``partial_last`` (the epoch's last batch may be short),
    else max(1, ⌊n / batch_size⌋) (the permutation's tail is dropped)."""
    per_epoch = math.ceil(n / batch_size) if partial_last else max(1, n // batch_size)
    epoch, pos = divmod(k, per_epoch)
    g = torch.Generator().manual_seed(seed * seed_stride + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[pos * batch_size:(pos + 1) * batch_size].tolist()


def finite_step(params, optimizer, grad_clip: float, scheduler=None,
                loss: float | None = None, dist: Dist | None = None) -> tuple[float, bool]:
    """Sum the gradients over processes (``dist``; see :mod:`rewardlab.training.distributed`),
    clip their global norm to ``grad_clip`` (0 or ``inf``: measure only) and take the optimizer
    step, unless ``loss`` or the norm is nan/inf: then the step is skipped (the optimizer's
    weights and moments are untouched). The scheduler steps either way (the LR stays a function
    of the loop's step) and the gradients are cleared. Returns (norm before clipping, whether the
    optimizer stepped). With several processes ``loss`` must be the whole batch's, so that every
    rank takes the same decision."""
    params = list(params)
    if dist is not None:
        dist.sum_grads(params)
    gnorm = clip_grad_norm(params, grad_clip if grad_clip > 0 else float("inf"))
    ok = math.isfinite(gnorm) and (loss is None or math.isfinite(loss))
    if ok:
        optimizer.step()
    if scheduler is not None:
        with warnings.catch_warnings():   # a skipped first step: torch warns the order is odd
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return gnorm, ok



class Engine:
    """One training run's plumbing: its directory, exact resume, metrics log, progress bar and
    checkpoints. The trainer owns the model, the optimizer and the math; the engine owns where
    they are saved, when, and how a run continues after an interruption.

    ``checkpoint`` is the latest complete checkpoint in ``out`` when ``resume`` is set (else
    None); build the model from it, then call :meth:`restore` with the optimizer (and scheduler).

    In a multi-process run (:attr:`dist`) every rank resumes from the same checkpoint, and only
    the main process writes: the metrics log, checkpoints (which record the world size; a run
    resumes only with the same number of processes), the final model and the summary.

    ``config`` is the run's config dataclass. With it, ``out`` is checked before any work
    (:func:`~rewardlab.training.rundir.prepare_run_dir`: writable; a run already there resumed
    only when its config matches, else refused unless ``config.overwrite``) and the config is
    written to ``<out>/config.yaml`` by :meth:`restore`, once the model and data have loaded (a
    run refused for bad input leaves none). Its ``max_bad_steps`` (default 3) is how many
    optimizer steps in a row may be skipped for a non-finite loss or gradient norm
    (:meth:`optimizer_step`) before the run stops with :class:`TrainingDivergedError`. Its
    ``report_to`` (default ``tensorboard``) names the experiment trackers of the metrics log
    (:mod:`rewardlab.training.trackers`), and its ``push_to_hub`` a hub repo for the final
    model; both are checked first (a tracker package not installed, a malformed repo id, no
    token: an error before any work)."""

    def __init__(self, out: str | Path, name: str, *, resume: bool = True, progress: bool = True,
                 tensorboard: bool = True, config=None):
        self.report_to = report_to_of(config, tensorboard)   # checked before any work
        check_push(getattr(config, "push_to_hub", None))
        self.dist = Dist()
        if self.dist.backend == "deepspeed" and name not in DEEPSPEED_TRAINERS:
            raise ValueError(f"{name}: this command does not run under DeepSpeed yet (ported: sft, "
                             "train-rm, po); launch it with configs/accelerate/fsdp.yaml (sharded: "
                             "ZeRO-3 = full shard) or configs/accelerate/ddp.yaml. See "
                             "docs/distributed.md")
        self.config = config
        self.max_bad_steps = int(getattr(config, "max_bad_steps", 3))
        self.skipped_steps = 0      # optimizer steps skipped for a non-finite loss / norm, in all
        self.bad_in_a_row = 0
        self.out = Path(out)
        if config is not None and self.dist.is_main:   # the others wait for its checks and writes
            prepare_run_dir(self.out, config, name, resume=resume, write=False,
                            overwrite=bool(getattr(config, "overwrite", False)))
        if self.dist.is_main:
            clean_stale_temps(self.out)   # folders of a checkpoint write that was killed
        self.dist.barrier()
        self.out.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.show_progress = progress
        self.tensorboard = tensorboard
        # the newest complete checkpoint and its trainer state, loaded up front: a damaged one is
        # skipped (a warning) before any work, and none complete is refused (ConfigError)
        self.checkpoint: Path | None = None
        self._state: dict | None = None
        if resume:
            self.checkpoint, self._state = resume_point(self.out)
        self.start = 0
        self._card: ModelCard | None = None   # the final model's card, once it is saved
        self.logger: MetricsLogger | None = None
        self.t0 = time.time()
        self.model = None   # the model :meth:`prepare` sharded (FSDP), for its optimizer state
        self._opt_owner = None   # :meth:`optimizer_modules`: several modules share the optimizer
        self._ds_clip: float | None = None   # DeepSpeed's gradient_clipping (:meth:`restore`)

    def prepare(self, model):
        """The model as this launch trains it: sharded with FSDP2 under an FSDP launch (see
        :meth:`Dist.wrap`), else unchanged. Call it before building the optimizer; a trainer that
        never calls it is refused under FSDP by :meth:`restore`."""
        model = self.dist.wrap(model)
        self.model = model
        return model

    def optimizer_modules(self, **modules) -> None:
        """Name the modules whose parameters the optimizer holds when they are more than the
        prepared model (RL: the policy and a value model or head). Under FSDP the optimizer state
        is gathered and loaded by parameter name (:meth:`Dist.full_optimizer_state`), and those
        names must cover every parameter of the optimizer: here ``<name>.<parameter>``. None
        entries are left out; without FSDP nothing changes."""
        modules = {k: m for k, m in modules.items() if m is not None}
        self._opt_owner = torch.nn.ModuleDict(modules) if modules else None

    def _optimizer_owner(self, model):
        return self._opt_owner if self._opt_owner is not None else model

    def restore(self, optimizer=None, scheduler=None, grad_clip: float | None = None) -> dict:
        """Open the metrics log. On resume, load the optimizer, scheduler and every RNG state
        from :attr:`checkpoint`, set :attr:`start` to its step and drop log rows logged after it.
        Returns the checkpoint's ``extra`` dict ({} for a fresh run).

        Under DeepSpeed the engine is initialised here over the prepared model and ``optimizer``
        (:meth:`Dist.deepspeed_initialize`), clipping at ``grad_clip`` (the value the trainer
        passes to :meth:`optimizer_step`); a trainer that passes none is not ported and refused.
        From then on backward goes through :meth:`backward`."""
        if self.dist.backend == "deepspeed":
            if self.model is None or optimizer is None or grad_clip is None:
                raise ValueError(f"{self.name}: this trainer does not run under DeepSpeed yet; "
                                 "launch it with configs/accelerate/fsdp.yaml or ddp.yaml. See "
                                 "docs/distributed.md")
            self.dist.deepspeed_initialize(self.model, optimizer, grad_clip)
            self._ds_clip = grad_clip
        if self.dist.sharded and self.model is None:
            raise ValueError(f"{self.name}: this trainer does not run under FSDP yet (it never "
                             "shards its model); launch it with configs/accelerate/ddp.yaml or "
                             "torchrun. See docs/distributed.md")
        if self.dist.is_main:
            if self.config is not None:   # the model and data loaded: now the run is recorded
                write_run_config(self.out, self.config)
            self.logger = MetricsLogger(self.out, report_to=self.report_to,
                                        run_name=f"{self.name}-{self.out.resolve().name}",
                                        config=self.config)
        self.t0 = time.time()   # wall_s counts the loop, not the set-up
        if self.checkpoint is None:
            if self.logger is not None:   # rows of an earlier attempt that left no checkpoint
                self.logger.truncate_after(-1)
            return {}
        owner = self._optimizer_owner(self.model)
        sharded_opt = optimizer if optimizer is not None and is_sharded(owner) else None
        deepspeed = self.dist.ds_engine is not None
        state = load_trainer_state(self.checkpoint, None if (sharded_opt or deepspeed) else optimizer,
                                   scheduler, state=self._state)
        if sharded_opt is not None and state.get("optimizer") is not None:   # keyed by name
            self.dist.load_optimizer_state(owner, sharded_opt, state["optimizer"])
        if deepspeed:   # every rank's ZeRO partition, saved together by rank 0
            saved = state.get("optimizer")
            if not (isinstance(saved, dict) and "ranks" in saved):
                raise ValueError(f"{self.checkpoint} was not written under DeepSpeed (no ZeRO "
                                 "optimizer state); resume it with the launch that wrote it")
            self.dist.load_deepspeed_optimizer_state(saved)
        extra = state.get("extra") or {}
        saved_world = int(extra.get("world_size", 1))
        if saved_world != self.dist.world:
            raise ValueError(f"{self.checkpoint} was written by a run of {saved_world} process(es); "
                             f"resume it with {saved_world}, not {self.dist.world} (or start a new "
                             "run in another out directory)")
        self.start = state["step"]
        if self.logger is not None:
            self.logger.truncate_after(self.start)
        extra = dict(extra)
        self.skipped_steps = int(extra.pop("train/skipped_steps", 0))
        self.bad_in_a_row = int(extra.pop("train/bad_in_a_row", 0))
        return extra

    def optimizer_step(self, params, optimizer, grad_clip: float, scheduler=None,
                       loss: float | None = None) -> float:
        """:func:`finite_step`, counting skipped steps (:attr:`skipped_steps`, logged by the
        trainers as ``train/skipped_steps``); ``max_bad_steps`` skips in a row raise
        :class:`TrainingDivergedError`. Returns the gradient norm before clipping."""
        if self.dist.ds_engine is not None:
            gnorm, ok = self._deepspeed_step(grad_clip, scheduler)
        else:
            gnorm, ok = finite_step(params, optimizer, grad_clip, scheduler, loss, self.dist)
        if ok:
            self.bad_in_a_row = 0
            return gnorm
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.max_bad_steps:
            raise TrainingDivergedError(
                f"{self.name}: {self.bad_in_a_row} optimizer steps in a row had a non-finite loss or "
                f"gradient norm (last: loss {loss}, grad norm {gnorm}); stopping (max_bad_steps="
                f"{self.max_bad_steps}). The last checkpoint is kept; lower the learning rate, check "
                "the data or rewards, or raise max_bad_steps")
        return gnorm

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, or under DeepSpeed the engine's backward
        (:meth:`Dist.deepspeed_backward`: gradients accumulate until :meth:`optimizer_step`)."""
        if self.dist.ds_engine is not None:
            self.dist.deepspeed_backward(loss)
        else:
            loss.backward()

    def _deepspeed_step(self, grad_clip: float, scheduler=None) -> tuple[float, bool]:
        """:func:`finite_step` under DeepSpeed: its engine reduces, clips (at the ``grad_clip``
        given to :meth:`restore`), skips a step whose gradient norm is not finite and zeroes the
        gradients; the scheduler steps either way, as in :func:`finite_step`."""
        if grad_clip != self._ds_clip:
            raise ValueError(f"{self.name}: grad_clip {grad_clip} differs from the {self._ds_clip} "
                             "DeepSpeed was initialised with")
        gnorm, ok = self.dist.deepspeed_step()
        if scheduler is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
        return gnorm, ok

    @staticmethod
    def due(done: int, every: int, last: int) -> bool:
        """True every ``every`` steps (0: never) and at the ``last`` step."""
        return bool(every and done % every == 0) or done == last

    def log(self, step: int, metrics: dict) -> None:
        if self.logger is not None:
            self.logger.log(step, metrics)

    @contextmanager
    def progress_bar(self, total: int, label: str | None = None) -> Iterator[Callable[..., None]]:
        """A rich progress bar from :attr:`start` to ``total``; yields ``update(done, info="")``."""
        with Progress(TextColumn(f"[bold]{label or self.name}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                      TimeRemainingColumn(), disable=not (self.show_progress and self.dist.is_main)) as bar:
            task = bar.add_task(self.name, total=total, completed=self.start, info="")
            yield lambda done, info="": bar.update(task, completed=done, info=info)

    def save(self, step: int, model, tokenizer=None, optimizer=None, scheduler=None,
             extra: dict | None = None, models: dict | None = None) -> Path:
        """A resumable checkpoint of ``step`` (see :func:`save_checkpoint`; never of non-finite
        weights), recording the skipped-step counts for the resumed run; written by the main
        process, the others wait for it."""
        path = self.out / "checkpoints"
        # FSDP: gathered to full states (a collective of every rank), written by rank 0
        state_dict = self.dist.full_state_dict(model)
        if self.dist.ds_engine is not None:   # every rank's ZeRO partition, to rank 0
            optimizer_state = self.dist.deepspeed_optimizer_state()
        else:
            optimizer_state = self.dist.full_optimizer_state(self._optimizer_owner(model), optimizer)
        if self.dist.is_main:
            extra = {**(extra or {}), "train/skipped_steps": self.skipped_steps,
                     "train/bad_in_a_row": self.bad_in_a_row,
                     **({"world_size": self.dist.world} if self.dist.active else {})}
            path = save_checkpoint(self.out, step, model, tokenizer, optimizer, scheduler,
                                   extra=extra, models=models, state_dict=state_dict,
                                   optimizer_state=optimizer_state)
        self.dist.barrier()
        return path

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    def save_final(self, model, tokenizer=None, card: ModelCard | None = None) -> Path:
        """The trained model (and tokenizer) in Hugging Face format under ``<out>/final``
        (:class:`TrainingDivergedError` instead when a weight is not finite), with a model card
        ``README.md`` (``card``, or :func:`run_card` of this run); :meth:`summary` adds the
        run's closing metrics to it."""
        final = self.out / "final"
        state_dict = self.dist.full_state_dict(model)   # FSDP: gathered to rank 0, else None
        if state_dict is None:
            check_finite_weights(model, what="final model")
        if self.dist.is_main:
            if state_dict is not None:
                check_finite_state(state_dict, what="final model")
                save_pretrained_full(model, final, state_dict)
            else:
                model.save_pretrained(str(final))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(final))
            self._card = card or run_card(self.name, self.config, final)
            self._card.write(final)
        self.dist.barrier()
        return final

    def summary(self, filename: str, metrics: dict) -> dict:
        """Write the run's closing metrics to ``<out>/<filename>`` (atomically, main process)
        and, after :meth:`save_final`, into the final model's card (unless the trainer's card
        lists its own choice of metrics already); returns them."""
        if self.dist.is_main:
            write_json(self.out / filename, metrics)
            if self._card is not None and not self._card.metrics:
                self._card.metrics = numeric_metrics(metrics)
                self._card.write(self.out / "final")
            self.push_final()
        self.dist.barrier()
        return metrics

    def push_final(self) -> str | None:
        """Upload ``<out>/final`` to the hub repo named by the config's ``push_to_hub`` (when set
        and the final model exists; :func:`~rewardlab.training.hub.push_to_hub`). Returns the
        repository URL, or None when there was nothing to push."""
        repo = getattr(self.config, "push_to_hub", None)
        final = self.out / "final"
        if not repo or not (final / "config.json").exists():
            return None
        url = push_to_hub(final, str(repo))
        print(f"{self.name}: pushed {final} to {url}", file=sys.stderr)
        return url

    @property
    def wall_s(self) -> float:
        return time.time() - self.t0


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and info logs (rewardlab shows its own)."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - older versions
        pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_POLICY_USAGE = """\
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained(".")   # this directory, or its hub id
model = AutoModelForCausalLM.from_pretrained(".")
ids = tok("sam has 3 apples . buys 4 more . how many apples ?\\n", return_tensors="pt",
          add_special_tokens=False).input_ids
print(tok.decode(model.generate(ids, max_new_tokens=64)[0, ids.shape[1]:]))
"""

_ADAPTER_USAGE = """\
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(".")   # this directory, or its hub id
model = AutoPeftModelForCausalLM.from_pretrained(".")   # the base model + this LoRA adapter
"""


def _describe_data(data) -> list[str]:
    """A run's data as card lines (a ``DataConfig``, a list of files, or a string)."""
    if data is None:
        return []
    if isinstance(data, (list, tuple)):
        return [str(d) for d in data]
    if isinstance(data, str):
        return [data]
    out = [str(p) for p in (getattr(data, "train_path", None),) if p]
    name = getattr(data, "dataset", None)
    if name and not out:
        n = getattr(data, "n_train", None)
        out.append(f"{name}" + (f" ({n} generated problems)" if name == "testbed" and n else ""))
    return out


def run_card(name: str, config=None, final: Path | None = None) -> ModelCard:
    """A card for a trainer's final model from what its config says: the base model
    (``model.name_or_path``, or ``model`` itself when a string), the data and the command."""
    sub = getattr(config, "model", None)
    base = sub if isinstance(sub, str) and sub else (
        str(sub.name_or_path) if getattr(sub, "name_or_path", None) else None)
    if base == "testbed":
        size = getattr(getattr(config, "model", None), "size", None)
        base = f"testbed ({size + ', ' if size else ''}random init)"
    adapter = final is not None and (Path(final) / "adapter_config.json").exists()
    if name == "sft":
        title, what = "SFT model", "policy fine-tuned with supervised learning on worked solutions"
    elif getattr(config, "algo", None) is not None:   # the RL trainer names runs by algorithm
        title, what = "RL model", (f"policy trained with reinforcement learning ({name}) on "
                                   "rewardlab's reward designs")
    else:
        title, what = f"{name} model", f"model trained by rewardlab's {name} trainer"
    details = [f"Trainer: `{name}`; the full settings are in the run's config.yaml"]
    if adapter:
        details.append("This directory holds a LoRA adapter (peft) for the base model")
    return ModelCard(
        title=f"rewardlab {title}", summary=f"A {what}.", base=base,
        data=_describe_data(getattr(config, "data", None)), details=details,
        usage=_ADAPTER_USAGE if adapter else _POLICY_USAGE,
        tags=["rewardlab", name], pipeline_tag="text-generation")


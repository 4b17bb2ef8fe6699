"""One RL loop for PPO and GRPO; the two differ only in the advantage step (and the critic).

    step:  prompts → rollouts (n per prompt) → rewards (success, ORM, refined PRM at step ends,
           KL) → advantages (registry) → ``ppo_epochs`` × minibatch updates → diagnostics

Two estimators bring their own inputs, computed only when selected: ``prime`` (implicit PRM
rewards from π_φ, which is updated on the outcome labels at every step and checkpointed with the
run) and ``vine`` (Monte-Carlo values of every step boundary, rewardlab.rl.vine).

The math lives in pure functions (``rewardlab.rewards.refine/compose``,
``rewardlab.rl.advantages``, ``rewardlab.rl.losses``); this module only moves tensors between them.
"""

from __future__ import annotations


import functools
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import torch

from rewardlab.data.config import load_problems, make_prompt_fn
from rewardlab.data.problem import Problem
from rewardlab.data.steps import step_texts
from rewardlab.data.testbed import diagnostics
from rewardlab.eval.evaluate import evaluate_policy
from rewardlab.grading import grade
from rewardlab.io import write_jsonl
from rewardlab.models.batching import position_ids_from_mask
from rewardlab.models.loading import load_model_and_tokenizer, training_precision
from rewardlab.models.lora import (adapter_off, is_peft, load_policy, merged_sampler,
                                   reference_model, save_merged)
from rewardlab.models.sampling import (forward_logprobs, generate_rollouts, logprobs_with_grad,
                                       response_logprobs, RolloutBatch, use_fast_engine)
from rewardlab.models.value import HEAD_FILE, SharedValueHead, ValueModel
from rewardlab.reward_models.models import load_reward_model
from rewardlab.rewards.compose import add_kl_to_rewards, build_token_rewards, kl_penalty
from rewardlab.rewards.steps import batch_step_end_positions
from rewardlab.rl.advantages import AdvantageInputs, ADVANTAGES, gae, whiten
from rewardlab.rl.config import RLConfig
from rewardlab.rl.losses import (agg_units, aggregate_loss, implicit_process_rewards, implicit_prm_loss,
                                  kl_loss, masked_mean, ppo_policy_loss, value_loss)
from rewardlab.rl.vine import distinct_prefixes, mc_step_values
from rewardlab.training.checkpoint import save_pretrained_full, seed_everything
from rewardlab.training.distributed import clip_grad_norm, is_sharded
from rewardlab.training.engine import Engine, epoch_batch, quiet_transformers


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, n_steps: int, horizon: int) -> float:
    """Adaptive KL controller (Ziegler et al. 2019):
    e = clip(KL/target − 1, −0.2, 0.2);  coef ← coef · (1 + e · n / horizon)."""
    err = max(-0.2, min(0.2, observed_kl / target - 1.0))
    return coef * (1.0 + err * n_steps / horizon)


@dataclass
class ScoredBatch:
    """A rollout batch with everything the update needs. Shapes (B, T) unless noted."""

    rollout: RolloutBatch
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None   # None without a reference model (kl.coef = 0)
    values: torch.Tensor | None
    token_rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor | None
    metrics: dict


class _WithTokenizer:
    """Saves a model with the tokenizer beside it (a checkpoint's extra models are saved with
    ``save_pretrained`` only), so ``load_model_and_tokenizer`` reloads it. ``state``: the
    gathered full state dict of an FSDP-sharded model (rank 0), written in its place."""

    def __init__(self, model, tokenizer, state: dict | None = None):
        self.model, self.tokenizer, self.state = model, tokenizer, state

    def named_parameters(self):   # the finiteness check before a checkpoint is written
        return iter(self.state.items()) if self.state is not None else self.model.named_parameters()

    def save_pretrained(self, path: str) -> None:
        if self.state is not None:
            save_pretrained_full(self.model, path, self.state)
        else:
            self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


class _FullValueModel:
    """A sharded critic's checkpoint: :class:`ValueModel`'s layout (the backbone as a Hugging Face
    folder, the head beside it) written from its gathered full state dict (rank 0)."""

    def __init__(self, model: ValueModel, state: dict):
        self.model, self.state = model, state

    def named_parameters(self):   # the finiteness check before a checkpoint is written
        return iter(self.state.items())

    def save_pretrained(self, path: str) -> None:
        from safetensors.torch import save_file
        sub = lambda pre: {k[len(pre):]: v for k, v in self.state.items() if k.startswith(pre)}
        save_pretrained_full(self.model.backbone, path, sub("backbone."))
        save_file({k: v.contiguous() for k, v in sub("head.").items()}, str(Path(path) / HEAD_FILE))


def _in_precision(method):
    """Run a trainer phase in the policy's precision context (bfloat16 autocast in mixed
    precision, else nothing): sampling, scoring, the update and evaluation alike."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.prec.autocast():
            return method(self, *args, **kwargs)
    return run


class RLTrainer:
    """PPO / GRPO with dense step rewards. ``RLTrainer(cfg).train()`` runs and returns metrics."""

    def __init__(self, cfg: RLConfig):

        quiet_transformers()
        cfg.validate()
        self.cfg = cfg
        self.engine = Engine(cfg.out, cfg.algo, resume=cfg.resume, progress=cfg.progress, config=cfg)
        self.out = self.engine.out
        self.dist = self.engine.dist   # prompts are sharded over processes, each group on one rank
        self.dist.check_divides("rl: prompts_per_step", cfg.prompts_per_step)
        seed_everything(cfg.seed)
        self.train_set, self.test_set = load_problems(cfg.data, cfg.seed, None)
        if not self.train_set:
            raise ValueError("rl: no training problems (set data.train_path or data.dataset)")
        self.style = cfg.data.answer_style()
        # steps: lines (GSM8K, testbed) or blank-line paragraphs (MATH), the same split for the
        # PRM's inputs and for the token positions where its rewards go
        self.step_sep = "\n\n" if self.style == "math" else "\n"
        self.testbed = all(p.source == "testbed" for p in self.train_set[:50])
        pc = cfg.model
        self.ckpt = self.engine.checkpoint
        src = self.ckpt or pc.name_or_path
        # bfloat16 runs keep float32 weights and autocast their passes (ModelConfig.mixed_precision);
        # the reference model is stored like the policy, so the two agree exactly at step 0
        self.prec = training_precision(pc.dtype, pc.device, pc.mixed_precision)
        # LoRA (model.lora.r > 0): the base from name_or_path + a fresh or the checkpoint's adapter
        self.policy, self.tok = load_policy(pc, self.ckpt, self.prec.storage)
        # FSDP launch: the policy sharded (before the optimizer); its rollouts, scoring passes and
        # evaluation run on gathered weights (Dist.gathered), its update through FSDP
        self.policy = self.engine.prepare(self.policy)
        if self.dist.sharded and is_peft(self.policy):
            self._check_lora_sampling()
        self.prompt_fn = make_prompt_fn(cfg.data, self.tok)  # rollouts and evaluation alike
        self.ref = None  # kl.coef = 0 (and not adaptive): no KL term, so no reference model or pass
        if cfg.kl.coef != 0 or cfg.kl.adaptive:   # a LoRA policy is its own reference (adapter_off)
            self.ref = self.dist.wrap(reference_model(self.policy, pc, self.prec.storage))
        self.fast_ref = self.ref is not None and use_fast_engine(self.ref, cfg.engine, sampling=False)
        self.fast_policy = use_fast_engine(self.policy, cfg.engine, sampling=False)
        self.device = next(self.policy.parameters()).device
        self.value = self._build_value(src)
        if isinstance(self.value, ValueModel):   # FSDP: a separate critic is sharded like the policy
            self.value = self.dist.wrap(self.value)
        # a separate critic's teacher-forced passes go through the fast path like the policy's
        self.fast_value = (isinstance(self.value, ValueModel)
                           and use_fast_engine(self.value.backbone, cfg.engine, sampling=False))
        self._critic_values: torch.Tensor | None = None   # single_pass_critic: scoring → update
        self.prm = self._load_rm(cfg.reward.prm.path, cfg.reward.prm.spec())
        self.orm = self._load_rm(cfg.reward.orm.path)
        self._rollout_seed: int | None = None   # the seed of the latest rollout (vine's MC stream)
        self.prime_rm = self.prime_ref = self.prime_opt = None
        if cfg.advantage_name() == "prime":
            self._build_prime()
        params = [{"params": [p for p in self.policy.parameters() if p.requires_grad], "lr": cfg.lr}]
        if self.value is not None:
            params.append({"params": list(self.value.parameters()), "lr": cfg.value.lr})
        # foreach: the same update as the per-tensor loop (bit for bit), in fewer ops (3.9 → 3.0 ms
        # per step for the testbed policy on the CPU, where the loop is torch's default)
        self.opt = torch.optim.AdamW(params, betas=(0.9, 0.95), weight_decay=0.0, foreach=True)
        if self.value is not None:   # FSDP: the optimizer state is saved by parameter name
            self.engine.optimizer_modules(policy=self.policy, value=self.value)
        self.kl_coef = cfg.kl.coef
        # rows per no-grad log-prob pass (old and reference log-probs): as many as the update's
        # passes with gradient, which need more memory (micro_batch_size, else the minibatch)
        self.pass_rows = cfg.micro_batch_size or cfg.minibatch_size
        extra = self.engine.restore(self.opt)
        self.start_step = self.engine.start
        self.kl_coef = extra.get("kl_coef", self.kl_coef)
        if self.prime_opt is not None and extra.get("prime_opt") is not None:
            if is_sharded(self.prime_rm):   # saved by parameter name: sharded again
                self.dist.load_optimizer_state(self.prime_rm, self.prime_opt, extra["prime_opt"])
            else:
                self.prime_opt.load_state_dict(extra["prime_opt"])

    def _check_lora_sampling(self) -> None:
        """FSDP with a LoRA policy: sampling and evaluation must run on the merged view
        (:func:`rewardlab.models.lora.merged_sampler`, the fast path on gathered weights), since
        ``generate`` on the sharded PeftModel enters FSDP's blocks without its root (FSDP raises
        "requires running forward through the root module first", or a rank evaluating alone
        waits forever). Refused before any work otherwise (every rank gathers once here)."""
        if self.cfg.sampling.engine == "hf":
            raise ValueError("rl: a LoRA policy under FSDP samples on its merged weights with the "
                             "fast engine; sampling.engine=hf is not supported there (use auto), "
                             "or launch with configs/accelerate/ddp.yaml. See docs/distributed.md")
        with self.dist.gathered(self.policy), merged_sampler(self.policy) as view:
            merged = view is not self.policy
        if not merged:
            raise ValueError("rl: this LoRA policy cannot be sampled on merged weights by the fast "
                             "engine (a LoRA layer that is not a Linear, or an architecture the fast "
                             "path does not run), which FSDP needs; launch it with "
                             "configs/accelerate/ddp.yaml. See docs/distributed.md")

    def on_policy_single_update(self, n_prompts: int) -> bool:
        """One epoch, one minibatch and no KL in the reward: π_old = π at the update, so the
        old log-probs are the update's own (detached) and the extra forward pass is skipped."""
        cfg = self.cfg
        return (cfg.ppo_epochs == 1 and cfg.minibatch_size >= n_prompts * cfg.sampling.n
                and not cfg.kl.in_reward)

    def single_pass_critic(self, n_rows: int) -> bool:
        """A separate critic, one epoch, one minibatch of all ``n_rows`` responses in one pass, one
        process: the critic is the same at scoring and at the update, so the values GAE uses
        and the value loss's come from one pass with gradient (the update's pass is skipped)."""
        cfg = self.cfg
        return (self.value is not None and cfg.value.kind == "separate" and cfg.ppo_epochs == 1
                and cfg.minibatch_size >= n_rows and (cfg.micro_batch_size or n_rows) >= n_rows
                and not self.dist.active)

    # ------------------------------------------------------------------ set-up helpers
    def _build_value(self, src):

        if not self.cfg.uses_critic:
            return None
        if self.cfg.value.kind == "shared":
            head = SharedValueHead(self.policy.config.hidden_size).to(self.device)
            if self.ckpt is not None and (Path(self.ckpt) / "value").exists():
                head.load(Path(self.ckpt) / "value")
            return head
        init = Path(self.ckpt) / "value" if self.ckpt is not None else (
            self.cfg.value.init or self.cfg.model.name_or_path)
        return ValueModel.from_pretrained(init, trust_remote_code=self.cfg.model.trust_remote_code
                                          ).to(self.device)

    def _build_prime(self) -> None:
        """PRIME: the implicit PRM π_φ (the run's checkpoint, else the SFT policy), its optimizer
        and π_ref (the policy's reference model, loaded here when the KL term has none)."""
        cfg, pc = self.cfg, self.cfg.model
        init = Path(self.ckpt) / "prime_rm" if self.ckpt is not None else pc.name_or_path
        self.prime_rm, _ = load_model_and_tokenizer(init, self.prec.storage, pc.device,
                                                    pc.trust_remote_code)
        self.prime_rm.train()
        # FSDP: π_φ sharded like the critic (its passes with gradient through FSDP), its
        # optimizer state saved by name; π_ref sharded too, its passes on gathered weights
        self.prime_rm = self.dist.wrap(self.prime_rm)
        # π_ref: the policy's reference model when it is a plain copy; a LoRA policy's reference
        # (the PeftModel, adapter off) would take another code path than π_φ (a plain model), so
        # r = β·log π_φ/π_ref would be rounding noise instead of 0 at the start, whitened into
        # advantages: PRIME then loads a plain copy of the base
        self.prime_ref = self.ref if not is_peft(self.ref) else None
        if self.prime_ref is None:
            self.prime_ref, _ = load_model_and_tokenizer(pc.name_or_path, self.prec.storage,
                                                         pc.device, pc.trust_remote_code)
            self.prime_ref = self.dist.wrap(self.prime_ref.eval().requires_grad_(False))
        self.fast_prime = use_fast_engine(self.prime_rm, cfg.engine, sampling=False)
        self.fast_prime_ref = use_fast_engine(self.prime_ref, cfg.engine, sampling=False)
        self.prime_opt = torch.optim.AdamW([p for p in self.prime_rm.parameters() if p.requires_grad],
                                           lr=cfg.prime.lr, betas=(0.9, 0.95), weight_decay=0.0,
                                           foreach=True)

    def prime_step(self, batch: RolloutBatch, labels: torch.Tensor,
                   ref_logp: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """PRIME's implicit PRM at one RL step (Cui et al., arXiv 2502.01456, Algorithm 1): the
        token rewards r_t = β·log π_φ/π_ref of the batch under the current π_φ (B, T), then one
        optimizer step of π_φ on :func:`implicit_prm_loss` against the outcome ``labels`` (B,).
        ``ref_logp``: log π_ref at temperature 1 when already computed, else None. One pass with
        gradient per ``pass_rows`` rows gives both the rewards and the loss.

        Several processes: each rank's loss is weighted by its rows' share of the WHOLE batch and
        the gradients summed over ranks (FSDP's reduce-scatter, or :meth:`Dist.sum_grads`), so
        π_φ takes the one-process step on every rank; every rank holds as many rows, so as many
        passes (under FSDP each is a collective). The metrics are this rank's (the caller takes
        their mean over ranks)."""
        cfg = self.cfg
        dist = self.dist
        mask = batch.response_mask.float()
        B, T = batch.response_ids.shape
        B_all = B * dist.world
        ids_all, att_all = batch.input_ids, batch.attention_mask
        if ref_logp is None or dist.sharded:
            # FSDP: π_φ's passes go through transformers on the shards, so π_ref's go through
            # transformers too (on gathered weights, the same rows per pass): r = β·log π_φ/π_ref
            # is then exactly 0 where π_φ = π_ref, as in one process (where both take the fast
            # path), and no rounding noise is whitened into advantages
            with dist.gathered(self.prime_ref) as ref:
                ref_logp = forward_logprobs(ref, ids_all, att_all, T, temperature=1.0,
                                            micro_batch=self.pass_rows,
                                            fast=self.fast_prime_ref and not dist.sharded) * mask
        self.prime_opt.zero_grad(set_to_none=True)
        rewards, metrics = [], {}
        with torch.enable_grad():
            for s in range(0, B, self.pass_rows):
                rows = slice(s, s + self.pass_rows)
                logp = logprobs_with_grad(self.prime_rm, ids_all[rows], att_all[rows], T, 1.0,
                                          fast=self.fast_prime)[0]
                loss, m = implicit_prm_loss(logp, ref_logp[rows], mask[rows], labels[rows],
                                            cfg.prime.beta)
                n_rows = min(s + self.pass_rows, B) - s
                share = n_rows / B
                (loss * (n_rows / B_all)).backward()   # its share of the whole batch
                rewards.append(implicit_process_rewards(logp.detach(), ref_logp[rows], mask[rows],
                                                        cfg.prime.beta))
                for k, v in m.items():
                    metrics[k] = metrics.get(k, 0.0) + share * v
        params = [p for grp in self.prime_opt.param_groups for p in grp["params"]]
        dist.sum_grads(params)   # DDP: Σ over ranks (FSDP reduced its DTensor gradients already)
        metrics["prime/rm_grad_norm"] = clip_grad_norm(params, cfg.grad_clip)
        self.prime_opt.step()
        r = torch.cat(rewards)
        metrics["prime/implicit_return"] = float(r.sum(1).mean())
        return r, metrics

    def _load_rm(self, path, spec=None):
        if not path:
            return None
        return load_reward_model(path, device=str(self.device), spec=spec,
                                 trust_remote_code=self.cfg.model.trust_remote_code)

    # ------------------------------------------------------------------ one step
    def values_of(self, input_ids, attention_mask, n_resp: int, hidden=None,
                  fast: bool | None = None) -> torch.Tensor:
        """V_t for each response token t: read at the position that predicts token t, (B, T).
        ``fast``: the separate critic's pass through the fast path (default: as decided at
        set-up)."""
        if self.cfg.value.kind == "shared":
            return self.value(hidden)[:, -n_resp - 1:-1]
        return self.value.response_values(input_ids, attention_mask, n_resp,
                                          fast=self.fast_value if fast is None else fast)

    @_in_precision
    def rollout(self, step: int) -> tuple[list[Problem], RolloutBatch]:
        """The prompts of RL step ``step`` (a function of seed and step) and their samples."""
        cfg = self.cfg
        idx = epoch_batch(len(self.train_set), cfg.prompts_per_step, step, cfg.seed, seed_stride=7_919)
        on_policy = self.on_policy_single_update(len(idx))
        lo, hi = self.dist.bounds(len(idx))
        problems = [self.train_set[i] for i in idx[lo:hi]]
        self._rollout_seed = cfg.seed * 1_000_003 + step
        # FSDP: each rank samples on the gathered weights, with no collective, so ranks may stop
        # at different lengths (and the fast sampler draws the one-process run's tokens)
        # LoRA: sampled on the merged view (the fast sampler where it can run the base), the old
        # log-probs then from the PeftModel itself, as its update computes them
        sampler_lp = cfg.old_logprobs == "sampler"
        with self.dist.gathered(self.policy):
            with merged_sampler(self.policy, cfg.sampling.engine) as sampler:
                view = sampler is not self.policy
                batch = generate_rollouts(sampler, self.tok, [self.prompt_fn(p) for p in problems],
                                          cfg.sampling, seed=self._rollout_seed,
                                          compute_logprobs=not on_policy and (sampler_lp or not view),
                                          logprob_rows=self.pass_rows, skip_rows=lo * cfg.sampling.n,
                                          sampler_logprobs=sampler_lp)
            if view and not on_policy and batch.logprobs is None:
                batch.logprobs = forward_logprobs(
                    self.policy, batch.input_ids, batch.attention_mask, batch.response_ids.shape[1],
                    temperature=cfg.sampling.temperature or 1.0, micro_batch=self.pass_rows,
                    fast=False) * batch.response_mask
        return problems, batch

    @_in_precision
    @torch.no_grad()
    def score(self, problems: list[Problem], batch: RolloutBatch) -> ScoredBatch:
        """Rewards, reference log-probs, values and advantages for a rollout batch."""

        cfg = self.cfg
        mask = batch.response_mask.float()
        B, T = batch.response_ids.shape
        probs = [problems[i] for i in batch.prompt_index]
        correct = torch.tensor([float(grade(t, p.answer, self.style)) for t, p in zip(batch.texts, probs)])
        success = None
        if cfg.reward.success:
            success = torch.where(correct.bool(), torch.tensor(cfg.reward.correct_reward),
                                  torch.tensor(cfg.reward.incorrect_reward))
        steps = [step_texts(t, self.step_sep) for t in batch.texts]
        questions = [p.question for p in probs]
        step_scores: list[list[float]] = [[] for _ in range(B)]
        if self.prm is not None:
            step_scores = [r.step_scores for r in self.prm.score(questions, steps)]
        orm = None
        if self.orm is not None:
            orm = torch.tensor([r.score for r in self.orm.score(questions, steps)], dtype=torch.float)
        step_ends: list[list[int]] = [[] for _ in range(B)]
        if self.prm is not None:  # the tokens where each step ends (only process rewards use them)
            step_ends = batch_step_end_positions(batch.response_ids, batch.response_mask, self.tok,
                                                 separator=self.step_sep)
            for i in range(B):  # the PRM and the step mapper must agree on K
                k = min(len(step_ends[i]), len(step_scores[i]))
                step_ends[i], step_scores[i] = step_ends[i][:k], step_scores[i][:k]
        group_ids = torch.tensor(batch.prompt_index)
        name = cfg.advantage_name()
        rewards, info = build_token_rewards(
            step_scores, step_ends, mask,
            success=success, orm=orm, alpha=cfg.reward.prm.alpha, beta=cfg.reward.orm.beta,
            refine=cfg.reward.prm.refine, eta=cfg.reward.prm.eta,
            exclude_last=cfg.reward.prm.exclude_last, group_ids=group_ids,
            refine_options=cfg.reward.prm.refine_options())
        old_logp = batch.logprobs  # None when the update computes them (on_policy_single_update)
        ref_logp = kl = None
        if self.ref is not None:
            with adapter_off(self.ref), self.dist.gathered(self.ref) as ref:
                fast = self.fast_ref if not self.dist.sharded else use_fast_engine(
                    ref, cfg.engine, sampling=False)   # FSDP: decided on the gathered weights
                ref_logp = forward_logprobs(ref, batch.input_ids, batch.attention_mask, T,
                                            temperature=cfg.sampling.temperature or 1.0,
                                            micro_batch=self.pass_rows, fast=fast) * mask
            if old_logp is not None:
                kl = self._kl(old_logp, ref_logp) * mask
        if cfg.kl.in_reward and kl is not None:
            rewards = add_kl_to_rewards(rewards, kl, self.kl_coef, mask)
        values = None
        self._critic_values = None
        if self.single_pass_critic(B):   # kept with its graph for the update's value loss
            with torch.enable_grad():
                self._critic_values = self.values_of(batch.input_ids, batch.attention_mask, T)
            values = self._critic_values.detach() * mask
        elif self.value is not None:
            parts = []
            ids_all, att_all = batch.input_ids, batch.attention_mask
            rows = cfg.micro_batch_size or B
            shared = cfg.value.kind == "shared"
            # FSDP: on the gathered weights of the network the values come from
            with self.dist.gathered(self.policy if shared else self.value):
                fast = self.fast_value if (shared or not self.dist.sharded) else use_fast_engine(
                    self.value.backbone, cfg.engine, sampling=False)
                for s in range(0, B, rows):
                    ids, att = ids_all[s:s + rows], att_all[s:s + rows]
                    hidden = None
                    if shared:
                        out = self.policy(input_ids=ids, attention_mask=att,
                                          position_ids=position_ids_from_mask(att),
                                          output_hidden_states=True)
                        hidden = out.hidden_states[-1]
                    parts.append(self.values_of(ids, att, T, hidden, fast=fast))
            values = torch.cat(parts) * mask
        seq_reward = (rewards * mask).sum(1)
        returns = None
        extra_m: dict = {}
        implicit = step_values = None
        if name == "prime":   # implicit PRM rewards, then π_φ's update on the outcome labels
            t1 = (cfg.sampling.temperature or 1.0) == 1.0
            implicit, extra_m = self.prime_step(batch, correct,
                                                ref_logp if t1 and self.ref is not None
                                                and self.prime_ref is self.ref else None)
        vine_ends = None
        if name == "vine":   # Monte-Carlo values of every step boundary (no steps: one step)
            ends = batch_step_end_positions(batch.response_ids, batch.response_mask, self.tok,
                                            separator=self.step_sep)
            last = mask.sum(1).long().sub(1).clamp(min=0).tolist()
            n_k = [min(len(st), len(e)) for st, e in zip(steps, ends)]        # agree on K
            vsteps = [list(st[:k]) for st, k in zip(steps, n_k)]
            vine_ends = [e[:k] if k else [last[i]] for i, (e, k) in enumerate(zip(ends, n_k))]
            prompts = [self.prompt_fn(p) for p in probs]
            golds = [p.answer for p in probs]
            # its own random stream, a function of the rollout's seed (so resume is exact)
            mc_seed = None if self._rollout_seed is None else 2 ** 40 + self._rollout_seed
            # several processes: the prefixes of the whole batch, each rank sampling a slice of
            # them (FSDP: on the gathered weights, no collective inside), the values gathered
            with self.dist.gathered(self.policy), merged_sampler(self.policy,
                                                                  cfg.sampling.engine) as sampler:
                step_values = mc_step_values(
                    sampler, self.tok, prompts, vsteps, golds, success.tolist(), cfg.vine.k,
                    cfg.sampling, seed=mc_seed, style=self.style, separator=self.step_sep,
                    correct_reward=cfg.reward.correct_reward,
                    incorrect_reward=cfg.reward.incorrect_reward, dist=self.dist)
            extra_m["vine/value_start"] = sum(v[0] for v in step_values) / B
            # k × distinct prefixes of this rank's rows; over ranks the mean below makes it the
            # per-rank mean
            extra_m["vine/rollouts"] = float(cfg.vine.k * len(
                distinct_prefixes(prompts, vsteps, golds, self.step_sep)[0]))
        if name == "gae":
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, mask, dist=self.dist) * mask
        else:
            # process supervision: α·PRM per step; the success reward joins the final step
            proc = [[cfg.reward.prm.alpha * s for s in sc] for sc in step_scores]
            if success is not None:
                for i, sc in enumerate(proc):
                    if sc:
                        sc[-1] += float(success[i])
            advantages = ADVANTAGES.get(name)(AdvantageInputs(
                token_rewards=rewards, values=values, mask=mask, scores=seq_reward,
                step_rewards=proc, step_ends=step_ends if vine_ends is None else vine_ends,
                group_ids=group_ids,
                gamma=cfg.gamma, lam=cfg.lam, norm_eps=cfg.norm_eps,
                implicit_rewards=implicit, step_values=step_values, whiten=cfg.prime.whiten,
                dist=self.dist))
        # diagnostics
        m = {"reward/success": correct.mean().item(),
             "reward/total": seq_reward.mean().item(),
             "response/length": mask.sum(1).mean().item(),
             "response/finished": batch.finished.float().mean().item(),
             "response/steps": sum(len(s) for s in steps) / B,
             **({"kl/ref": (kl.sum(1)).mean().item()} if kl is not None else {}),
             "kl/coef": self.kl_coef, **extra_m}
        if self.prm is not None:
            flat = [s for sc in step_scores for s in sc]
            m["reward/prm_step_mean"] = sum(flat) / max(len(flat), 1)
            m["reward/prm_return"] = float(info["reward/prm_return"].mean())
        if orm is not None:
            m["reward/orm"] = orm.mean().item()
        if self.testbed:
            ds = [diagnostics(p.question, t, p.answer) for p, t in zip(probs, batch.texts)]
            m["hack/repeated_frac"] = sum(d["repeated_frac"] for d in ds) / B
            m["hack/unnecessary_frac"] = sum(d["unnecessary_frac"] for d in ds) / B
            m["hack/step_acc"] = sum(d["step_acc"] for d in ds) / B
        if self.dist.active:   # means over the whole batch (every rank holds as many rows)
            m = {k: v / self.dist.world for k, v in self.dist.sum_dict(m).items()}
            if self.prm is not None:   # a mean over steps, whose count differs between ranks
                flat = [s for sc in step_scores for s in sc]
                n = self.dist.sum(float(len(flat)))
                m["reward/prm_step_mean"] = self.dist.sum(float(sum(flat))) / max(n, 1.0)
        return ScoredBatch(batch, old_logp, ref_logp, values, rewards, advantages * mask, returns, m)

    def _kl(self, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        """Per-token KL estimate ``kl.estimator``, clamped to ±``kl.clamp`` when set (B, T)."""
        kl = kl_penalty(logp, ref_logp, self.cfg.kl.estimator)
        return kl if self.cfg.kl.clamp is None else kl.clamp(-self.cfg.kl.clamp, self.cfg.kl.clamp)

    # metrics aggregated like the policy loss (``loss_agg``); every other actor/critic metric is a
    # token mean
    _POLICY_AGG_METRICS = ("actor/pg_loss", "actor/kl_loss")

    @_in_precision
    def update(self, sb: ScoredBatch) -> dict:
        """``ppo_epochs`` passes of minibatch updates with the clipped losses; each minibatch in
        forward/backward passes of ``micro_batch_size`` rows whose gradients add up to the
        minibatch's: the policy terms (aggregated by ``loss_agg``) of a pass are weighted by its
        share of the minibatch's aggregation units (tokens for token-mean, responses for the
        sequence means, see :func:`rewardlab.rl.losses.agg_units`), the value loss (a token
        mean) by its share of the tokens."""

        cfg = self.cfg
        b = sb.rollout
        dist = self.dist
        B_local = len(b)
        B, lo = B_local * dist.world, B_local * dist.rank   # the whole batch; this rank's first row
        mask = b.response_mask.float()
        loss_agg = cfg.loss_agg_name()
        self.policy.train()
        agg: dict[str, list[float]] = {}
        g = torch.Generator().manual_seed(cfg.seed * 31 + int(sb.metrics.get("_step", 0)))
        params = [p for grp in self.opt.param_groups for p in grp["params"]]
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=g)
            for s in range(0, B, cfg.minibatch_size):
                mb = perm[s:s + cfg.minibatch_size]
                n_mb = len(mb)
                if dist.active:   # this rank's rows of the minibatch, as local indices
                    mb = mb[(mb >= lo) & (mb < lo + B_local)] - lo
                micro = cfg.micro_batch_size or max(len(mb), 1)
                parts = [mb[i:i + micro] for i in range(0, len(mb), micro)]
                n_tok = dist.sum(mask[mb].sum()).clamp(min=1)
                n_pol = dist.sum(agg_units(mask[mb], loss_agg)).clamp(min=1)
                n_real = len(parts)
                # no rows here: one pass at weight 0 keeps the ranks in step; under FSDP (every
                # forward a collective) every rank runs as many passes as the busiest one
                n_pass = max(n_real, 1) if not dist.sharded else dist.max(max(n_real, 1))
                parts += [torch.zeros(1, dtype=torch.long)] * (n_pass - n_real)
                self.opt.zero_grad(set_to_none=True)
                metrics: dict[str, float] = {}
                mb_loss = 0.0  # only its finiteness is used: a nan/inf update is skipped
                for j, rows in enumerate(parts):
                    pad = j >= n_real   # a placeholder pass (row 0 at weight 0)
                    pol, val, pm, row_m = self._micro_loss(sb, rows)
                    w_tok = w_pol = 1.0
                    if pad:
                        w_tok = w_pol = 0.0
                    elif len(parts) > 1 or dist.active:
                        w_tok = float(mask[rows].sum() / n_tok)                     # token share
                        w_pol = float(agg_units(mask[rows], loss_agg) / n_pol)    # unit share
                    loss = pol if val is None else pol + val
                    if not pad:
                        mb_loss += float(loss.detach())
                    if w_pol == w_tok:
                        (loss if w_tok == 1.0 else loss * w_tok).backward()
                    else:
                        (pol * w_pol + (0.0 if val is None else val * w_tok)).backward()
                    for k, v in pm.items():
                        w = w_pol if k in self._POLICY_AGG_METRICS else w_tok
                        metrics[k] = metrics.get(k, 0.0) + w * v
                    for k, v in row_m.items():                # per-response means: row share
                        metrics[k] = metrics.get(k, 0.0) + v * (0.0 if pad else len(rows) / n_mb)
                metrics = dist.sum_dict(metrics)
                if dist.active:   # every rank decides on the whole minibatch's loss
                    mb_loss = dist.sum(mb_loss)
                metrics["actor/grad_norm"] = self.engine.optimizer_step(params, self.opt, cfg.grad_clip,
                                                                        loss=mb_loss)
                for k, v in metrics.items():
                    agg.setdefault(k, []).append(float(v))
        self._critic_values = None   # its graph is spent
        return {**{k: sum(v) / len(v) for k, v in agg.items()},
                "train/skipped_steps": self.engine.skipped_steps}

    def _micro_loss(self, sb: ScoredBatch, rows: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor | None, dict, dict]:
        """The losses of responses ``rows``: the policy terms (clipped surrogate, entropy bonus,
        KL loss; aggregated over the rows by ``loss_agg``), the weighted value loss (token mean;
        None without a critic), their metrics, and the per-response metrics (``kl/ref`` when the
        update supplies the old log-probs)."""

        cfg = self.cfg
        b = sb.rollout
        T = b.response_ids.shape[1]
        loss_agg, norm_len = cfg.loss_agg_name(), cfg.sampling.max_new_tokens
        input_ids, att = b.input_ids[rows], b.attention_mask[rows]
        mmask = b.response_mask[rows].float()
        ent_grad = cfg.entropy_coef != 0  # else the entropy is only logged: no backward through it
        hidden = None
        if self.value is not None and cfg.value.kind == "shared":
            out = self.policy(input_ids=input_ids, attention_mask=att,
                              position_ids=position_ids_from_mask(att), output_hidden_states=True)
            logp, ent = response_logprobs(out.logits, input_ids, T, cfg.sampling.temperature or 1.0,
                                          return_entropy=True, entropy_grad=ent_grad)
            hidden = out.hidden_states[-1]
        else:
            logp, ent = logprobs_with_grad(self.policy, input_ids, att, T, cfg.sampling.temperature or 1.0,
                                           return_entropy=True, fast=self.fast_policy, entropy_grad=ent_grad)
        row_metrics = {}
        old_logp = sb.old_logp[rows] if sb.old_logp is not None else logp.detach()
        if sb.old_logp is None and sb.ref_logp is not None:
            kl_ref = self._kl(old_logp, sb.ref_logp[rows]) * mmask
            row_metrics["kl/ref"] = kl_ref.sum(1).mean().item()
        pl, pm = ppo_policy_loss(logp, old_logp, sb.advantages[rows], mmask, clip_eps=cfg.clip_eps,
                                 clip_eps_high=cfg.clip_eps_high, ratio=cfg.ratio, agg=loss_agg,
                                 norm_len=norm_len)
        entropy = masked_mean(ent, mmask)                    # logged as a token mean
        if ent_grad:
            bonus = entropy if loss_agg == "token-mean" else aggregate_loss(ent, mmask, loss_agg, norm_len)
            loss = pl - cfg.entropy_coef * bonus
        else:
            loss = pl
        metrics = dict(pm)
        metrics["actor/entropy"] = entropy.item()
        metrics["actor/pg_loss"] = pl.item()
        if not cfg.kl.in_reward and sb.ref_logp is not None:
            kll, km = kl_loss(logp, sb.ref_logp[rows], mmask, kind=cfg.kl.estimator, agg=loss_agg,
                              norm_len=norm_len, clamp=cfg.kl.clamp)
            loss = loss + self.kl_coef * kll
            metrics.update(km)
        vloss = None
        if self.value is not None:
            v = (self._critic_values[rows] if self._critic_values is not None
                 else self.values_of(input_ids, att, T, hidden))
            vl, vm = value_loss(v, sb.values[rows], sb.returns[rows], mmask, clip_eps=cfg.value.clip_eps)
            vloss = cfg.value.coef * vl
            metrics.update(vm)
        return loss, vloss, metrics, row_metrics

    # ------------------------------------------------------------------ evaluation / loop
    @_in_precision
    def evaluate(self, k: int = 0) -> dict:
        """Held-out accuracy (greedy, plus maj@k / pass@k with ``k``), on the main process only."""
        if not self.test_set or not (self.dist.is_main or self.dist.sharded):
            return {}
        # FSDP: every rank gathers, rank 0 evaluates (LoRA: on the merged view, as it samples)
        with self.dist.gathered(self.policy), merged_sampler(self.policy,
                                                              self.cfg.sampling.engine) as model:
            if not self.dist.is_main:
                return {}
            summary, rows = evaluate_policy(model, self.tok, self.test_set, style=self.style,
                                            greedy=True, k=k,
                                            temperature=self.cfg.sampling.temperature or 1.0,
                                            max_new_tokens=self.cfg.sampling.max_new_tokens,
                                            seed=self.cfg.seed, prompt_fn=self.prompt_fn)
        self.policy.train()
        self._last_eval_rows = rows
        return {f"eval/{key}": v for key, v in summary.items() if isinstance(v, (int, float))}

    def save(self, step: int) -> None:
        models = {"value": self.value} if self.value is not None else None
        state = self.dist.full_state_dict(self.value)   # FSDP critic: gathered (every rank joins)
        if state is not None:
            models = {"value": _FullValueModel(self.value, state)}
        extra = {"kl_coef": self.kl_coef}
        if self.prime_rm is not None:   # PRIME: π_φ (loadable as a model) and its optimizer
            # FSDP: both gathered (collectives every rank joins), the optimizer state by name
            prime_state = self.dist.full_state_dict(self.prime_rm)
            models = {**(models or {}), "prime_rm": _WithTokenizer(self.prime_rm, self.tok,
                                                                   prime_state)}
            opt_state = self.dist.full_optimizer_state(self.prime_rm, self.prime_opt)
            extra["prime_opt"] = opt_state if opt_state is not None else self.prime_opt.state_dict()
        self.engine.save(step, self.policy, self.tok, self.opt, extra=extra, models=models)

    def train(self, on_step: Callable[[int, dict], None] | None = None) -> dict:
        """Run (or resume) the loop to ``cfg.steps``; ``on_step(step, metrics)`` is called after
        every optimizer step (e.g. to change the thread count when parallel jobs finish)."""


        cfg, eng = self.cfg, self.engine
        last: dict = {}
        with eng.progress_bar(cfg.steps) as bar:
            if self.start_step == 0 and cfg.eval_every and cfg.eval_at_start:
                eng.log(0, self.evaluate())
            for step in range(self.start_step, cfg.steps):
                problems, batch = self.rollout(step)
                sb = self.score(problems, batch)
                sb.metrics["_step"] = step
                um = self.update(sb)
                sb.metrics.pop("_step")
                done = step + 1
                metrics = {**sb.metrics, **um}
                if cfg.kl.adaptive:
                    self.kl_coef = adaptive_kl_coef(self.kl_coef, metrics.get("kl/ref", 0.0), cfg.kl.target,
                                                    len(batch), cfg.kl.horizon)
                if (cfg.eval_every and done % cfg.eval_every == 0) and done != cfg.steps:
                    metrics.update(self.evaluate())
                if done == cfg.steps:
                    metrics.update(self.evaluate(k=cfg.eval_k))
                eng.log(done, metrics)
                last = metrics
                if on_step is not None:
                    on_step(done, metrics)
                if eng.due(done, cfg.save_every, cfg.steps):
                    self.save(done)
                if cfg.stop_at and cfg.stop_at <= done < cfg.steps:
                    self.save(done)
                    eng.close()
                    return {**last, "rl/stopped_at": done}
                bar(done, f"succ {metrics['reward/success']:.2f} steps {metrics['response/steps']:.2f}"
                    + (f" acc {metrics['eval/accuracy']:.3f}" if "eval/accuracy" in metrics else ""))
        eng.close()
        final = eng.save_final(self.policy, self.tok)   # LoRA: the adapter
        if cfg.model.lora.save_merged and self.dist.is_main:   # LoRA: + the merged full model
            save_merged(final, cfg.model, self.out / "final_merged", self.prec.storage)
        self.dist.barrier()
        if getattr(self, "_last_eval_rows", None) is not None:
            write_jsonl(self.out / "eval_predictions.jsonl", self._last_eval_rows)
        last["rl/wall_s"] = eng.wall_s
        return eng.summary("rl_summary.json", last)


def train_rl(cfg: RLConfig, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Run an RL job from a config; returns the final metrics."""
    return RLTrainer(cfg).train(on_step)

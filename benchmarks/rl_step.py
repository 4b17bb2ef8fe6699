"""RL step wall time: rewardlab's GRPO step against TRL's ``GRPOTrainer`` on the CPU.

One RL step = sample ``n`` responses for each of ``prompts_per_step`` prompts, grade them
(success reward), reference log-probs, group-normalised advantages, and one optimizer step on
the whole batch (PPO-clip surrogate + β·KL(k3) in the loss, token-mean aggregation). Both sides get
the same testbed "small" policy (after ``--sft-steps`` SFT steps, 200 by default, which teach it
the answer format so that responses end with EOS, as in a real run; 0 keeps the random init), the
same prompt set, ``prompts × n``, the same ``max_new_tokens``, learning rate, β, clip ε, optimizer
(AdamW β=(0.9, 0.95), no weight decay, grad clip 1.0) and float32.

- rewardlab: :class:`rewardlab.rl.trainer.RLTrainer` with ``algo=grpo``,
  ``advantage=grpo_outcome``, ``kl.in_reward=false``, ``kl.estimator=k3``, ``ppo_epochs=1`` and
  ``minibatch_size = prompts × n``; a step is ``generate_rollouts`` + ``score`` + ``update`` (the
  body of ``RLTrainer.train`` without evaluation, checkpointing and logging). Its defaults
  (``sampling.engine=auto``, ``engine=auto``) run the Llama policy through
  :mod:`rewardlab.models.fast`: a fused sampler with a preallocated KV cache whose finished rows
  leave the batch, and teacher-forced passes that compute each distinct prompt once per group and
  the responses in length buckets. ``--engine hf`` times the plain transformers calls instead.
- TRL: ``GRPOTrainer`` with ``num_generations=n``, ``per_device_train_batch_size = prompts × n``
  (one optimizer step = one generation batch), ``num_iterations=1``, ``loss_type="dapo"``
  (= token-mean over the batch), ``beta`` = rewardlab's ``kl.coef``, gradient checkpointing,
  bf16, logging and saving off; a reward function grading with ``rewardlab.grading.grade``.
  A step is the time from the end of the previous step (its ``on_step_end`` callback) to the end
  of this one: data loading, generation, rewards, reference log-probs, loss, backward, optimizer.

The two are interleaved: rewardlab's step k runs inside TRL's ``on_step_end`` of step k (and is
not counted in TRL's time), so both see the same load from whatever else runs on the machine.
Both run ``warmup + steps`` steps; the first ``warmup`` are dropped and the mean of the rest is
reported, with the ratio rewardlab / TRL. Goal: ratio ≤ 0.5. Phase columns: *rollout* =
sampling (neither side runs a separate pass for the old log-probs here: one epoch of one
minibatch is on-policy, so both take them from the update's own forward pass); *score* =
rewards, reference log-probs, advantages (and, for rewardlab, the testbed hacking diagnostics);
*update* = the rest of the step.

Run: ``python benchmarks/rl_step.py [--prompts 32] [--n 4] [--max-new-tokens 48] [--sft-steps 200]``.
The defaults time the RL step that ``make demo`` and the shipped testbed configs run: 32 prompts
× 4 samples (``DemoBudget.rl_prompts`` × ``rl_n``), at most 48 new tokens
(``SamplingConfig.max_new_tokens``), from a policy that has been through SFT (its answers are
~25 tokens long, like the demo's SFT policy's). ``--prompts 8 --n 8 --max-new-tokens 512 --beta 0``
uses TRL's ``GRPOConfig`` defaults for the group size, response cap and β. ``--sft-steps 0
--prompts 16`` was the default before: a random-init policy, whose rows rarely end before the cap.
Needs the ``bench`` extra (``pip install -e .[bench]``, TRL ≥ 1.0; checked with 1.0.0 and 1.16.0); without it, or if TRL fails on
this setup, the script says what failed and still reports rewardlab's time (exit 0).
The default settings take about 1.5 minutes on 2 CPU cores, 50 s of it for the SFT (OpenMP
threads wait passively, see below). Times depend on what else runs on the machine, so compare only
ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import traceback
import warnings
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: with more runnable threads than cores (other jobs
# on the machine), spinning at every barrier made a step 5-15x slower and its time erratic.
# Only takes effect when this module is imported before torch (e.g. run as a script).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def make_policy(out_dir: Path, size: str, seed: int, sft_steps: int, problems) -> Path:
    """The testbed policy, optionally after a few SFT steps so that responses end with EOS."""
    from rewardlab.models.loading import load_model_and_tokenizer, make_testbed_policy
    from rewardlab.sft.trainer import collate, encode_example, sft_loss
    from rewardlab.data.prompts import default_prompt

    init = make_testbed_policy(out_dir / "init", size=size, seed=seed)
    if sft_steps <= 0:
        return init
    model, tok = load_model_and_tokenizer(init, dtype="float32", device="cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(sft_steps):
        idx = torch.randint(len(problems), (64,), generator=g).tolist()
        ex = [encode_example(tok, default_prompt(problems[i]), problems[i].solution, 96) for i in idx]
        loss = sft_loss(model, collate(ex, tok.pad_token_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    out = out_dir / "sft"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


class RewardlabBench:
    """rewardlab's GRPO: the body of ``RLTrainer.train`` (rollout → score → update), one step per
    :meth:`step` call, without evaluation, checkpointing and logging."""

    def __init__(self, policy: Path, train_path: Path, test_path: Path, run_dir: Path, args):
        from rewardlab.config import load_config
        from rewardlab.rl.config import RLConfig
        from rewardlab.rl.trainer import RLTrainer

        B = args.prompts * args.n
        self.cfg = load_config(RLConfig, None, [
            f"out={run_dir}", f"model.name_or_path={policy}", "model.dtype=float32",
            "model.device=cpu", f"data.train_path={train_path}", f"data.test_path={test_path}",
            "algo=grpo", "advantage=grpo_outcome", "reward.success=true", "kl.in_reward=false",
            "kl.estimator=k3", f"kl.coef={args.beta}", f"prompts_per_step={args.prompts}",
            f"sampling.n={args.n}", f"sampling.max_new_tokens={args.max_new_tokens}",
            "sampling.temperature=1.0", "sampling.top_p=1.0", f"sampling.batch_size={B}",
            "ppo_epochs=1", f"minibatch_size={B}", f"lr={args.lr}", "clip_eps=0.2",
            "entropy_coef=0.0", "grad_clip=1.0", f"steps={args.warmup + args.steps}", "eval_every=0",
            f"engine={args.engine}", f"sampling.engine={args.engine}",
            "eval_k=0", "save_every=0", "resume=false", "progress=false", f"seed={args.seed}"])
        self.tr = RLTrainer(self.cfg)
        self.records: list[dict] = []

    def step(self, step: int) -> None:
        tr = self.tr
        t0 = time.perf_counter()
        problems, batch = tr.rollout(step)
        t1 = time.perf_counter()
        sb = tr.score(problems, batch)
        sb.metrics["_step"] = step
        t2 = time.perf_counter()
        tr.update(sb)
        t3 = time.perf_counter()
        self.records.append({"total": t3 - t0, "rollout": t1 - t0, "score": t2 - t1, "update": t3 - t2,
                             "length": float(batch.response_mask.sum(1).float().mean()),
                             "success": sb.metrics["reward/success"]})


class _RewardlabStepError(Exception):
    """rewardlab failed inside TRL's callback: not a TRL failure."""


def summarize(records: list[dict], warmup: int) -> dict:
    rec = records[warmup:]
    return {k: [r[k] for r in rec] for k in rec[0]} if rec else {}


def bench_trl(policy: Path, problems, run_dir: Path, args, between_steps=None) -> list[dict]:
    """TRL's ``GRPOTrainer`` for ``warmup + steps`` steps. ``between_steps(k)`` runs after TRL's
    step k (inside ``on_step_end``) and is excluded from TRL's times: that interleaves the two
    implementations so both see the same machine load."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewardlab.grading import grade
    from rewardlab.data.prompts import default_prompt

    B = args.prompts * args.n
    total = args.warmup + args.steps
    cur: dict = {}

    def success_reward(completions, answer, completion_ids=None, **kwargs):
        r = [1.0 if grade(c, a, "gsm8k") else 0.0 for c, a in zip(completions, answer)]
        if completion_ids is not None:
            cur["length"] = statistics.fmean(len(c) for c in completion_ids)
        cur["success"] = statistics.fmean(r)
        return r

    records: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            cur["start"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            end = time.perf_counter()
            gen, gs = cur.pop("generate", 0.0), cur.pop("gen_score", 0.0)
            records.append({"total": end - cur["start"], "rollout": gen, "score": gs - gen,
                            "update": end - cur["start"] - gs, "length": cur.get("length", float("nan")),
                            "success": cur.get("success", float("nan"))})
            if between_steps is not None:
                between_steps(len(records) - 1)
            cur["start"] = time.perf_counter()

    # enough rows that the sampler never wraps around within the run
    n_rows = max(len(problems), args.prompts * total)
    rows = [problems[i % len(problems)] for i in range(n_rows)]
    ds = datasets.Dataset.from_dict({"prompt": [default_prompt(p) for p in rows],
                                     "answer": [p.answer for p in rows]})
    tok = AutoTokenizer.from_pretrained(str(policy))
    model = AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32)
    gargs = GRPOConfig(
        output_dir=str(run_dir), use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        gradient_checkpointing=False, report_to="none", logging_strategy="no",
        save_strategy="no", eval_strategy="no", disable_tqdm=True, log_completions=False,
        max_steps=total, num_generations=args.n, per_device_train_batch_size=B,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        beta=args.beta, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
        dataloader_num_workers=0, remove_unused_columns=False)
    trainer = GRPOTrainer(model=model, reward_funcs=success_reward, args=gargs, train_dataset=ds,
                          processing_class=tok, callbacks=[StepTimer()])
    trainer.remove_callback(PrinterCallback)  # the end-of-training metrics dict

    def timed(name, fn):  # phase timers (wrap the instance's methods; TRL itself is unchanged)
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                cur[name] = cur.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    for method, name in (("_generate_single_turn", "generate"), ("_generate_and_score_completions", "gen_score")):
        if hasattr(trainer, method):  # private names: a TRL without them only loses the phase columns
            setattr(trainer, method, timed(name, getattr(trainer, method)))
    trainer.train()
    if len(records) != total:
        raise RuntimeError(f"TRL ran {len(records)} steps, expected {total}")
    return records


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from rewardlab.data.testbed import TestbedConfig, make_splits
    from rewardlab.io import write_jsonl

    from rewardlab.demo import DemoBudget
    from rewardlab.models.sampling import SamplingConfig

    # defaults: the RL step of the demo's runs (`make demo`) and of the shipped testbed configs
    demo = DemoBudget()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=demo.rl_prompts, help="Prompts per step.")
    ap.add_argument("--n", type=int, default=demo.rl_n, help="Samples per prompt (GRPO group size).")
    ap.add_argument("--max-new-tokens", type=int, default=SamplingConfig().max_new_tokens,
                    help="Longest response, in tokens.")
    ap.add_argument("--steps", type=int, default=8, help="Timed steps (after the warm-up).")
    ap.add_argument("--warmup", type=int, default=1, help="Untimed first steps.")
    ap.add_argument("--size", default="small", help="Testbed policy size.")
    ap.add_argument("--sft-steps", type=int, default=200,
                    help="SFT steps before RL, as RL starts from an SFT policy (0: random init, "
                         "whose responses rarely end before the cap).")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta", type=float, default=0.1, help="KL coefficient (rewardlab kl.coef, TRL beta).")
    ap.add_argument("--threads", type=int, default=2, help="torch threads.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trl", action="store_true", help="Only time rewardlab.")
    ap.add_argument("--engine", default="auto", choices=["auto", "fast", "hf"],
                    help="rewardlab's sampling.engine and engine (hf: plain transformers calls).")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    console = Console(width=110)
    B = args.prompts * args.n
    res: dict = {}
    trl_error = None
    trl_version = ""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        train, test = make_splits(TestbedConfig(), n_train=512, n_test=8, seed=args.seed)
        write_jsonl(d / "train.jsonl", [p.to_dict() for p in train])
        write_jsonl(d / "test.jsonl", [p.to_dict() for p in test])  # unused: no evaluation
        t0 = time.perf_counter()
        policy = make_policy(d / "policy", args.size, args.seed, args.sft_steps, train)
        setup_s = time.perf_counter() - t0
        rl = RewardlabBench(policy, d / "train.jsonl", d / "test.jsonl", d / "rl", args)
        total = args.warmup + args.steps
        if args.skip_trl:
            trl_error = "skipped (--skip-trl)"
        else:
            try:
                import trl
                trl_version = trl.__version__
            except ImportError as e:
                trl_error = f"TRL is not installed ({e}); install the bench extra: pip install -e .[bench]"
            else:
                def rl_step(k: int) -> None:
                    try:
                        rl.step(k)
                    except Exception as e:
                        raise _RewardlabStepError(str(e)) from e

                try:
                    trl_records = bench_trl(policy, train, d / "trl", args, between_steps=rl_step)
                    res["trl"] = summarize(trl_records, args.warmup)
                except _RewardlabStepError as e:
                    raise e.__cause__
                except Exception as e:  # report it and keep rewardlab's number
                    trl_error = f"TRL GRPOTrainer failed: {type(e).__name__}: {e}"
                    traceback.print_exc()
        for k in range(len(rl.records), total):  # rewardlab alone (no TRL, or TRL stopped early)
            rl.step(k)
        res["rewardlab"] = summarize(rl.records, args.warmup)

    table = Table(title=f"One GRPO step on the CPU ({args.threads} torch threads): "
                        f"{args.prompts} prompts × {args.n} samples, ≤{args.max_new_tokens} new tokens")
    for col in ("implementation", "s/step (mean ± sd)", "rollout s", "score s", "update s",
                "resp. tok", "success"):
        table.add_column(col, justify="left" if col == "implementation" else "right", no_wrap=True)
    labels = {"rewardlab": f"rewardlab grpo, engine={args.engine}",
              "trl": f"TRL GRPOTrainer {trl_version}"}
    for name in ("rewardlab", "trl"):
        if name in res:
            r = res[name]
            m, s = _mean_std(r["total"])
            table.add_row(labels[name], f"{m:.2f} ± {s:.2f}",
                          *(f"{statistics.fmean(r[k]):.2f}" for k in ("rollout", "score", "update")),
                          f"{statistics.fmean(r['length']):.1f}", f"{statistics.fmean(r['success']):.2f}")
    console.print(table)
    console.print(f"settings: testbed '{args.size}' policy ({'random init' if args.sft_steps <= 0 else f'{args.sft_steps} SFT steps'}, "
                  f"setup {setup_s:.1f}s), B={B}, temperature 1.0, lr {args.lr}, β={args.beta} (k3 KL in the "
                  f"loss), clip ε 0.2, 1 epoch × 1 minibatch, float32, {args.warmup} warm-up + {args.steps} "
                  "timed steps each")
    if "trl" in res:
        ratio = statistics.fmean(res["rewardlab"]["total"]) / statistics.fmean(res["trl"]["total"])
        res["ratio"] = ratio
        console.print(f"ratio rewardlab / TRL = {ratio:.2f}×  (goal ≤ 0.5×: "
                      f"{'met' if ratio <= 0.5 else 'not met'})")
    else:
        res["trl_error"] = trl_error
        console.print(f"[bold]TRL not measured[/bold]: {trl_error}")
    return res


if __name__ == "__main__":
    main()

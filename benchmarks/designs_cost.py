"""Cost of one RL step per reward design, as a ratio to success-only PPO, on the testbed (CPU).

Every design runs exactly what ``rewardlab demo --designs <name>`` runs (the overrides in
``rewardlab.demo.DESIGNS``), from the same SFT policy, on the same prompts: one step = rollout
(sampling) + score (rewards, reference / value / PRM passes, advantages: PRIME's implicit-PRM pass
and update, VinePPO's Monte-Carlo rollouts) + update (the PPO minibatch updates). The designs are
interleaved step by step, so all see the same load from whatever else runs on the machine; compare
only ratios from one run.

The PRM is the SFT policy read as an LM-head PRM through the Math-Shepherd tag ' ки'
(``reward.prm.tag``): the same architecture and size as the demo's trained PRM, so the same cost
(its scores are meaningless, which does not matter for timing).

``success`` (the baseline) is the demo's PPO: a critic, GAE, the KL in the reward (so an extra
old-log-prob pass). prime and vine use no critic and put the KL in the loss (one on-policy update
without that pass), so they can be cheaper than it; ``success_rloo`` (success only, RLOO, no
critic, KL in the loss) is their like-for-like baseline: prime − success_rloo is the implicit PRM's
cost (one forward and backward pass + an optimizer step of a policy-sized model), vine −
success_rloo the Monte-Carlo rollouts'.

    python benchmarks/designs_cost.py [--designs success,prm_clip_delta,prm_min_form,success_rloo,prime,vine]
        [--prompts 32 --n 4 --max-new-tokens 48 --steps 3 --warmup 1 --vine-k 4 --sft-steps 200]

Defaults: the demo's RL step (32 prompts × 4 samples, ≤ 48 new tokens, the 'small' policy after
200 SFT steps so that answers end with EOS). About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see benchmarks/rl_step.py

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_step import make_policy  # noqa: E402  (the testbed policy after a few SFT steps)


# Not a demo design: success only, without the critic and with the KL in the loss, as prime and
# vine run, so that their own overhead (implicit PRM, MC rollouts) shows against it.
EXTRA = {"success_rloo": ("RLOO on success, KL in the loss, no critic",
                          ["algo=ppo", "advantage=rloo", "kl.in_reward=false", "kl.estimator=k3"])}


def build_trainer(design: str, policy: Path, d: Path, args):
    from rewardlab.config import load_config
    from rewardlab.demo import DESIGNS, USES_PRM
    from rewardlab.rl.config import RLConfig
    from rewardlab.rl.trainer import RLTrainer

    B = args.prompts * args.n
    ov = list({**DESIGNS, **EXTRA}[design][1]) + [
        f"out={d / 'rl' / design}", f"model.name_or_path={policy}", "model.dtype=float32",
        "model.device=cpu", f"data.train_path={d / 'train.jsonl'}", f"data.test_path={d / 'test.jsonl'}",
        f"prompts_per_step={args.prompts}", f"sampling.n={args.n}",
        f"sampling.max_new_tokens={args.max_new_tokens}", f"sampling.batch_size={max(B, 256)}",
        f"steps={args.warmup + args.steps}", "eval_every=0", "eval_k=0", "save_every=0",
        "resume=false", "progress=false", f"seed={args.seed}", f"vine.k={args.vine_k}"]
    if design in USES_PRM:
        ov += [f"reward.prm.path={policy}", 'reward.prm.tag=" ки"']
    if design == "orm":
        raise SystemExit("orm needs a trained ORM; time it with the demo instead")
    return RLTrainer(load_config(RLConfig, None, ov))


def step(tr, k: int) -> dict:
    t0 = time.perf_counter()
    problems, batch = tr.rollout(k)
    t1 = time.perf_counter()
    sb = tr.score(problems, batch)
    sb.metrics["_step"] = k
    t2 = time.perf_counter()
    tr.update(sb)
    t3 = time.perf_counter()
    return {"total": t3 - t0, "rollout": t1 - t0, "score": t2 - t1, "update": t3 - t2,
            "mc_rollouts": sb.metrics.get("vine/rollouts", 0.0)}


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from rewardlab.data.testbed import TestbedConfig, make_splits
    from rewardlab.demo import DemoBudget
    from rewardlab.io import write_jsonl

    demo = DemoBudget()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default="success,prm_clip_delta,prm_min_form,success_rloo,prime,vine",
                    help="Comma-separated demo designs (and success_rloo: success only, no critic, "
                         "KL in the loss); the first is the baseline of the ratios.")
    ap.add_argument("--prompts", type=int, default=demo.rl_prompts)
    ap.add_argument("--n", type=int, default=demo.rl_n)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=3, help="Timed steps per design (after the warm-up).")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--vine-k", type=int, default=4, help="VinePPO rollouts per step boundary.")
    ap.add_argument("--size", default="small")
    ap.add_argument("--sft-steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    designs = [x.strip() for x in args.designs.split(",") if x.strip()]

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    console = Console(width=110)
    rec: dict[str, list[dict]] = {x: [] for x in designs}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        train, test = make_splits(TestbedConfig(), n_train=512, n_test=8, seed=args.seed)
        write_jsonl(d / "train.jsonl", [p.to_dict() for p in train])
        write_jsonl(d / "test.jsonl", [p.to_dict() for p in test])
        policy = make_policy(d / "policy", args.size, args.seed, args.sft_steps, train)
        trainers = {x: build_trainer(x, policy, d, args) for x in designs}
        for k in range(args.warmup + args.steps):          # interleaved: same load for all
            for x in designs:
                r = step(trainers[x], k)
                if k >= args.warmup:
                    rec[x].append(r)
    base = statistics.fmean(r["total"] for r in rec[designs[0]])
    table = Table(title=f"One RL step per design ({args.threads} torch thread(s)): {args.prompts} "
                        f"prompts × {args.n} samples, ≤{args.max_new_tokens} new tokens, "
                        f"{args.steps} timed steps")
    for col in ("design", "s/step", f"× {designs[0]}", "rollout s", "score s", "update s",
                "MC rollouts"):
        table.add_column(col, justify="left" if col == "design" else "right", no_wrap=True)
    out = {}
    for x in designs:
        mean = {k: statistics.fmean(r[k] for r in rec[x]) for k in rec[x][0]}
        out[x] = {**mean, "ratio": mean["total"] / base}
        table.add_row(x, f"{mean['total']:.2f}", f"{mean['total'] / base:.2f}",
                      *(f"{mean[k]:.2f}" for k in ("rollout", "score", "update")),
                      f"{mean['mc_rollouts']:.0f}")
    console.print(table)
    console.print(f"settings: testbed '{args.size}' policy after {args.sft_steps} SFT steps; PRM = that "
                  f"policy read through the tag ' ки'; vine.k = {args.vine_k}; demo overrides per design")
    return out


if __name__ == "__main__":
    main()

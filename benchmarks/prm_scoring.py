"""PRM scoring: one forward pass over the tagged solution vs one forward pass per step prefix.

A PRM reads p_k at the tag after step k. Causal attention means the hidden state at that tag
depends only on the prefix up to it, so ONE pass over ``question + s_1 TAG + ... + s_K TAG``
gives all K step scores; the naive alternative re-encodes every prefix (K passes, reading the
last tag each time), costing ~K/2 times the tokens. This script times both on a batch of
solutions at K = 2, 4, 8, 16 and checks that they agree (max |Δp| ~ 0). A second table times
the one pass through transformers against the fast pass (``ProcessRM.engine``), where the
solutions of a question share its keys/values.

    python benchmarks/prm_scoring.py [--hidden 256 --layers 4 --batch 32 --ks 2,4,8,16]

Runs on CPU in well under 2 minutes (a random-initialised testbed-vocabulary Llama backbone,
LM-head form PRM with the Math-Shepherd tag ' ки').
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def build_prm(hidden: int, layers: int, seed: int = 0):
    from transformers import AutoModelForCausalLM

    from rewardlab.data.testbed import build_tokenizer
    from rewardlab.models.loading import testbed_model_config
    from rewardlab.reward_models.models import ProcessRM, RMSpec

    tok = build_tokenizer()
    cfg = testbed_model_config(len(tok), "small", max_positions=512, tok=tok)
    cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size = hidden, layers, 2 * hidden
    cfg.head_dim = hidden // cfg.num_attention_heads
    torch.manual_seed(seed)
    backbone = AutoModelForCausalLM.from_config(cfg).eval()
    return ProcessRM(backbone, tok, RMSpec(kind="prm", form="lm", tag=" ки"))


def make_solutions(n: int, k: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """n testbed questions, each with k arithmetic steps (content is irrelevant for timing)."""
    from rewardlab.data.testbed import generate_problems

    rng = random.Random(seed)
    questions = [p.question for p in generate_problems(n=n, seed=seed)]
    steps = []
    for _ in range(n):
        sol = []
        for _ in range(k - 1):
            a, b = rng.randint(1, 49), rng.randint(1, 49)
            sol.append(f"{a} + {b} = {a + b}")
        sol.append(f"#### {rng.randint(1, 99)}")
        steps.append(sol)
    return questions, steps


@torch.no_grad()
def score_one_pass(rm, questions, steps) -> list[list[float]]:
    return [r.step_scores for r in rm.score(questions, steps, batch_size=len(questions))]


@torch.no_grad()
def score_per_prefix(rm, questions, steps) -> list[list[float]]:
    """Reference: for every k, one batched forward over the k-step prefixes, reading the last
    tag of each row."""
    from rewardlab.reward_models.losses import step_probs
    from rewardlab.reward_models.data import collate_prm

    out: list[list[float]] = [[] for _ in questions]
    for k in range(1, max(len(s) for s in steps) + 1):
        rows = [i for i, s in enumerate(steps) if len(s) >= k]
        encs = [rm.encode(questions[i], steps[i][:k]) for i in rows]
        b = collate_prm(encs, None, rm.tokenizer.pad_token_id, "right")
        p = step_probs(rm.pair_logits(b["input_ids"], b["attention_mask"]))   # (B, L)
        for j, (i, e) in enumerate(zip(rows, encs)):
            out[i].append(p[j, e.tag_positions[-1]].item())
    return out


def best_time(fn, repeats: int, budget_s: float = 4.0) -> tuple[float, object]:
    """Best of ``repeats`` runs, stopping early once ``budget_s`` seconds have been spent."""
    result, best, spent = None, float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32, help="solutions scored together")
    ap.add_argument("--ks", default="2,4,8,16", help="steps per solution")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timings are the best of up to this many runs (fewer past 4 s)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--group", type=int, default=4, help="solutions per question in the hf/fast table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from rewardlab.training.engine import quiet_transformers
    quiet_transformers()

    rm = build_prm(args.hidden, args.layers)
    n_params = sum(p.numel() for p in rm.parameters())
    print(f"PRM: Llama hidden={args.hidden} layers={args.layers} ({n_params / 1e6:.2f}M params), "
          f"LM-head form, tag ' ки'; batch {args.batch} solutions; "
          f"{torch.get_num_threads()} CPU threads; best of <= {args.repeats} runs")
    score_one_pass(rm, *make_solutions(4, 2))                      # warm-up
    header = (f"{'K':>3} {'tokens':>7} {'one-pass ms':>12} {'per-prefix ms':>14} {'ratio':>7} "
              f"{'max|dp|':>10}")
    print(header)
    print("-" * len(header))
    for k in [int(x) for x in args.ks.split(",")]:
        questions, steps = make_solutions(args.batch, k)
        t_one, one = best_time(lambda: score_one_pass(rm, questions, steps), args.repeats)
        t_pre, pre = best_time(lambda: score_per_prefix(rm, questions, steps), args.repeats)
        diff = max(abs(a - b) for r1, r2 in zip(one, pre) for a, b in zip(r1, r2))
        assert all(len(r) == k for r in one)
        tokens = sum(len(rm.encode(q, s).input_ids) for q, s in zip(questions, steps)) / len(steps)
        print(f"{k:>3} {tokens:>7.0f} {t_one * 1e3:>12.1f} {t_pre * 1e3:>14.1f} "
              f"{t_pre / t_one:>6.1f}x {diff:>10.2e}")
    # the one pass itself: transformers (engine=hf) vs the fast pass (engine=auto), on RL-like
    # batches where every question is followed by --group sampled solutions
    print(f"\none pass, transformers vs the fast pass (each question shared by {args.group} "
          f"solutions, as in an RL group); same batch of {args.batch}")
    header = f"{'K':>3} {'hf ms':>8} {'fast ms':>8} {'hf / fast':>10} {'max|dp|':>10}"
    print(header)
    print("-" * len(header))
    for k in [int(x) for x in args.ks.split(",")]:
        questions, steps = make_solutions(max(args.batch // args.group, 1), k)
        questions = [q for q in questions for _ in range(args.group)]
        steps = [s for s in steps for _ in range(args.group)]
        times, scores = {}, {}
        for engine in ("hf", "auto"):
            rm.engine = engine
            times[engine], scores[engine] = best_time(lambda: score_one_pass(rm, questions, steps),
                                                      args.repeats)
        diff = max(abs(a - b) for r1, r2 in zip(scores["hf"], scores["auto"]) for a, b in zip(r1, r2))
        print(f"{k:>3} {times['hf'] * 1e3:>8.1f} {times['auto'] * 1e3:>8.1f} "
              f"{times['hf'] / times['auto']:>9.2f}x {diff:>10.2e}")


if __name__ == "__main__":
    main()

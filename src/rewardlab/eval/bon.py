"""Best-of-N: how well a reward model picks a correct response out of N samples.

For every problem, M responses are sampled once; for N ≤ M, a method picks one response out of a
random N-subset, and the accuracy is averaged over problems and ``n_trials`` seeded subsets:

- a scorer (ORM, PRM-product/min/last, BT): the response with the highest score;
- ``majority``: the most frequent final answer (:func:`rewardlab.eval.evaluate.majority_vote`);
- ``<scorer>-vote`` (for the scorers named in ``votes``): the reward-weighted majority vote of
  Math-Shepherd (Wang et al. 2024) and Lightman et al. (2023), :func:`weighted_vote` — the final
  answer with the largest score mass Σ_{j: answer_j = a} score_j;
- ``random``: a uniformly random response (its expected accuracy, the subset's mean);
- ``oracle``: any correct response in the subset, i.e. pass@N — the ceiling of every method.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from rewardlab.data.problem import Problem
from rewardlab.data.prompts import default_prompt
from rewardlab.data.steps import split_steps
from rewardlab.eval.evaluate import majority_vote
from rewardlab.eval.plots import plot_bon
from rewardlab.grading.grader import Grader
from rewardlab.io import write_json, write_jsonl
from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.models.sampling import check_sample_count, generate_rollouts, SamplingConfig
from rewardlab.reward_models.models import load_reward_model
from rewardlab.stats import auroc


def default_ns(max_n: int) -> list[int]:
    """1, 2, 4, ... up to ``max_n`` (``max_n`` itself included)."""
    ns, n = [], 1
    while n < max_n:
        ns.append(n)
        n *= 2
    return ns + [max_n]


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """The answer with the largest summed weight: argmax_a Σ_{j: answer_j = a} w_j.

    Answers are compared after stripping whitespace; None (no answer) is ignored; a weight that
    is NaN or infinite counts 0 (an unscored response), a negative weight is an error (use
    probabilities, not raw Bradley–Terry scores). A tie goes to the answer that occurs first;
    None when no answer is given. With equal weights this is :func:`majority_vote`."""
    if len(answers) != len(weights):
        raise ValueError(f"weighted_vote: {len(answers)} answers but {len(weights)} weights")
    mass: dict[str, float] = {}
    for a, w in zip(answers, weights):
        w = float(w)
        if not np.isfinite(w):
            w = 0.0
        elif w < 0:
            raise ValueError(f"weighted_vote: negative weight {w}")
        if a is None or not a.strip():
            continue
        key = a.strip()
        mass[key] = mass.get(key, 0.0) + w
    if not mass:
        return None
    best = max(mass.values())
    return next(a for a in mass if mass[a] == best)


def within_problem_auroc(correct, scores) -> tuple[float, int]:
    """How well a scorer ranks the responses *to one problem*, averaged over problems:

        AUROC_within = (1/|Q|) Σ_{i ∈ Q} AUROC(scores[i, :], correct[i, :]),

    Q the problems with at least one right and one wrong response (``correct``, ``scores``:
    (P, M)). Best-of-N only ever compares responses to the same problem, so this, not the AUROC
    pooled over problems, is what its accuracy follows: a scorer that has learned only how hard a
    problem is has a pooled AUROC well above 0.5 and a within-problem AUROC of 0.5. Returns
    (mean, |Q|); (nan, 0) when no problem has both."""
    c = np.asarray(correct, dtype=float)
    s = np.asarray(scores, dtype=float)
    if c.shape != s.shape or c.ndim != 2:
        raise ValueError(f"within_problem_auroc: correct {c.shape} and scores {s.shape} must be "
                         "the same (problems, samples) shape")
    s = np.nan_to_num(s, nan=-1e30, neginf=-1e30, posinf=1e30)   # unscored: ranked last
    vals = [auroc(s[i], c[i]) for i in range(len(c)) if 0 < c[i].sum() < c.shape[1]]
    return (float(np.mean(vals)) if vals else float("nan")), len(vals)


def best_of_n(problems: Sequence[Problem], samples: Sequence[Sequence[str]],
              scores: Mapping[str, Sequence[Sequence[float]]], ns: Sequence[int] | None = None,
              style: str = "gsm8k", n_trials: int = 16, seed: int = 0,
              grader: Grader | None = None, votes: Sequence[str] = ()
              ) -> dict[str, dict[int, float]]:
    """Best-of-N accuracy table ``{method: {N: accuracy}}`` (methods in the module docstring).

    ``samples[i]``: the M responses to problem i (same M for all); ``scores[name][i][j]``: the
    score of response j of problem i by scorer ``name`` (higher is better; NaN or -inf never
    wins unless every candidate has it). For each N, ``n_trials`` random subsets per problem
    (drawn with ``seed``; ties go to a random candidate) are averaged. ``votes``: scorers (of
    non-negative scores, e.g. ORM / PRM probabilities) that also get a weighted-vote method
    ``<name>-vote``.
    """
    P = len(problems)
    if len(samples) != P:
        raise ValueError(f"best_of_n: {len(samples)} sample lists for {P} problems")
    if P == 0:
        raise ValueError("best_of_n: no problems")
    M = len(samples[0])
    if M == 0 or any(len(s) != M for s in samples):
        raise ValueError("best_of_n: every problem needs the same, non-zero number of samples")
    ns = list(ns) if ns is not None else default_ns(M)
    if any(not 1 <= n <= M for n in ns):
        raise ValueError(f"best_of_n: every N must lie in 1..{M} (the samples per problem), got {ns}")
    if n_trials < 1:
        raise ValueError("best_of_n: n_trials must be >= 1")
    grader = grader or Grader(style)
    graded = [[grader(s, p.answer) for s in row] for p, row in zip(problems, samples)]
    answers = [[a for a, _ in row] for row in graded]
    correct = np.array([[float(ok) for _, ok in row] for row in graded])  # (P, M)
    score_arrays = {}
    for name, s in scores.items():
        if name in ("majority", "random", "oracle"):
            raise ValueError(f"best_of_n: scorer name {name!r} is taken by a built-in method")
        arr = np.asarray(s, dtype=float)
        if arr.shape != (P, M):
            raise ValueError(f"best_of_n: scores[{name!r}] has shape {arr.shape}, expected {(P, M)}")
        score_arrays[name] = np.where(np.isnan(arr), -np.inf, arr)
    for name in votes:
        if name not in score_arrays:
            raise ValueError(f"best_of_n: vote scorer {name!r} is not among the scores "
                             f"{sorted(score_arrays)}")
    # correctness of each distinct (stripped) answer, graded once per problem
    right = [{a.strip(): grader.equiv(a.strip(), p.answer) for a in ans if a is not None and a.strip()}
             for ans, p in zip(answers, problems)]

    def is_right(i: int, a: str | None) -> bool:
        return a is not None and right[i].get(a, False)

    methods = list(score_arrays) + [f"{v}-vote" for v in votes] + ["majority", "random", "oracle"]
    table: dict[str, dict[int, float]] = {m: {} for m in methods}
    rng = np.random.default_rng(seed)
    rows = np.arange(P)
    for n in ns:
        acc = dict.fromkeys(methods, 0.0)
        for _ in range(n_trials):
            idx = np.argsort(rng.random((P, M)), axis=1)[:, :n]   # (P, N) random subset, random order
            c = np.take_along_axis(correct, idx, axis=1)         # (P, N)
            for name, arr in score_arrays.items():
                pick = np.take_along_axis(arr, idx, axis=1).argmax(axis=1)  # (P,) first max
                acc[name] += c[rows, pick].mean()
            maj = [majority_vote([answers[i][j] for j in idx[i]]) for i in range(P)]
            acc["majority"] += np.mean([is_right(i, m) for i, m in enumerate(maj)])
            for v in votes:
                w = np.take_along_axis(score_arrays[v], idx, axis=1)       # (P, N)
                picks = [weighted_vote([answers[i][j] for j in idx[i]], w[i]) for i in range(P)]
                acc[f"{v}-vote"] += np.mean([is_right(i, a) for i, a in enumerate(picks)])
            acc["random"] += c.mean()
            acc["oracle"] += c.max(axis=1).mean()
        for m in methods:
            table[m][n] = float(acc[m] / n_trials)
    return table


def score_samples(rm, questions: Sequence[str], steps: Sequence[Sequence[str]], name: str,
                  aggregations: Sequence[str] = ("product", "min", "last"),
                  batch_size: int = 64) -> dict[str, list[float]]:
    """One reward model's flat scores of every response, in one ``rm.score`` call.

    ORM/BT: ``{name: scores}``; PRM: ``{f"{name}-{how}": aggregate(step_scores, how)}`` for each
    aggregation. A response with no step scores -inf (it is never picked)."""
    keep = [i for i, s in enumerate(steps) if s]
    results = rm.score([questions[i] for i in keep], [list(steps[i]) for i in keep],
                       batch_size=batch_size)
    names = [f"{name}-{how}" for how in aggregations] if rm.kind == "prm" else [name]
    out = {k: [float("-inf")] * len(steps) for k in names}
    for i, r in zip(keep, results):
        if rm.kind == "prm":
            for how in aggregations:
                out[f"{name}-{how}"][i] = float(rm.aggregate(r.step_scores, how))
        else:
            out[name][i] = float(r.score)
    return out


def run_bon(policy_path: str | os.PathLike, problems: Sequence[Problem],
            rm_paths: Mapping[str, str | os.PathLike], max_n: int = 64,
            ns: Sequence[int] | None = None, style: str = "gsm8k", temperature: float = 1.0,
            top_p: float = 1.0, max_new_tokens: int = 48, batch_size: int = 256, seed: int = 0,
            n_trials: int = 16, out: str | os.PathLike | None = None,
            aggregations: Sequence[str] = ("product", "min", "last"), step_split: str = "lines",
            prompt_fn: Callable[[Problem], str] | None = None, device: str = "auto",
            rm_batch_size: int = 64, rm_specs: Mapping[str, object] | None = None,
            weighted_votes: bool = True) -> dict:
    """Sample ``max_n`` responses per problem from the policy once, score them with every reward
    model once (``rm_paths``: ``{name: path}``; a PRM gives ``name-product``, ``name-min``,
    ``name-last``), and compute the :func:`best_of_n` table (with ``weighted_votes``, also the
    score-weighted vote of every ORM and PRM scorer, ``<scorer>-vote``). ``rm_specs`` (``{name: RMSpec}``)
    loads that reward model as the spec says instead of from its saved spec, e.g. a plain causal
    LM as an LM-head PRM.

    With ``out``: writes ``bon.json`` (the table and the run's settings), ``bon.png`` (accuracy
    against N) and ``samples.jsonl`` (responses, correctness, scores). Returns the bon.json dict.
    """
    import torch


    if not problems:
        raise ValueError("run_bon: no problems")
    if temperature <= 0:
        raise ValueError("run_bon: best-of-N needs temperature > 0 (greedy samples are identical)")
    check_sample_count(len(problems), max_n, max_new_tokens)   # before loading anything
    model, tok = load_model_and_tokenizer(policy_path, device=device)
    prompt_fn = prompt_fn or default_prompt
    batch = generate_rollouts(model, tok, [prompt_fn(p) for p in problems],
                              SamplingConfig(n=max_n, temperature=temperature, top_p=top_p,
                                             max_new_tokens=max_new_tokens, batch_size=batch_size),
                              seed=seed, compute_logprobs=False)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    samples = [batch.texts[i * max_n:(i + 1) * max_n] for i in range(len(problems))]

    flat_q = [p.question for p in problems for _ in range(max_n)]
    flat_steps = [split_steps(t, step_split) for t in batch.texts]
    flat_scores: dict[str, list[float]] = {}
    votes: list[str] = []
    for name, path in rm_paths.items():
        rm = load_reward_model(path, device=device, spec=(rm_specs or {}).get(name))
        got = score_samples(rm, flat_q, flat_steps, name, aggregations, rm_batch_size)
        flat_scores.update(got)
        if weighted_votes and rm.kind in ("orm", "prm"):
            votes += list(got)
        del rm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    scores = {k: [v[i * max_n:(i + 1) * max_n] for i in range(len(problems))]
              for k, v in flat_scores.items()}

    grader = Grader(style)
    table = best_of_n(problems, samples, scores, ns, style, n_trials, seed, grader, votes)
    correct = [[grader(s, p.answer)[1] for s in samples[i]] for i, p in enumerate(problems)]
    flat_ok = [int(x) for row in correct for x in row]
    separation = {k: {"within_problem_auroc": within_problem_auroc(correct, v)[0],
                      "pooled_auroc": auroc(np.nan_to_num(np.asarray(v, float).ravel(), nan=-1e30,
                                                          neginf=-1e30), flat_ok)}
                  for k, v in scores.items()}
    result = {"table": table, "auroc": separation, "ns": sorted(next(iter(table.values()))), "max_n": max_n,
              "n_problems": len(problems), "n_trials": n_trials, "seed": seed, "style": style,
              "temperature": temperature, "policy": str(policy_path),
              "reward_models": {k: str(v) for k, v in rm_paths.items()}}
    if out is not None:

        out_dir = Path(out)
        write_jsonl(out_dir / "samples.jsonl", (
            {"id": p.id, "gold": p.answer, "responses": samples[i],
             "correct": correct[i],
             "scores": {k: [x if np.isfinite(x) else None for x in v[i]] for k, v in scores.items()}}
            for i, p in enumerate(problems)))
        write_json(out_dir / "bon.json", result)
        plot_bon(table, out_dir / "bon.png", title=f"best-of-N ({len(problems)} problems)")
    return result


def bon_table(table: Mapping[str, Mapping[int, float]]):
    """A rich Table of a best-of-N table: one row per method, one column per N."""
    from rich.table import Table

    ns = sorted({int(n) for by_n in table.values() for n in by_n})
    t = Table(title="best-of-N accuracy")
    t.add_column("method")
    for n in ns:
        t.add_column(f"N={n}", justify="right")
    for method, by_n in table.items():
        t.add_row(method, *(f"{by_n.get(n, by_n.get(str(n), float('nan'))):.3f}" for n in ns))
    return t

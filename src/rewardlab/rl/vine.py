"""Monte-Carlo values of step boundaries for VinePPO (Kazemnejad et al. 2024, "VinePPO: Unlocking
RL Potential for LLM Reasoning through Refined Credit Assignment", arXiv 2410.01679).

For a response with steps s_1..s_K to prompt x, the states are s_0 = x and s_k = x + s_1..s_k.
V̂(s_k) is the mean outcome reward of ``k`` fresh rollouts of the current policy from s_k (the
Math-Shepherd estimate the MC labeller computes, ``rewardlab.reward_models.labeling.MCLabeler``,
here as a value rather than a label); V̂(s_K) is the response's own outcome reward, so no
rollout is needed after the last step. The advantages are then
:func:`rewardlab.rl.advantages.vine_advantages`.

All prefixes of a batch go into ONE :func:`rewardlab.models.sampling.generate_rollouts` call
(n = k), as in the MC labeller; equal prefixes (the prompt, shared by a group's responses, and
equal first steps) are sampled once and share their estimate.

Over several processes (``dist``, DDP or FSDP) the prefixes are de-duplicated over the WHOLE
batch, as one process does: every rank gathers all ranks' responses (one ``all_gather_object``),
builds the same job list, samples its contiguous slice of the jobs (:func:`split_bounds`-style, so
the work is balanced whatever each rank's rows need) with the uniforms those rows get in the
one-process call (``skip_rows``), and the values are gathered again (a second
``all_gather_object``). Two collectives per call, outside any loop whose length varies by rank,
so the ranks stay in lockstep; with the fast sampler the values are the one-process values.
"""

from __future__ import annotations

from typing import Sequence

from rewardlab.grading.grader import Grader
from rewardlab.models.sampling import generate_rollouts, SamplingConfig


def step_prefix(prompt: str, steps: Sequence[str], k: int, separator: str = "\n") -> str:
    """The state after ``k`` steps: the prompt for k = 0, else prompt + steps[:k] joined by
    ``separator`` + ``separator`` (the text the policy continues from)."""
    return prompt if k == 0 else prompt + separator.join(steps[:k]) + separator


def distinct_prefixes(prompts: Sequence[str], steps: Sequence[Sequence[str]], golds: Sequence[str],
                      separator: str = "\n") -> tuple[list[tuple[str, str, str]], list[list[int]]]:
    """The distinct states s_0..s_{K−1} of B responses (one state, s_0, for a response without
    steps): ``jobs`` [(prefix prompt, solution head = steps 1..k + separator, gold)] and, per
    response, the job index of each of its states."""
    slot: dict[tuple[str, str], int] = {}      # (prefix, gold) -> job
    jobs: list[tuple[str, str, str]] = []
    where: list[list[int]] = []
    for p, st, gold in zip(prompts, steps, golds):
        row = []
        for j in range(max(len(st), 1)):
            key = (step_prefix(p, st, j, separator), gold)
            if key not in slot:
                slot[key] = len(jobs)
                jobs.append((key[0], step_prefix("", st, j, separator), gold))
            row.append(slot[key])
        where.append(row)
    return jobs, where


def mc_step_values(model, tokenizer, prompts: Sequence[str], steps: Sequence[Sequence[str]],
                   golds: Sequence[str], outcomes: Sequence[float], k: int,
                   sampling: SamplingConfig, seed: int | None = None, style: str = "gsm8k",
                   separator: str = "\n", correct_reward: float = 1.0,
                   incorrect_reward: float = 0.0, dist=None) -> list[list[float]]:
    """V̂ at every step boundary of B responses: B lists [V̂(s_0), …, V̂(s_{K−1}), R] (K + 1
    values; a response without steps gets [V̂(s_0), R], one step).

    prompts: the B responses' prompts (the policy's own prompt text); steps: their step texts
    (``rewardlab.data.steps.step_texts``); golds: reference answers; outcomes: each response's
    own outcome reward R. A rollout from s_k is graded on the full solution (steps 1..k +
    completion) and scores ``correct_reward`` or ``incorrect_reward``; V̂ is their mean over
    ``k`` rollouts sampled with ``sampling`` (its ``n`` is replaced by ``k``).

    ``dist`` (:class:`rewardlab.training.distributed.Dist`, optional): these B responses are this
    rank's rows of a batch spread over ranks in rank order; every rank must call this (two
    collectives, see the module docstring), and under FSDP from inside ``Dist.gathered(model)``."""
    if k < 1:
        raise ValueError(f"mc_step_values: k must be >= 1, got {k}")
    if not (len(steps) == len(golds) == len(outcomes) == len(prompts)):
        raise ValueError("mc_step_values: prompts, steps, golds and outcomes must have one entry "
                         "per response")
    active = dist is not None and dist.active
    first = 0   # this rank's first response in the whole batch
    if active:   # the whole batch's responses, in rank order (= the one-process order)
        parts = dist.gather_objects((list(prompts), [list(s) for s in steps], list(golds)))
        first = sum(len(p[0]) for p in parts[:dist.rank])
        prompts = [x for p in parts for x in p[0]]
        steps = [x for p in parts for x in p[1]]
        golds = [x for p in parts for x in p[2]]
    jobs, where = distinct_prefixes(prompts, steps, golds, separator)
    lo, hi = dist.bounds(len(jobs)) if active else (0, len(jobs))
    value = job_values(model, tokenizer, jobs[lo:hi], k, sampling, seed, style, correct_reward,
                       incorrect_reward, skip_rows=lo * k)
    if active:
        value = [v for part in dist.gather_objects(value) for v in part]
    where = where[first:first + len(outcomes)]
    return [[value[s] for s in row] + [float(R)] for row, R in zip(where, outcomes)]


def job_values(model, tokenizer, jobs: Sequence[tuple[str, str, str]], k: int,
               sampling: SamplingConfig, seed: int | None = None, style: str = "gsm8k",
               correct_reward: float = 1.0, incorrect_reward: float = 0.0,
               skip_rows: int = 0) -> list[float]:
    """V̂ of each job (prefix prompt, solution head, gold) of :func:`distinct_prefixes`: the mean
    reward of ``k`` rollouts from the prefix, all jobs in ONE
    :func:`rewardlab.models.sampling.generate_rollouts` call (n = k). ``skip_rows``: the jobs are
    rows ``skip_rows / k …`` of a longer job list sampled with the same ``seed`` (a rank's slice);
    the fast sampler then draws those rows' uniforms. No jobs: [] (no call)."""
    if not jobs:
        return []
    cfg = SamplingConfig(n=k, temperature=sampling.temperature, top_p=sampling.top_p,
                         max_new_tokens=sampling.max_new_tokens, batch_size=sampling.batch_size,
                         engine=sampling.engine)
    kw = {"skip_rows": skip_rows} if skip_rows else {}
    batch = generate_rollouts(model, tokenizer, [j[0] for j in jobs], cfg, seed=seed,
                              compute_logprobs=False, **kw)
    grader = Grader(style)
    value = []
    for r, (_, head, gold) in enumerate(jobs):
        ok = [grader(head + c, gold)[1] for c in batch.texts[r * k:(r + 1) * k]]   # prompt-major
        value.append(sum(correct_reward if o else incorrect_reward for o in ok) / k)
    return value

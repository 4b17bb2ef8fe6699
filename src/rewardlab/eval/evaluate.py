"""Policy evaluation: greedy accuracy, maj@k, unbiased pass@k, and the testbed's hacking
diagnostics.

Generation is two batched calls at most (one greedy, one with ``k`` samples per problem); grading
is a pure function of the responses (:func:`evaluate_responses`), so it is tested without a model.
"""

from __future__ import annotations


from collections import Counter
from typing import Callable, Sequence

from rewardlab.data.problem import Problem
from rewardlab.data.prompts import default_prompt
from rewardlab.data.testbed import diagnostics
from rewardlab.grading.grader import Grader
from rewardlab.models.sampling import check_sample_count, generate_rollouts, SamplingConfig


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021, Codex):

        pass@k = 1 − C(n−c, k) / C(n, k) = 1 − ∏_{i=n−c+1}^{n} (1 − k/i)

    The product form never builds a large binomial coefficient.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer (compared after stripping whitespace); None answers are ignored,
    a tie goes to the answer that occurs first. None when no answer is given."""
    keys = [a.strip() for a in answers if a is not None and a.strip()]
    if not keys:
        return None
    counts = Counter(keys)
    best = max(counts.values())
    return next(a for a in keys if counts[a] == best)


def _is_testbed(problems: Sequence[Problem], flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return bool(problems) and all(p.source == "testbed" for p in problems)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def evaluate_responses(problems: Sequence[Problem], responses: Sequence[str] | None,
                       samples: Sequence[Sequence[str]] | None = None, style: str = "gsm8k",
                       response_tokens: Sequence[int] | None = None,
                       testbed_diagnostics: bool | None = None,
                       grader: Grader | None = None) -> tuple[dict, list[dict]]:
    """Grade given responses: the pure half of :func:`evaluate_policy`.

    ``responses``: one greedy response per problem (or None); ``samples``: k sampled responses
    per problem (or None). Returns ``(summary, rows)``; see :func:`evaluate_policy`.
    """
    if responses is None and samples is None:
        raise ValueError("evaluate: nothing to grade (no greedy responses and no samples)")
    if responses is not None and len(responses) != len(problems):
        raise ValueError(f"evaluate: {len(responses)} responses for {len(problems)} problems")
    if samples is not None and len(samples) != len(problems):
        raise ValueError(f"evaluate: {len(samples)} sample lists for {len(problems)} problems")
    grader = grader or Grader(style)
    testbed = _is_testbed(problems, testbed_diagnostics)
    summary: dict = {"n_problems": len(problems), "style": style}
    rows: list[dict] = []
    for i, p in enumerate(problems):
        row = {"id": p.id, "question": p.question, "gold": p.answer}
        if responses is not None:
            pred, ok = grader(responses[i], p.answer)
            row.update(response=responses[i], pred=pred, correct=ok)
            if response_tokens is not None:
                row["response_tokens"] = int(response_tokens[i])
            if testbed:
                d = diagnostics(p.question, responses[i], p.answer)
                row.update({k: d[k] for k in ("n_steps", "repeated_frac", "unnecessary_frac",
                                              "step_acc")})
        if samples is not None:
            graded = [grader(s, p.answer) for s in samples[i]]
            answers = [a for a, _ in graded]
            maj = majority_vote(answers)
            row.update(sample_answers=answers, sample_correct=[ok for _, ok in graded],
                       n_correct=sum(ok for _, ok in graded), maj_pred=maj,
                       maj_correct=grader.equiv(maj, p.answer))
            if testbed:   # the same diagnostics over the samples: the policy's distribution
                ds = [diagnostics(p.question, s, p.answer) for s in samples[i]]
                row.update({f"sample_{k}": _mean([d[k] for d in ds])
                            for k in ("n_steps", "repeated_frac", "unnecessary_frac")})
        rows.append(row)
    if responses is not None:
        summary["accuracy"] = _mean([r["correct"] for r in rows])
        if response_tokens is not None:
            summary["mean_length"] = _mean([r["response_tokens"] for r in rows])
        if testbed:
            summary["mean_steps"] = _mean([r["n_steps"] for r in rows])
            for key in ("repeated_frac", "unnecessary_frac", "step_acc"):
                summary[key] = _mean([r[key] for r in rows])
    if samples is not None and problems:
        k = min(len(s) for s in samples)
        if k < 1:
            raise ValueError("evaluate: every problem needs at least one sample")
        summary["k"] = k
        summary["maj@k"] = _mean([r["maj_correct"] for r in rows])
        if testbed:
            summary["sample_mean_steps"] = _mean([r["sample_n_steps"] for r in rows])
            for key in ("repeated_frac", "unnecessary_frac"):
                summary[f"sample_{key}"] = _mean([r[f"sample_{key}"] for r in rows])
        for j in range(1, k + 1):
            summary[f"pass@{j}"] = _mean([pass_at_k(len(r["sample_correct"]), r["n_correct"], j)
                                          for r in rows])
    return summary, rows


def evaluate_policy(model, tokenizer, problems: Sequence[Problem], style: str = "gsm8k",
                    greedy: bool = True, k: int = 0, temperature: float = 1.0,
                    max_new_tokens: int = 48, batch_size: int = 256, seed: int = 0,
                    prompt_fn: Callable[[Problem], str] | None = None,
                    testbed_diagnostics: bool | None = None,
                    top_p: float = 1.0) -> tuple[dict, list[dict]]:
    """Evaluate a policy on ``problems``.

    Greedy accuracy (one batched temperature-0 call); with ``k > 0`` also ``k`` samples per
    problem (one batched call) for maj@k and unbiased pass@1..pass@k (:func:`pass_at_k`).
    On testbed problems (``source == "testbed"``, or ``testbed_diagnostics=True``) the summary
    adds the greedy responses' mean steps, repeated- and unnecessary-step fractions and step
    accuracy (:func:`rewardlab.data.testbed.diagnostics`).

    Summary keys: ``n_problems, style, accuracy, mean_length`` (greedy response tokens, EOS
    included), testbed ``mean_steps, repeated_frac, unnecessary_frac, step_acc``; with samples
    ``k, maj@k, pass@1 .. pass@k`` and, on the testbed, the samples' ``sample_mean_steps,
    sample_repeated_frac, sample_unnecessary_frac`` (the policy's distribution, not its mode).

    Returns ``(summary, rows)``; a row is ``{id, question, gold, response, pred, correct,
    response_tokens, [n_steps, repeated_frac, unnecessary_frac, step_acc],
    [sample_answers, sample_correct, n_correct, maj_pred, maj_correct]}``.
    """

    if not greedy and k <= 0:
        raise ValueError("evaluate: greedy=False needs k > 0 samples")
    if k > 0 and temperature <= 0:
        raise ValueError("evaluate: sampling k responses needs temperature > 0")
    if k > 0:   # before the greedy pass: a k that cannot finish fails at once
        check_sample_count(len(problems), k, max_new_tokens)
    prompt_fn = prompt_fn or default_prompt
    prompts = [prompt_fn(p) for p in problems]
    responses = lengths = samples = None
    if problems and greedy:
        batch = generate_rollouts(model, tokenizer, prompts,
                                  SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                                                 batch_size=batch_size),
                                  seed=seed, compute_logprobs=False)
        responses = list(batch.texts)
        lengths = batch.response_mask.sum(1).tolist()
    if problems and k > 0:
        batch = generate_rollouts(model, tokenizer, prompts,
                                  SamplingConfig(n=k, temperature=temperature, top_p=top_p,
                                                 max_new_tokens=max_new_tokens,
                                                 batch_size=batch_size),
                                  seed=seed, compute_logprobs=False)
        samples = [batch.texts[i * k:(i + 1) * k] for i in range(len(problems))]
    if not problems:
        return {"n_problems": 0, "style": style}, []
    return evaluate_responses(problems, responses, samples, style=style, response_tokens=lengths,
                              testbed_diagnostics=testbed_diagnostics)

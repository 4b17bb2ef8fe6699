"""Reward-model training data: sample the policy, label the steps, build preference pairs.

A reward-model row (one sampled response)::

    {"id": problem id, "sample": j, "question", "gold", "response", "answer": extracted answer,
     "steps": [str], "step_labels": [float], "outcome": 1 if the answer is correct else 0}

``steps`` are the response's non-empty lines (the final ``#### x`` line is a step);
``step_labels`` come from a labeller of :mod:`rewardlab.reward_models.labeling`. Rows whose response
has no step at all are dropped (nothing to score).

From rows: Bradley–Terry rows ``{"question", "chosen": [steps], "rejected": [steps]}`` (a correct
and an incorrect sample of one problem, :func:`make_pairs`) and step-preference rows
``{"question", "prefix": [steps], "chosen_step", "rejected_step"}`` (two samples that share a
prefix and whose next steps have different labels, :func:`make_step_pairs`).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections import defaultdict
from typing import Callable, Sequence

from rewardlab.data.problem import Problem
from rewardlab.data.prompts import default_prompt
from rewardlab.data.steps import split_steps
from rewardlab.grading.grader import Grader
from rewardlab.io import DataError, iter_jsonl
from rewardlab.models.sampling import generate_rollouts, SamplingConfig
from rewardlab.reward_models.labeling import Labeler


SAMPLE_FIELDS = {"question": str, "gold": str, "steps": list}


def sample_responses(model, tokenizer, problems: Sequence[Problem], n_per_problem: int,
                     sampling: SamplingConfig | None = None, seed: int = 0, style: str = "gsm8k",
                     prompt_fn: Callable[[Problem], str] | None = None,
                     step_split: str = "lines") -> list[dict]:
    """``n_per_problem`` sampled responses per problem (one ``generate_rollouts`` call), graded;
    rows as in the module docstring, without ``step_labels``. ``step_split``: how a response
    splits into steps (:func:`rewardlab.data.datasets.split_steps`; "blank" for MATH)."""

    cfg = dataclasses.replace(sampling or SamplingConfig(), n=n_per_problem)
    prompt_fn = prompt_fn or default_prompt
    if not problems:
        return []
    batch = generate_rollouts(model, tokenizer, [prompt_fn(p) for p in problems], cfg, seed=seed,
                              compute_logprobs=False)
    grader = Grader(style)
    rows = []
    for r, text in enumerate(batch.texts):
        p = problems[batch.prompt_index[r]]
        steps = split_steps(text, step_split)
        if not steps:
            continue
        answer, ok = grader(text, p.answer)
        rows.append({"id": p.id, "sample": r % cfg.n, "question": p.question, "gold": p.answer,
                     "response": text, "answer": answer, "steps": steps, "outcome": int(ok)})
    return rows


def label_rows(rows: Sequence[dict], labeler: Labeler) -> list[dict]:
    """Copies of ``rows`` with ``step_labels`` from ``labeler`` (one batched call)."""
    labels = labeler.label_batch([(r["question"], r["steps"], r["gold"]) for r in rows])
    out = []
    for r, lab in zip(rows, labels):
        if len(lab) != len(r["steps"]):
            raise ValueError(f"labeller {labeler.name!r} gave {len(lab)} labels for "
                             f"{len(r['steps'])} steps")
        out.append({**r, "step_labels": [float(x) for x in lab]})
    return out


def sample_and_label(model, tokenizer, problems: Sequence[Problem], n_per_problem: int,
                     labeler: Labeler, sampling: SamplingConfig | None = None, seed: int = 0,
                     style: str = "gsm8k", prompt_fn: Callable[[Problem], str] | None = None,
                     step_split: str = "lines") -> list[dict]:
    """Reward-model dataset rows: :func:`sample_responses` then :func:`label_rows`."""
    rows = sample_responses(model, tokenizer, problems, n_per_problem, sampling, seed, style,
                            prompt_fn, step_split)
    return label_rows(rows, labeler)


def read_samples(path: str | os.PathLike, need_labels: bool = False) -> list[dict]:
    """Read sample rows (``question``, ``gold``, ``steps``; ``step_labels`` when asked), checking
    every row; a bad row raises :class:`DataError` naming the file and line."""
    types = dict(SAMPLE_FIELDS)
    required = list(SAMPLE_FIELDS)
    if need_labels:
        types["step_labels"] = list
        required.append("step_labels")
    rows = []
    for line, row in iter_jsonl(path, required=required, types=types):
        if not row["steps"] or not all(isinstance(s, str) and s.strip() for s in row["steps"]):
            raise DataError(path, "expected a non-empty list of non-empty strings", line, "steps")
        if need_labels:
            labels = row["step_labels"]
            if len(labels) != len(row["steps"]) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in labels):
                raise DataError(path, "expected one number per step", line, "step_labels")
        if "outcome" not in row:
            row["outcome"] = None
        rows.append(row)
    return rows


def _group(rows: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[str(r.get("id", r["question"]))].append(r)
    return groups


def make_pairs(rows: Sequence[dict], max_pairs_per_problem: int | None = None,
               seed: int = 0) -> list[dict]:
    """Bradley–Terry rows: every (correct, incorrect) pair of samples of one problem (by
    ``outcome``), duplicates dropped; at most ``max_pairs_per_problem`` per problem, drawn with
    ``seed``."""
    rng = random.Random(seed)
    out = []
    for group in _group(rows).values():
        good = _unique([r["steps"] for r in group if r["outcome"] == 1])
        bad = _unique([r["steps"] for r in group if r["outcome"] == 0])
        pairs = [(g, b) for g in good for b in bad]
        if max_pairs_per_problem is not None and len(pairs) > max_pairs_per_problem:
            pairs = rng.sample(pairs, max_pairs_per_problem)
        out += [{"question": group[0]["question"], "chosen": list(g), "rejected": list(b)}
                for g, b in pairs]
    return out


def make_step_pairs(rows: Sequence[dict], max_pairs_per_prefix: int | None = None,
                    seed: int = 0) -> list[dict]:
    """Step-preference rows: for two samples of one problem that share the prefix s_1..s_{k-1}
    and continue with different steps of different labels, the higher-labelled next step is
    ``chosen``. A (prefix, step) seen several times gets its mean label."""
    rng = random.Random(seed)
    out = []
    for group in _group(rows).values():
        # prefix -> next step -> labels seen
        nexts: dict[tuple[str, ...], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in group:
            for k, (step, label) in enumerate(zip(r["steps"], r["step_labels"])):
                nexts[tuple(r["steps"][:k])][step].append(float(label))
        for prefix, by_step in nexts.items():
            means = [(s, sum(v) / len(v)) for s, v in by_step.items()]
            pairs = [(a, b) for a, la in means for b, lb in means if la > lb]
            if max_pairs_per_prefix is not None and len(pairs) > max_pairs_per_prefix:
                pairs = rng.sample(pairs, max_pairs_per_prefix)
            out += [{"question": group[0]["question"], "prefix": list(prefix), "chosen_step": a,
                     "rejected_step": b} for a, b in pairs]
    return out


def _unique(seqs: list[list[str]]) -> list[tuple[str, ...]]:
    return list(dict.fromkeys(tuple(s) for s in seqs))

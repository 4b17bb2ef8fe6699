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

Covering the policy's tail (what best-of-N at large N surfaces): :func:`dedupe_rows` drops
repeated (problem, steps) rows; :func:`corrupt_rows` adds copies of sampled solutions with one
equation deliberately broken (a wrong result, or a right result from a wrong operand; later steps
carry the wrong value on, as a policy would) and :func:`truncate_rows` adds responses cut off
mid-text (malformed last step, usually no answer); :func:`repair_rows` adds copies whose first
wrong equation gets its right result (positives where the policy is mostly wrong). All are
relabelled by the labeller (the
testbed oracle labels them exactly) and graded again, so they enter as labelled negatives
(and as positives wherever a step is still right). :func:`augment_rows` does all three.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
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


_EQ_RE = re.compile(r"^(\s*)(-?\d+)(\s*)([+\-*])(\s*)(-?\d+)(\s*=\s*)(-?\d+)(\s*)$")
_ANS_RE = re.compile(r"^(\s*####\s*)(-?\d+)(\s*)$")


def _calc(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def dedupe_rows(rows: Sequence[dict]) -> list[dict]:
    """``rows`` without repeats: the first row of each (problem id or question, steps)."""
    seen: set = set()
    out = []
    for r in rows:
        key = (str(r.get("id", r["question"])), tuple(r["steps"]))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def corrupt_steps(steps: Sequence[str], rng: random.Random) -> list[str] | None:
    """A copy of ``steps`` with one equation ``a op b = c`` (op in + - *) broken, or None when
    no step is an equation.

    Half the time the result is wrong (c → c + δ, δ ∈ ±{1, 2, 3}, kept ≥ 0); otherwise the
    second operand is changed (b → b + δ) and the result recomputed from it (right arithmetic on
    a number the problem never gave). Later equations whose first operand is the old result use
    the new value (recomputed), and an answer line equal to the old result follows it."""
    eqs = [k for k, s in enumerate(steps) if _EQ_RE.match(s)]
    if not eqs:
        return None
    k = rng.choice(eqs)
    m = _EQ_RE.match(steps[k])
    g = list(m.groups())
    a, op, b, c = int(g[1]), g[3], int(g[5]), int(g[7])
    delta = rng.choice([-3, -2, -1, 1, 2, 3])
    if rng.random() < 0.5 or b + delta < 0:
        new_c = c + delta if c + delta >= 0 else c + abs(delta)
    else:
        b = b + delta
        new_c = _calc(a, op, b)
        g[5] = str(b)
    g[7] = str(new_c)
    return _carry(steps, k, "".join(g), c, new_c)


def _carry(steps: Sequence[str], k: int, step_k: str, old: int, new: int) -> list[str]:
    """``steps`` with step k replaced by ``step_k`` (whose result changed from ``old`` to
    ``new``): later equations whose first operand is the old result take the new one (and are
    recomputed), an answer line equal to the old result follows it."""
    out = list(steps)
    out[k] = step_k
    for j in range(k + 1, len(out)):
        mj, aj = _EQ_RE.match(out[j]), _ANS_RE.match(out[j])
        if mj and int(mj.group(2)) == old:
            gj = list(mj.groups())
            gj[1] = str(new)
            nc = _calc(new, gj[3], int(gj[5]))
            old, new = int(gj[7]), nc
            gj[7] = str(nc)
            out[j] = "".join(gj)
        elif aj and int(aj.group(2)) == old:
            out[j] = aj.group(1) + str(new) + aj.group(3)
    return out


def repair_steps(steps: Sequence[str], rng: random.Random | None = None) -> list[str] | None:
    """A copy of ``steps`` whose first equation with wrong arithmetic gets the right result
    (carried on as in :func:`corrupt_steps`), or None when every equation's arithmetic is right.
    With :func:`corrupt_steps` this makes minimal pairs — the same step with a right and a wrong
    result — where the policy's own samples are mostly wrong (e.g. subtraction with a borrow)."""
    for k, st in enumerate(steps):
        m = _EQ_RE.match(st)
        if not m:
            continue
        g = list(m.groups())
        a, op, b, c = int(g[1]), g[3], int(g[5]), int(g[7])
        right = _calc(a, op, b)
        if right != c and right >= 0:
            g[7] = str(right)
            return _carry(steps, k, "".join(g), c, right)
    return None


def shorten_steps(steps: Sequence[str], rng: random.Random | None = None) -> list[str] | None:
    """A copy of ``steps`` that stops one operation early: its last equation dropped and its
    answer line set to the equation before's result — a chain of right steps whose answer is
    wrong because an operation of the question is missing, the error that only the answer line
    shows. None unless the steps end in an answer line equal to the last equation's result,
    with at least two equations."""
    eqs = [k for k, s in enumerate(steps) if _EQ_RE.match(s)]
    ans = _ANS_RE.match(steps[-1]) if steps else None
    if ans is None or len(eqs) < 2 or int(ans.group(2)) != int(_EQ_RE.match(steps[eqs[-1]]).group(8)):
        return None
    prev = _EQ_RE.match(steps[eqs[-2]]).group(8)
    return [s for k, s in enumerate(steps[:-1]) if k != eqs[-1]] + [ans.group(1) + prev + ans.group(3)]


def truncate_steps(steps: Sequence[str], rng: random.Random) -> list[str] | None:
    """The steps of ``"\n".join(steps)`` cut at a random character inside it (a response that
    stopped mid-text: its last step is usually malformed, its answer missing), or None when
    nothing is left."""
    text = "\n".join(steps)
    if len(text) < 2:
        return None
    cut = split_steps(text[:rng.randrange(1, len(text))], "lines")
    return cut or None


def _relabel(rows: list[dict], labeler: Labeler, style: str) -> list[dict]:
    if not rows:
        return []
    grader = Grader(style)
    out = label_rows(rows, labeler)
    for r in out:
        r["answer"], ok = grader("\n".join(r["steps"]), r["gold"])
        r["outcome"] = int(ok)
    return out


def _derived(rows: Sequence[dict], fn, rate: float, labeler: Labeler, seed: int, style: str,
             kind: str) -> list[dict]:
    if rate < 0:
        raise ValueError(f"{kind}: rate must be >= 0, got {rate}")
    rng = random.Random(seed)
    made = []
    for r in rows:
        # rate 1.5: one copy of every row, a second copy of half of them
        copies = int(rate) + (rng.random() < rate - int(rate))
        for _ in range(copies):
            steps = fn(r["steps"], rng)
            if steps is not None and steps != list(r["steps"]):
                made.append({"id": r.get("id"), "sample": r.get("sample"), "question": r["question"],
                             "gold": r["gold"], "response": "\n".join(steps), "steps": steps,
                             "augment": kind})
    return _relabel(made, labeler, style)


def corrupt_rows(rows: Sequence[dict], labeler: Labeler, rate: float = 1.0, seed: int = 0,
                 style: str = "gsm8k") -> list[dict]:
    """New labelled rows: :func:`corrupt_steps` of ``rate`` copies per row (a fraction draws
    with ``seed``), relabelled by ``labeler`` and graded (``augment: "corrupt"``)."""
    return _derived(rows, corrupt_steps, rate, labeler, seed, style, "corrupt")


def repair_rows(rows: Sequence[dict], labeler: Labeler, rate: float = 1.0, seed: int = 0,
                style: str = "gsm8k") -> list[dict]:
    """New labelled rows: :func:`repair_steps` of the rows (``rate`` copies per row, at most one
    distinct repair each), relabelled and graded (``augment: "repair"``)."""
    return _derived(rows, repair_steps, min(rate, 1.0), labeler, seed, style, "repair")


def shorten_rows(rows: Sequence[dict], labeler: Labeler, rate: float = 1.0, seed: int = 0,
                 style: str = "gsm8k") -> list[dict]:
    """New labelled rows: :func:`shorten_steps` of the rows (at most one copy each), relabelled
    and graded (``augment: "shorten"``)."""
    return _derived(rows, shorten_steps, min(rate, 1.0), labeler, seed, style, "shorten")


def truncate_rows(rows: Sequence[dict], labeler: Labeler, rate: float = 0.25, seed: int = 0,
                  style: str = "gsm8k") -> list[dict]:
    """New labelled rows: :func:`truncate_steps` of ``rate`` copies per row, relabelled and
    graded (``augment: "truncate"``)."""
    return _derived(rows, truncate_steps, rate, labeler, seed, style, "truncate")


def augment_rows(rows: Sequence[dict], labeler: Labeler, corrupt: float = 0.0,
                 truncate: float = 0.0, seed: int = 0, style: str = "gsm8k",
                 repair: float = 0.0, shorten: float = 0.0) -> list[dict]:
    """Deduplicated ``rows`` plus their repaired, corrupted and truncated copies, and shortened
    copies of the rows and their repairs (deduplicated too, and never a copy of a row already
    there)."""
    base = dedupe_rows(rows)
    extra = repair_rows(base, labeler, repair, seed + 2, style) if repair else []
    extra += shorten_rows(base + extra, labeler, shorten, seed + 3, style) if shorten else []
    extra += corrupt_rows(base, labeler, corrupt, seed, style) if corrupt else []
    extra += truncate_rows(base, labeler, truncate, seed + 1, style) if truncate else []
    return dedupe_rows(base + extra)

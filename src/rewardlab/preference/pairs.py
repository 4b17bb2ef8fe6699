"""Preference data from the policy's own labelled samples, and the reader the trainer uses.

Input: sample rows as ``rewardlab sample`` / ``rewardlab label`` / ``rewardlab score`` write them
(:mod:`rewardlab.reward_models.pipeline`)::

    {"id", "question", "gold", "response", "steps": [str], "outcome": 0|1,
     "step_labels": [float] (label), "score": float, "step_scores": [float] (score)}

Output, one row per pair (rewardlab's own format)::

    {"id", "question", "prefix": [str], "chosen": str, "rejected": str, "kind": "outcome"|"step"}

- ``kind: outcome`` (:func:`outcome_pairs`): chosen = a correct response, rejected = an incorrect
  response to the same problem, ``prefix`` empty. "Correct" is ``outcome == 1`` (the verifier),
  or min(step_labels) / ``score`` above a threshold (the oracle, an MC estimate, a PRM or ORM).
- ``kind: step`` (:func:`step_pairs`, Step-DPO, Lai et al. 2024, arXiv 2406.18629): for a
  sample whose first wrong step is s_k, ``prefix`` = s_1..s_{k-1} (all right), ``rejected`` = s_k
  and ``chosen`` = a right step s'_k of another sample of the same problem with the same prefix.
- Unpaired rows for KTO (:func:`unpaired_rows`): ``{"id", "question", "prefix": [],
  "completion", "label": true|false}``.

The trainer's text for a pair: prompt = the policy's prompt of ``question`` followed by each
prefix step and its separator; completion = ``chosen`` / ``rejected`` followed by EOS (outcome)
or by the step separator (step). TRL's formats are read too (:func:`read_pairs`):
``{"prompt", "chosen", "rejected"}`` and ``{"prompt", "completion", "label"}`` with a string
prompt (used verbatim; EOS appended to completions) or conversational, lists of
``{"role", "content"}`` messages (rendered with the tokenizer's chat template).
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from typing import Sequence

from rewardlab.data.problem import Problem
from rewardlab.data.prompts import default_prompt
from rewardlab.io import DataError, iter_jsonl, write_jsonl

KINDS = ("outcome", "step", "unpaired")
LABEL_FIELDS = ("outcome", "step_labels", "score")
STEP_LABEL_FIELDS = ("step_labels", "step_scores")


def _response(row: dict) -> str:
    text = row.get("response")
    return text if isinstance(text, str) and text.strip() else "\n".join(row["steps"])


def is_correct(row: dict, label: str = "outcome", threshold: float = 0.5) -> bool | None:
    """Whether a sample row counts as correct: ``outcome`` (the verifier's 0/1), the least of its
    ``step_labels`` (every step right) or its ``score`` (ORM/PRM), compared ``> threshold``.
    None when the row has no such value."""
    if label not in LABEL_FIELDS:
        raise ValueError(f"label must be one of {', '.join(LABEL_FIELDS)}, got {label!r}")
    v = row.get(label)
    if v is None:
        return None
    if label == "step_labels":
        v = min(v) if v else None
    return None if v is None else float(v) > threshold


def _groups(rows: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[str(r.get("id") or r["question"])].append(r)
    return groups


def outcome_pairs(rows: Sequence[dict], label: str = "outcome", threshold: float = 0.5,
                  max_per_problem: int | None = None, seed: int = 0) -> list[dict]:
    """Every (correct, incorrect) pair of distinct responses to one problem (rows with no
    ``label`` value skipped, duplicate responses counted once); at most ``max_per_problem`` per
    problem, drawn with ``seed``. Problems appear in first-seen order."""
    rng = random.Random(seed)
    out = []
    for pid, group in _groups(rows).items():
        good = list(dict.fromkeys(_response(r) for r in group if is_correct(r, label, threshold) is True))
        bad = list(dict.fromkeys(_response(r) for r in group if is_correct(r, label, threshold) is False))
        pairs = [(g, b) for g in good for b in bad if g != b]
        if max_per_problem is not None and len(pairs) > max_per_problem:
            pairs = rng.sample(pairs, max_per_problem)
        out += [{"id": pid, "question": group[0]["question"], "prefix": [], "chosen": g,
                 "rejected": b, "kind": "outcome"} for g, b in pairs]
    return out


def first_error(labels: Sequence[float], threshold: float = 0.5) -> int | None:
    """Index k of the first step whose label is ≤ ``threshold`` (None: every step is right)."""
    return next((k for k, x in enumerate(labels) if float(x) <= threshold), None)


def step_pairs(rows: Sequence[dict], step_label: str = "step_labels", threshold: float = 0.5,
               max_per_problem: int | None = None, seed: int = 0) -> list[dict]:
    """Step-DPO pairs (Lai et al. 2024): for each sample with a first wrong step k (its label
    ≤ ``threshold``, every earlier one above), the right k-th steps of the problem's samples
    that share its prefix s_1..s_{k-1} are ``chosen`` against its s_k. Deduplicated on
    (prefix, chosen, rejected); at most ``max_per_problem`` per problem, drawn with ``seed``."""
    if step_label not in STEP_LABEL_FIELDS:
        raise ValueError(f"step_label must be one of {', '.join(STEP_LABEL_FIELDS)}, got {step_label!r}")
    rng = random.Random(seed)
    out = []
    for pid, group in _groups(rows).items():
        right: dict[tuple[str, ...], list[str]] = defaultdict(list)   # prefix -> right next steps
        wrong: list[tuple[tuple[str, ...], str]] = []
        for r in group:
            labels = r.get(step_label)
            if not labels:
                continue
            k = first_error(labels, threshold)
            last = len(r["steps"]) if k is None else k
            for j in range(last):                      # every right step, under its right prefix
                right[tuple(r["steps"][:j])].append(r["steps"][j])
            if k is not None:
                wrong.append((tuple(r["steps"][:k]), r["steps"][k]))
        pairs = list(dict.fromkeys((prefix, c, w) for prefix, w in wrong
                                   for c in dict.fromkeys(right.get(prefix, [])) if c != w))
        if max_per_problem is not None and len(pairs) > max_per_problem:
            pairs = rng.sample(pairs, max_per_problem)
        out += [{"id": pid, "question": group[0]["question"], "prefix": list(prefix), "chosen": c,
                 "rejected": w, "kind": "step"} for prefix, c, w in pairs]
    return out


def unpaired_rows(rows: Sequence[dict], label: str = "outcome", threshold: float = 0.5) -> list[dict]:
    """KTO rows: each distinct response of a problem once, ``label`` True when correct."""
    out, seen = [], set()
    for r in rows:
        ok = is_correct(r, label, threshold)
        key = (str(r.get("id") or r["question"]), _response(r))
        if ok is None or key in seen:
            continue
        seen.add(key)
        out.append({"id": key[0], "question": r["question"], "prefix": [], "completion": key[1],
                    "label": ok})
    return out


# ---------------------------------------------------------------------------------------------
# Reading pair files

PAIR_TYPES = {"id": (str, int), "question": str, "prompt": (str, list), "prefix": list,
              "chosen": (str, list), "rejected": (str, list), "completion": (str, list),
              "label": bool, "kind": str}


def _check_text(path, line: int, field: str, value) -> None:
    """A completion or prompt: a non-empty string, or a non-empty list of chat messages
    ``{"role": str, "content": str}`` (TRL's conversational format) whose contents are not all empty."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(path, "is empty", line, field)
        return
    if not value or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                            and isinstance(m.get("content"), str) for m in value):
        raise DataError(path, "expected a string or a non-empty list of messages "
                        '{"role": ..., "content": ...}', line, field)
    if not any(m["content"].strip() for m in value):
        raise DataError(path, "is empty", line, field)


def read_pairs(path: str | os.PathLike) -> list[dict]:
    """Read and check a preference file: pairs (rewardlab's format; TRL's prompt/chosen/rejected,
    standard or conversational) or unpaired KTO rows (rewardlab's question/completion/label; TRL's
    prompt/completion/label).

    Raises :class:`~rewardlab.io.DataError` naming the file, line and field for: malformed JSON,
    a missing ``chosen`` / ``rejected`` (``completion`` / ``label``) / ``question`` (or
    ``prompt``), an empty completion, identical chosen and rejected, a ``prefix`` that is not a
    list of strings, an unknown ``kind``, a file mixing pairs and unpaired rows, a conversational
    row with a prefix, and an empty file. Returns the rows with ``prefix``, ``kind`` (outcome |
    step | unpaired), ``chat`` (conversational) and ``line`` filled in."""
    rows = []
    for line, row in iter_jsonl(path, types=PAIR_TYPES):
        unpaired = "completion" in row or "label" in row
        need = ("completion", "label") if unpaired else ("chosen", "rejected")
        for f in need:
            if f not in row:
                raise DataError(path, "missing required field", line, f)
        if "question" not in row and "prompt" not in row:
            raise DataError(path, "missing required field (a pair needs a question, or a prompt "
                            "in TRL's format)", line, "question")
        if "prompt" in row:
            _check_text(path, line, "prompt", row["prompt"])
        for f in need[:1] if unpaired else need:
            _check_text(path, line, f, row[f])
        chat = isinstance(row.get("prompt"), list)
        if not unpaired and row["chosen"] == row["rejected"]:
            raise DataError(path, "chosen and rejected are identical", line, "rejected")
        prefix = row.get("prefix") or []
        if not all(isinstance(s, str) for s in prefix):
            raise DataError(path, "expected a list of strings", line, "prefix")
        if chat and prefix:
            raise DataError(path, "a conversational row takes no prefix (put it in the prompt)",
                            line, "prefix")
        texts = [row[f] for f in (need[:1] if unpaired else need)]
        if any(isinstance(t, list) != chat for t in texts):
            raise DataError(path, "prompt and completions must all be strings or all be message "
                            "lists", line, need[0])
        kind = "unpaired" if unpaired else (row.get("kind") or ("step" if prefix else "outcome"))
        if kind not in KINDS or (kind == "unpaired") != unpaired:
            allowed = "unpaired" if unpaired else "outcome, step"
            raise DataError(path, f"expected {allowed}, got {kind!r}", line, "kind")
        if unpaired and not isinstance(row["label"], bool):
            raise DataError(path, "expected true or false", line, "label")
        if rows and (kind == "unpaired") != (rows[0]["kind"] == "unpaired"):
            raise DataError(path, "mixes pairs and unpaired (KTO) rows; keep them in separate files",
                            line)
        rows.append({**row, "prefix": prefix, "kind": kind, "chat": chat, "line": line})
    return rows


# ---------------------------------------------------------------------------------------------
# Sample file → pair file

PAIR_KINDS = ("outcome", "step", "unpaired")


def build_pairs(rows: Sequence[dict], kind: str = "outcome", label: str = "outcome",
                step_label: str = "step_labels", threshold: float = 0.5,
                max_per_problem: int | None = None, seed: int = 0) -> list[dict]:
    """:func:`outcome_pairs`, :func:`step_pairs` or :func:`unpaired_rows` of sample rows."""
    if kind == "outcome":
        return outcome_pairs(rows, label, threshold, max_per_problem, seed)
    if kind == "step":
        return step_pairs(rows, step_label, threshold, max_per_problem, seed)
    if kind == "unpaired":
        return unpaired_rows(rows, label, threshold)
    raise ValueError(f"kind must be one of {', '.join(PAIR_KINDS)}, got {kind!r}")


def read_labelled_samples(path: str | os.PathLike, kind: str = "outcome", label: str = "outcome",
                          step_label: str = "step_labels") -> list[dict]:
    """Sample rows checked for what ``kind`` reads: ``question``, ``steps`` (non-empty strings),
    and the label field (``outcome`` 0/1, ``score`` a number, ``step_labels`` / ``step_scores``
    one number per step). A bad row raises :class:`DataError` naming the file, line and field."""
    need = step_label if kind == "step" else label
    types = {"question": str, "steps": list, "response": str, "id": (str, int),
             "outcome": (int, float), "score": (int, float), "step_labels": list, "step_scores": list}
    rows = []
    for line, row in iter_jsonl(path, required=("question", "steps", need), types=types):
        steps = row["steps"]
        if not steps or not all(isinstance(s, str) and s.strip() for s in steps):
            raise DataError(path, "expected a non-empty list of non-empty strings", line, "steps")
        if need in ("step_labels", "step_scores"):
            v = row[need]
            if len(v) != len(steps) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                               for x in v):
                raise DataError(path, f"expected one number per step ({len(steps)})", line, need)
        elif row[need] is None:
            raise DataError(path, "is null", line, need)
        rows.append({**row, "_line": line})
    return rows


FORMATS = ("rewardlab", "trl")


def to_trl(rows: Sequence[dict], separator: str = "\n") -> list[dict]:
    """rewardlab rows in TRL's standard format: ``{"prompt", "chosen", "rejected"}`` (pairs) or
    ``{"prompt", "completion", "label"}`` (unpaired), the prompt being the default prompt
    (question + newline) followed by the prefix steps. Step pairs keep ``"kind": "step"`` so that
    rewardlab ends their completions with the separator instead of EOS (TRL ignores the key)."""
    out = []
    for r in rows:
        prompt = default_prompt(Problem(id=str(r.get("id", "")), question=r["question"], solution="",
                                        answer="", source="pairs"))
        prompt += "".join(s + separator for s in r.get("prefix") or [])
        if "completion" in r:
            out.append({"prompt": prompt, "completion": r["completion"], "label": r["label"]})
        else:
            out.append({"prompt": prompt, "chosen": r["chosen"], "rejected": r["rejected"],
                        **({"kind": "step"} if r.get("kind") == "step" else {})})
    return out


def make_pair_file(samples: str | os.PathLike, out: str | os.PathLike, kind: str = "outcome",
                   label: str = "outcome", step_label: str = "step_labels", threshold: float = 0.5,
                   max_per_problem: int | None = None, seed: int = 0, fmt: str = "rewardlab",
                   strict: bool = False) -> dict:
    """Read labelled samples, build pairs (:func:`build_pairs`) and write them to ``out``
    atomically. Returns a summary: ``n_rows``, ``n_problems``, ``n_pairs``,
    ``problems_without_pair`` (problems whose samples are all right or all wrong). A file that
    yields no pair at all raises :class:`DataError` and writes nothing. ``fmt``: rewardlab | trl
    (:func:`to_trl`). ``strict``: a problem without a pair is an error too, naming the line of its
    first sample."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    rows = read_labelled_samples(samples, kind, label, step_label)
    pairs = build_pairs(rows, kind, label, step_label, threshold, max_per_problem, seed)
    problems = {str(r.get("id") or r["question"]) for r in rows}
    paired = {p["id"] for p in pairs} if kind != "unpaired" else problems
    if not pairs:
        why = {"outcome": f"no problem has both a correct and an incorrect response by {label!r}",
               "step": f"no wrong step (by {step_label!r}) has a right alternative after the same prefix",
               "unpaired": "no row has a label"}[kind]
        raise DataError(samples, f"no {kind} pairs: {why} (threshold {threshold}; "
                        f"{len(rows)} rows, {len(problems)} problems); sample more responses per problem")
    if strict and problems - paired:
        first = next(r for r in rows if str(r.get("id") or r["question"]) not in paired)
        pid = str(first.get("id") or first["question"])
        n = sum(str(r.get("id") or r["question"]) == pid for r in rows)
        raise DataError(samples, f"problem {pid!r} has no {kind} pair ({n} samples; "
                        f"{len(problems - paired)} of {len(problems)} problems have none); drop "
                        "--strict to skip such problems", first["_line"])
    write_jsonl(out, to_trl(pairs) if fmt == "trl" else pairs)
    return {"n_rows": len(rows), "n_problems": len(problems), "n_pairs": len(pairs),
            "problems_without_pair": len(problems - paired)}

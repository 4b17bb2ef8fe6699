"""Dataset loaders: GSM8K, MATH500, testbed files and generic JSONL, all returning ``Problem``s.

Local files are read with :func:`rewardlab.io.iter_jsonl`, so bad input raises ``DataError`` naming
the file, line and field. The shared data folder (``shared/data`` beside the repository, never
copied into it) is found through ``$REWARDLAB_DATA_DIR`` or by walking up from the working
directory and from this package; without it, ``gsm8k`` and ``math500`` fall back to their hub ids
(:data:`HUB_IDS`). A hub dataset id (``"openai/gsm8k"``) goes through ``datasets.load_dataset``.
"""

from __future__ import annotations


import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from rewardlab.data.formats import completion_steps, prompt_completion_texts
from rewardlab.data.problem import Problem
from rewardlab.data.steps import split_steps
from rewardlab.io import DataError, iter_jsonl


DATA_DIR_ENV = "REWARDLAB_DATA_DIR"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

__all__ = ["find_data_dir", "strip_calc_annotations", "load_gsm8k", "load_math500",
           "load_jsonl", "load_testbed", "load_prompt_completion", "load_dataset_by_name",
           "DATASET_NAMES"]


# ---------------------------------------------------------------------------------------------
# locating files


def find_data_dir() -> Path:
    """The shared data folder: ``$REWARDLAB_DATA_DIR``, else the first ``shared/data`` found
    walking up from the working directory, then from this package's folder."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise DataError(p, f"${DATA_DIR_ENV} does not name a folder")
        return p
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            cand = d / "shared" / "data"
            if cand.is_dir():
                return cand
    raise DataError("shared/data", f"data folder not found; set ${DATA_DIR_ENV} to the folder "
                                   "holding gsm8k/ and math500/")


def _is_hub_id(path: str | os.PathLike) -> bool:
    """``owner/name`` that is not an existing local path and not a ``.jsonl``/``.json`` file."""
    s = str(path)
    return (bool(_HUB_ID_RE.match(s)) and not Path(s).exists()
            and not s.endswith((".jsonl", ".json")))


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")


def _take(rows: Iterable[Any], limit: int | None) -> Iterator[Any]:
    """The first ``limit`` items (all when None), without reading further."""
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield row


HUB_IDS: dict[str, tuple[str, str | None]] = {
    "gsm8k": ("openai/gsm8k", "main"),
    "math500": ("HuggingFaceH4/MATH-500", None),
}
"""Hub dataset (id, config) that a named dataset falls back to when the shared data folder is
absent."""


def _default_path(name: str, relpath: str) -> Path | str:
    """``<data>/<relpath>`` when the shared data folder (or ``$REWARDLAB_DATA_DIR``) exists and
    holds the file, else the dataset's hub id (:data:`HUB_IDS`, read through ``datasets``). An
    explicit ``$REWARDLAB_DATA_DIR`` that is not a folder stays an error."""
    try:
        path = find_data_dir() / relpath
    except DataError:
        if os.environ.get(DATA_DIR_ENV):
            raise
        return HUB_IDS[name][0]
    return path if path.exists() else HUB_IDS[name][0]


def _hub_rows(dataset_id: str, split: str, config: str | None) -> Iterator[tuple[int, dict]]:
    """``(row_number, row)`` from ``datasets.load_dataset(dataset_id, config, split=split)``;
    a dataset that cannot be loaded (offline, unknown id or split) raises DataError."""
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, config, split=split) if config else \
            datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # offline, unknown id/split, datasets missing: one clear line
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{dataset_id} split={split}",
                        f"cannot load the hub dataset ({type(e).__name__}: {msg}); for local "
                        f"files set ${DATA_DIR_ENV} to a folder holding gsm8k/ and math500/"
                        ) from None
    for i, row in enumerate(ds, 1):
        yield i, dict(row)


def _check_row_types(where: str, lineno: int, row: dict, types: dict[str, type]) -> None:
    """Type checks for hub rows (local files are checked by ``iter_jsonl``)."""
    for k, t in types.items():
        if k not in row:
            raise DataError(where, "missing required field", lineno, k)
        if not isinstance(row[k], t):
            raise DataError(where, f"expected {t.__name__}, got {type(row[k]).__name__}", lineno, k)


def _rows(path: str | os.PathLike, split: str, config: str | None, types: dict[str, type],
          ) -> Iterator[tuple[str, int, dict]]:
    """``(source, line, row)`` from a local JSONL file or a hub dataset, type-checked."""
    if _is_hub_id(path):
        for lineno, row in _hub_rows(str(path), split, config):
            _check_row_types(f"{path} split={split} row", lineno, row, types)
            yield str(path), lineno, row
        return
    for lineno, row in iter_jsonl(path, required=list(types), types=types):
        yield str(path), lineno, row


# ---------------------------------------------------------------------------------------------
# steps


# ---------------------------------------------------------------------------------------------
# GSM8K


def _gsm8k_problem(row: dict, pid: str, where: str, lineno: int,
                   keep_calc_annotations: bool) -> Problem:
    """A GSM8K row ``{"question", "answer"}`` → Problem (gold = text after ``####``)."""
    text = row["answer"]
    if "####" not in text:
        raise DataError(where, "GSM8K answer has no '####' line", lineno, "answer")
    body, gold = text.rsplit("####", 1)
    gold = re.sub(r"(?<=\d),(?=\d{3})", "", gold.strip())
    if not gold:
        raise DataError(where, "empty final answer after '####'", lineno, "answer")
    steps = split_steps(body if keep_calc_annotations else strip_calc_annotations(body))
    return Problem(id=pid, question=row["question"], solution=text, answer=gold, source="gsm8k",
                   steps=steps + [f"#### {gold}"])


def load_gsm8k(split: str = "test", path: str | os.PathLike | None = None,
               limit: int | None = None, keep_calc_annotations: bool = True) -> list[Problem]:
    """Load GSM8K as Problems with ids ``gsm8k-{split}-{index}``.

    ``path``: a JSONL file (default ``<data>/gsm8k/{split}.jsonl``, see :func:`find_data_dir`;
    without that folder, the hub's ``openai/gsm8k``) or a hub id such as ``"openai/gsm8k"``
    (config ``"main"``). The gold answer is the text after
    ``####`` with thousands commas dropped; ``steps`` are the solution's lines before it plus
    ``"#### <answer>"``. ``solution`` keeps the calculator annotations ``<<48/2=24>>``; so do the
    steps unless ``keep_calc_annotations=False``.
    """
    _check_limit(limit)
    path = path if path is not None else _default_path("gsm8k", f"gsm8k/{split}.jsonl")
    rows = _rows(path, split, "main", {"question": str, "answer": str})
    return [_gsm8k_problem(row, f"gsm8k-{split}-{i}", where, lineno, keep_calc_annotations)
            for i, (where, lineno, row) in enumerate(_take(rows, limit))]


# ---------------------------------------------------------------------------------------------
# MATH500


def _math500_problem(row: dict, index: int) -> Problem:
    """A MATH500 row → Problem (steps are the solution's blank-line-separated paragraphs)."""
    meta = {k: row[k] for k in ("subject", "level") if k in row}
    return Problem(id=str(row.get("unique_id") or f"math500-{index}"), question=row["problem"],
                   solution=row["solution"], answer=row["answer"], source="math500",
                   steps=split_steps(row["solution"], "blank"), meta=meta)


def load_math500(path: str | os.PathLike | None = None, limit: int | None = None,
                 split: str = "test") -> list[Problem]:
    """Load MATH500 (``{"problem","solution","answer","subject","level","unique_id"}``).

    ``path``: a JSONL file (default ``<data>/math500/test.jsonl``; without that folder, the hub's
    ``HuggingFaceH4/MATH-500``) or a hub id such as ``"HuggingFaceH4/MATH-500"``. Ids are the ``unique_id`` field.
    """
    _check_limit(limit)
    path = path if path is not None else _default_path("math500", "math500/test.jsonl")
    types = {"problem": str, "solution": str, "answer": str}
    rows = _rows(path, split, None, types)
    return [_math500_problem(row, i) for i, (_, _, row) in enumerate(_take(rows, limit))]


# ---------------------------------------------------------------------------------------------
# generic JSONL and testbed files


def load_jsonl(path: str | os.PathLike, question_field: str = "question",
               answer_field: str = "answer", solution_field: str | None = None,
               id_field: str | None = None, source: str = "jsonl", step_split: str = "lines",
               limit: int | None = None) -> list[Problem]:
    """Load any JSONL of problems, mapping its field names onto :class:`Problem`.

    ``question_field`` and ``answer_field`` are required strings; ``solution_field`` (optional)
    gives the solution, split into steps by ``step_split``; ``id_field`` (optional, string or
    integer) gives the id, else ``{source}-{index}``. Other fields go into ``meta``.
    """
    _check_limit(limit)
    types: dict[str, Any] = {question_field: str, answer_field: str}
    if solution_field:
        types[solution_field] = str
    if id_field:
        types[id_field] = (str, int)
    used = set(types)
    out = []
    for i, (_, row) in enumerate(_take(iter_jsonl(path, required=list(types), types=types), limit)):
        solution = row[solution_field] if solution_field else ""
        out.append(Problem(
            id=str(row[id_field]) if id_field else f"{source}-{i}",
            question=row[question_field], solution=solution, answer=row[answer_field],
            source=source, steps=split_steps(solution, step_split) if solution_field else None,
            meta={k: v for k, v in row.items() if k not in used}))
    return out


_PROBLEM_TYPES: dict[str, Any] = {"id": str, "question": str, "solution": str, "answer": str,
                                  "source": str, "steps": list, "meta": dict}


def load_testbed(path: str | os.PathLike, limit: int | None = None) -> list[Problem]:
    """Load a file written by ``rewardlab data testbed`` (rows are ``Problem.to_dict()``)."""
    _check_limit(limit)
    required = ["id", "question", "solution", "answer", "source"]
    out = []
    for lineno, row in _take(iter_jsonl(path, required=required, types=_PROBLEM_TYPES), limit):
        steps = row.get("steps")
        if steps is not None and not all(isinstance(s, str) for s in steps):
            raise DataError(path, "expected a list of strings", lineno, "steps")
        out.append(Problem.from_dict(row))
    return out


_LOADERS: dict[str, Callable[[str, Any, int | None], list[Problem]]] = {
    "gsm8k": lambda split, path, limit: load_gsm8k(split, path, limit),
    "math500": lambda split, path, limit: load_math500(path, limit, split=split),
    "testbed": lambda split, path, limit: load_testbed(path or "problems.jsonl", limit),
}
"""Named datasets: ``(split, path, limit) -> problems``."""
DATASET_NAMES = tuple(_LOADERS)


def load_dataset_by_name(name: str, split: str = "test", path: str | os.PathLike | None = None,
                         limit: int | None = None) -> list[Problem]:
    """Dispatch on ``name``: ``"gsm8k"``, ``"math500"``, ``"testbed"`` (``path`` defaults to
    ``problems.jsonl``), a ``.jsonl`` file (testbed rows, else ``question``/``answer`` fields) or a
    hub id (``openai/gsm8k`` → GSM8K, any other → MATH-style fields)."""
    if name in _LOADERS:
        return _LOADERS[name](split, path, limit)
    if str(name).endswith(".jsonl"):
        return _load_jsonl_file(name, limit)
    if _is_hub_id(name):
        if "gsm8k" in name.lower():
            return load_gsm8k(split, name, limit)
        return load_math500(name, limit, split=split)
    raise DataError(name, f"unknown dataset; expected one of {DATASET_NAMES}, a .jsonl file or a "
                          "hub id like openai/gsm8k")


def load_prompt_completion(path: str | os.PathLike, limit: int | None = None) -> list[Problem]:
    """TRL prompt-completion rows ``{"prompt", "completion"}`` (standard or conversational) as
    Problems: the prompt is the question, the completion the solution (its steps split as in
    :func:`rewardlab.data.formats.completion_steps`); the answer is the row's ``answer`` when
    given, else the text after the completion's last ``####`` (else empty). Unpaired rows
    (``label``) keep only the completions labelled good."""
    _check_limit(limit)
    out: list[Problem] = []
    source = Path(path).stem
    for lineno, row in iter_jsonl(path, types={"answer": (str, int, float), "label": (bool, int)}):
        if limit is not None and len(out) >= limit:
            break
        if "label" in row and not row["label"]:
            continue
        prompt, completion = prompt_completion_texts(row, path, lineno)
        answer = row.get("answer")
        if answer is None:
            answer = completion.rsplit("####", 1)[1].strip() if "####" in completion else ""
        out.append(Problem(id=str(row.get("id", f"{source}-{lineno}")), question=prompt,
                           solution=completion, answer=str(answer), source=source,
                           steps=completion_steps(completion)))
    return out


def _load_jsonl_file(path: str | os.PathLike, limit: int | None) -> list[Problem]:
    """A ``.jsonl`` given by name: Problem rows (as written by the testbed), TRL prompt-completion
    rows, or question/answer."""
    rows = iter_jsonl(path)
    try:
        first = next(rows)[1]
    finally:
        rows.close()
    if all(k in first for k in ("id", "question", "solution", "answer", "source")):
        return load_testbed(path, limit)
    if "prompt" in first and "completion" in first and "question" not in first:
        return load_prompt_completion(path, limit)
    return load_jsonl(path, id_field="id" if "id" in first else None,
                      solution_field="solution" if "solution" in first else None,
                      source=Path(path).stem, limit=limit)


_ANNOTATION_STRIP_RE = re.compile(r"<<[^<>]*>>")


def strip_calc_annotations(text: str) -> str:
    """Remove GSM8K calculator annotations: ``"16-3=<<16-3=13>>13"`` → ``"16-3=13"``."""
    return _ANNOTATION_STRIP_RE.sub("", text)

"""File I/O with clear errors and atomic writes.

Every reader names the file, line and field at fault; every writer writes to a temporary name in
the same directory and renames, so a crash never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

MAX_LINE_BYTES = 16 * 1024 * 1024  # one JSONL row larger than this is refused as absurd


class DataError(ValueError):
    """Bad input data. The message names the file, the line (1-based) and the field."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None,
                 field: str | None = None):
        where = str(path)
        if line is not None:
            where += f":{line}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field


_TYPE_NAMES = {str: "string", int: "integer", float: "number", list: "list", dict: "object",
               bool: "boolean"}


def _check_type(value: Any, typ: type | tuple) -> bool:
    types = typ if isinstance(typ, tuple) else (typ,)
    if bool in types:
        return isinstance(value, bool) or any(isinstance(value, t) for t in types if t is not bool)
    if isinstance(value, bool):  # bool is an int subclass: refuse it where a number is asked
        return False
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def check_row(path: str | os.PathLike, line: int, row: dict, required: Iterable[str] = (),
              types: dict[str, type | tuple] | None = None) -> None:
    """Raise :class:`DataError` (naming file, line and field) when ``row`` lacks a required field,
    holds null in one, or holds a non-null field of the wrong type."""
    for k in required:
        if k not in row:
            raise DataError(path, "missing required field", line, k)
        if row[k] is None:
            raise DataError(path, "null in a required field", line, k)
    for k, t in (types or {}).items():
        if k in row and row[k] is not None and not _check_type(row[k], t):
            want = " or ".join(_TYPE_NAMES.get(x, x.__name__)
                               for x in (t if isinstance(t, tuple) else (t,)))
            raise DataError(path, f"expected {want}, got {type(row[k]).__name__}", line, k)


def iter_jsonl(path: str | os.PathLike, required: Iterable[str] = (),
               types: dict[str, type | tuple] | None = None,
               allow_empty: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` for every non-blank line of a JSONL file.

    Raises :class:`DataError` for a missing file, an empty file (unless ``allow_empty``), a line
    that is not a JSON object, a missing required field or a field of the wrong type.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "file not found")
    if p.is_dir():
        raise DataError(p, "is a directory, expected a JSONL file")
    types = types or {}
    required = list(required)
    seen = 0
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(p, f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES} limit", lineno)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(p, f"not valid UTF-8 ({e.reason})", lineno) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(p, f"malformed JSON: {e.msg} (column {e.colno})", lineno) from None
            if not isinstance(row, dict):
                raise DataError(p, f"expected a JSON object, got {type(row).__name__}", lineno)
            check_row(p, lineno, row, required, types)
            seen += 1
            yield lineno, row
    if seen == 0 and not allow_empty:
        raise DataError(p, "file is empty (no JSON rows)")


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = (),
               types: dict[str, type | tuple] | None = None, allow_empty: bool = False) -> list[dict]:
    """Read a whole JSONL file (see :func:`iter_jsonl` for the checks)."""
    return [row for _, row in iter_jsonl(path, required, types, allow_empty)]


def probe_write(directory: str | os.PathLike) -> None:
    """Create and delete a temporary file in ``directory``: :class:`PermissionError` naming it
    when that fails (no permission, a read-only file system; ``os.access`` is not enough, as root
    passes it on a read-only mount)."""
    d = Path(directory)
    try:
        fd, probe = tempfile.mkstemp(prefix=".rewardlab-write-test.", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(e.errno or errno.EACCES, e.strerror or "cannot write there",
                              str(d)) from None


def _nearest_existing(p: Path) -> Path:
    """``p`` or its nearest ancestor that exists."""
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_path(path: str | os.PathLike) -> Path:
    """Raise the OSError that writing the file ``path`` would meet (it is a directory, a parent is
    a file, the directory is not writable: a write-probe) before any work is done; creates
    nothing. Returns it as a Path."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(p))
    parent = _nearest_existing(p.parent)
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a part of it is not a directory", str(p))
    try:
        probe_write(parent)
    except PermissionError as e:   # name the path the user gave, not its directory
        raise PermissionError(e.errno, e.strerror, str(p)) from None
    return p


def check_output_dir(path: str | os.PathLike) -> Path:
    """:func:`check_output_path` for an output folder: a :class:`DataError` when ``path`` is a
    file, an OSError when a parent is a file or the folder (or the nearest existing ancestor, as
    nothing is created) cannot be written. Returns it as a Path."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DataError(p, "is a file, not a directory (an output folder is wanted here)")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a part of it is not a directory", str(p))
    try:
        probe_write(base)
    except PermissionError as e:   # name the path the user gave, not its nearest parent
        raise PermissionError(e.errno, e.strerror, str(p)) from None
    return p


def _same(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file (also through links and ``..``)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


Named = Iterable[tuple[str, "str | os.PathLike | None"]]


def check_outputs(files: Named = (), dirs: Named = (), inputs: Named = ()) -> None:
    """Check a command's outputs before it does any work: every output file
    (:func:`check_output_path`) and folder (:func:`check_output_dir`) writable, no two output
    files the same path, and no output file the same as an input file (it would be overwritten
    by what is read from it). Each is ``(option name, path)``; None paths are skipped. Raises
    :class:`DataError` or an OSError naming the path and the options."""
    files = [(n, Path(p)) for n, p in files if p is not None]
    dirs = [(n, Path(p)) for n, p in dirs if p is not None]
    ins = [(n, Path(p)) for n, p in inputs if p is not None and Path(p).is_file()]
    for _, d in dirs:
        check_output_dir(d)
    for _, f in files:
        check_output_path(f)
    for i, (na, a) in enumerate(files):
        for nb, b in files[i + 1:]:
            if _same(a, b):
                raise DataError(a, f"{na} and {nb} name the same output file; give each its own")
        for ni, src in ins:
            if _same(a, src):
                raise DataError(a, f"the output ({na}) is also an input ({ni}); writing it would "
                                   "destroy the input: choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(p))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):   # a file where a parent directory should be
        raise NotADirectoryError(errno.ENOTDIR, "a part of it is not a directory", str(p)) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix + ".tmp", dir=p.parent)
    os.close(fd)
    tmp_p = Path(tmp)
    os.chmod(tmp_p, 0o666 & ~_umask())   # mkstemp makes 0600; a result file follows the umask
    try:
        yield tmp_p
        os.replace(tmp_p, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_p.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf, which JSON cannot hold) replaced by None,
    in nested dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def to_json(obj: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`json_safe` (``obj``): valid JSON, never a NaN or Infinity token."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows as JSONL atomically (non-finite numbers as null)."""
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(to_json(r, ensure_ascii=False) + "\n")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write one JSON document atomically (non-finite numbers as null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)

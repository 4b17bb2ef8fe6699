"""Typed dataclass configs loaded from YAML with dotted overrides.

    cfg = load_config(RLConfig, "configs/ppo_success.yaml", ["reward.prm.refine=clip", "seed=3"])

Every field's docstring-style comment in its dataclass is the only help text. Unknown keys and
values of the wrong type fail loudly with the dotted key that is wrong.

Numbers are checked in one place, :func:`check_numbers` (run by :func:`from_dict` and by each
top-level config's ``validate``): every float must be finite (nan never passes; ``inf`` only
where the field's range closes on it, ``"[0, inf]"``), and a field named in its class's
``RANGES`` dict must lie in that interval::

    RANGES: ClassVar[dict[str, str]] = {"lr": "(0, inf)", "gamma": "[0, 1]", "grad_clip": "[0, inf]"}

The error names the dotted field, the value and the allowed interval.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rewardlab.io import write_text


T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the dotted key."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """An allowed range of a number: ``lo``/``hi`` (None: unbounded), open or closed at each end.
    ``inf`` passes only where the interval closes on it (``[0, inf]``)."""

    lo: float
    hi: float
    lo_closed: bool
    hi_closed: bool
    text: str

    def __contains__(self, v: float) -> bool:
        lo_ok = v > self.lo or (self.lo_closed and v == self.lo)
        hi_ok = v < self.hi or (self.hi_closed and v == self.hi)
        return lo_ok and hi_ok

    @property
    def allows_inf(self) -> bool:
        return self.hi == math.inf and self.hi_closed


_INTERVAL_RE = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*$")


def interval(text: str) -> Interval:
    """``"(0, 1]"`` → :class:`Interval`; the ends are numbers, ``-inf`` or ``inf``."""
    m = _INTERVAL_RE.match(text)
    if m is None:
        raise ValueError(f"not an interval: {text!r} (write e.g. '[0, 1]' or '(0, inf)')")
    lb, lo, hi, rb = m.groups()
    return Interval(float(lo), float(hi), lb == "[", rb == "]", text.strip())


def _num_str(v: float) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def check_number(value: Any, key: str, allowed: str | Interval | None = None) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` (an int or float) is finite
    (``inf`` only where ``allowed`` closes on it) and inside ``allowed``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    iv = interval(allowed) if isinstance(allowed, str) else allowed
    where = f" (allowed: {iv.text})" if iv is not None else " (allowed: any finite number)"
    if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not (
            iv is not None and iv.allows_inf and value > 0))):
        raise ConfigError(f"{key} = {_num_str(value)} is not a finite number{where}")
    if iv is not None and value not in iv:
        raise ConfigError(f"{key} = {_num_str(value)} is out of range: allowed {iv.text}")


def check_numbers(cfg: Any, prefix: str = "") -> None:
    """Check every number of dataclass ``cfg`` and of the dataclasses nested in it (lists of
    numbers too): finite, and inside the interval its class's ``RANGES`` gives for it. Raises
    :class:`ConfigError` naming the dotted field, the value and the allowed range."""
    ranges = getattr(type(cfg), "RANGES", {}) or {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_numbers(value, key + ".")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                check_number(v, f"{key}[{i}]", ranges.get(f.name))
        else:
            check_number(value, key, ranges.get(f.name))


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: Exception | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"{key}: cannot use {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {typ.__name__}, got {value!r}")
        return from_dict(typ, value, prefix=key + ".")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [
                v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in sorted(unknown))}"
                          f" (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    check_numbers(obj, prefix)
    post = getattr(obj, "validate", None)
    if callable(post):
        post()
    return obj


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (values parsed as YAML scalars)."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key.sub=value")
        key, raw = ov.split("=", 1)
        key = key.strip()
        if key.startswith("--"):
            key = key[2:]
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: {p} is not a section")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | None = None) -> T:
    """Defaults of ``cls`` ← YAML file ``path`` ← dotted ``overrides``."""
    data: dict = dataclasses.asdict(cls())
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
            what = " ".join(str(getattr(e, "problem", None) or e).split())
            raise ConfigError(f"{where}: malformed YAML: {what}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        _deep_update(data, loaded, cls, str(p) + ": ")
    apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def _deep_update(base: dict, new: dict, cls: Any = None, where: str = "") -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


def field_docs(cls: type) -> dict[str, str]:
    """The docstring-style comment of each field of dataclass ``cls`` (the string literal on the
    lines after ``name: type = default``), read from its source with :mod:`ast`; {} without source."""
    import ast
    import inspect
    import textwrap

    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return {}
    docs = {}
    for a, b in zip(node.body, node.body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            docs[a.target.id] = inspect.cleandoc(b.value.value)
    return docs


def describe_config(cfg: Any, indent: int = 0) -> str:
    """``cfg`` as YAML with each field's help text as comments above it: what
    ``--print-config`` shows. Reading it back (``load_config(cls, path)``) gives ``cfg`` again."""
    docs = field_docs(type(cfg))
    pad = " " * indent
    lines = []
    for f in dataclasses.fields(cfg):
        for line in docs.get(f.name, "").splitlines():
            lines.append(f"{pad}# {line}".rstrip())
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(describe_config(value, indent + 2))
        else:
            dumped = yaml.safe_dump({f.name: value}, sort_keys=False, default_flow_style=False, width=1000)
            lines.extend(pad + ln for ln in dumped.rstrip("\n").splitlines())
    return "\n".join(lines)


def save_config(cfg: Any, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

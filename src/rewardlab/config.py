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

Renamed keys (one naming across the CLI and configs, docs/cli_naming.md) are listed in one place,
:data:`RENAMED_KEYS`: a YAML file, a ``--set`` override or a dict given to :func:`from_dict` may
still use the old key for one release; it loads as the new one with a
:class:`ConfigKeyDeprecationWarning` naming both, and giving both is a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rewardlab.io import write_text


T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the dotted key."""


class ConfigKeyDeprecationWarning(DeprecationWarning):
    """A config key that was renamed: it still loads (as the new key) for one release."""


# Shown by default (Python hides DeprecationWarning outside __main__): a user's YAML file is
# where the old key is, so the library has to say so wherever it is loaded.
warnings.filterwarnings("default", category=ConfigKeyDeprecationWarning)


RENAMED_KEYS: dict[str, dict[str, str]] = {
    "SFTConfig": {"max_steps": "steps"},
    "POConfig": {"max_steps": "steps"},
    "RMTrainConfig": {"max_steps": "steps", "base": "model"},
    "RLConfig": {"policy": "model"},
    "TestbedConfig": {"min_steps": "min_ops", "max_steps": "max_ops"},
}
"""config class name → {old key: new key}: the deprecated keys, which load (with a warning) for
one release and then go. Nested sections follow their class wherever they sit
(``po.max_steps`` of an ``IterativePOConfig``, ``data.testbed.max_steps`` of any config)."""


def _section_class(typ: Any) -> type | None:
    """The dataclass a field of type ``typ`` holds (through ``X | None``), else None."""
    if dataclasses.is_dataclass(typ) and isinstance(typ, type):
        return typ
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        for a in typing.get_args(typ):
            if dataclasses.is_dataclass(a) and isinstance(a, type):
                return a
    return None


def _field_class(cls: type, name: str) -> type | None:
    """The dataclass that field ``name`` of config class ``cls`` holds, else None."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:   # noqa: BLE001 - an unresolvable annotation: no section to follow
        return None
    return _section_class(hints.get(name)) if name in hints else None


def _deprecated_key(old: str, new: str, where: str) -> None:
    warnings.warn(f"{where}config key {old} is deprecated, use {new} (the old key will be removed "
                  "in the next release)", ConfigKeyDeprecationWarning, stacklevel=4)


def rename_keys(cls: type, data: dict, prefix: str = "", where: str = "", *,
                strict: bool = True, warn: bool = True, recurse: bool = True) -> dict:
    """``data`` (a nested dict of config ``cls``) with every deprecated key of
    :data:`RENAMED_KEYS` renamed to its new name, warning once per key (``warn``), in the nested
    sections too (``recurse``). ``prefix`` is the dotted path of ``data`` and ``where`` the
    message's start (a file name). An old key given beside its new one is a :class:`ConfigError`
    (``strict``), else the new one wins. Other keys are left as they are (:func:`from_dict`
    refuses the unknown ones).

    >>> rename_keys(type("SFTConfig", (), {}), {"max_steps": 5}, warn=False)
    {'steps': 5}
    """
    renames = RENAMED_KEYS.get(cls.__name__, {})
    out: dict = {}
    for key, value in data.items():
        new = renames.get(key) if isinstance(key, str) else None
        if new is not None:
            if new in data:
                if strict:
                    raise ConfigError(f"{where}config keys {prefix}{key} and {prefix}{new} are both "
                                      f"given: {prefix}{key} is the deprecated name of {prefix}{new}; "
                                      f"keep only {prefix}{new}")
                continue
            if warn:
                _deprecated_key(prefix + key, prefix + new, where)
            key = new
        sub = _field_class(cls, key) if recurse and isinstance(value, dict) else None
        out[key] = rename_keys(sub, value, f"{prefix}{key}.", where, strict=strict, warn=warn) \
            if sub is not None else value
    return out


def rename_override_keys(cls: type, overrides: list[str]) -> list[str]:
    """``key.sub=value`` overrides with their deprecated keys (at any depth) renamed, warning
    once per key; the same field given under its old and its new name is a :class:`ConfigError`.

    >>> rename_override_keys(type("RLConfig", (), {}), ["policy=x", "seed=1"])
    ['model=x', 'seed=1']
    """
    out: list[str] = []
    spelled: dict[str, str] = {}   # new dotted key → how it was first written
    warned: set[str] = set()
    for ov in overrides:
        if "=" not in ov:
            out.append(ov)   # apply_overrides says what is wrong with it
            continue
        key, raw = ov.split("=", 1)
        dashes = "--" if key.strip().startswith("--") else ""
        parts = key.strip().removeprefix("--").split(".")
        node: type | None = cls
        new_parts: list[str] = []
        for i, part in enumerate(parts):
            new = RENAMED_KEYS.get(node.__name__, {}).get(part) if node is not None else None
            if new is not None:
                old_path = ".".join(new_parts + [part])
                if old_path not in warned:
                    warned.add(old_path)
                    _deprecated_key(old_path, ".".join(new_parts + [new]), "--set: ")
                part = new
            new_parts.append(part)
            node = _field_class(node, part) if node is not None and i < len(parts) - 1 else None
        new_key, old_key = ".".join(new_parts), ".".join(parts)
        first = spelled.setdefault(new_key, old_key)
        if first != old_key:
            raise ConfigError(f"overrides {first}=... and {old_key}=... set the same config key: "
                              f"{new_key} (the old name is deprecated); keep only {new_key}")
        out.append(f"{dashes}{new_key}={raw}" if new_key != old_key else ov)
    return out


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
    data = rename_keys(cls, data, prefix, recurse=False)
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
        _deep_update(data, rename_keys(cls, loaded, where=f"{p}: "))
    apply_overrides(data, rename_override_keys(cls, list(overrides or [])))
    return from_dict(cls, data)


def _deep_update(base: dict, new: dict) -> None:
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

"""Experiment trackers of a run (``report_to``), through accelerate's trackers.

    report_to: tensorboard            # the default: <out>/tb, as rewardlab always wrote
    report_to: wandb,tensorboard      # a comma list
    report_to: none                   # metrics.jsonl only

``metrics.jsonl`` is always written (:class:`~rewardlab.training.metrics.MetricsLogger`); the
trackers get the same rows. The names are accelerate's (``tensorboard``, ``wandb``, ``trackio``,
``mlflow``, and its other built-ins), plus any :class:`accelerate.tracking.GeneralTracker`
subclass registered with :func:`accelerate.tracking.register_tracker_class`. Each tracker but
TensorBoard is an optional package (``pip install 'rewardlab[wandb]'``, ``[trackio]``,
``[mlflow]``); :func:`check_report_to` refuses a missing one before any work. Only the main
process logs. The project is ``rewardlab`` and the run is named ``<trainer>-<out directory>``;
the trackers' other settings (``WANDB_MODE``, ``WANDB_ENTITY``, ``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``, ...) come from the environment as usual.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterable

from rewardlab.config import ConfigError

DEFAULT = "tensorboard"
PROJECT = "rewardlab"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio",
            "mlflow": "mlflow", "comet_ml": "comet-ml", "aim": "aim", "clearml": "clearml",
            "dvclive": "dvclive", "swanlab": "swanlab"}
"""Tracker name → the pip package it needs."""
EXTRAS = ("wandb", "trackio", "mlflow")
"""Trackers with a rewardlab extra (``pip install 'rewardlab[wandb]'``)."""


def _registered() -> dict[str, type]:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    return LOGGER_TYPE_TO_CLASS


def parse_report_to(value: str | Iterable[str] | None) -> list[str]:
    """The tracker names of a ``report_to`` value: a comma list or a list of names; ``none``
    (or empty) is no tracker. A name accelerate does not know is a ConfigError listing the
    valid ones."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if name in ("", "none"):
            continue
        if name not in _registered():
            valid = ", ".join(["none", *sorted(_registered())])
            raise ConfigError(f"report_to: unknown tracker {name!r} (valid: {valid}, or a comma list)")
        if name not in names:
            names.append(name)
    return names


def installed(name: str) -> bool:
    """Whether tracker ``name``'s package is installed, as accelerate checks it
    (``accelerate.utils.is_<name>_available``). TensorBoard (``torch.utils.tensorboard``) is a
    core dependency; a tracker registered by the user, outside accelerate's list, counts as
    installed."""
    import accelerate.utils

    check = getattr(accelerate.utils, f"is_{name}_available", None)
    return True if check is None or name not in PACKAGES else bool(check())


def check_report_to(value: str | Iterable[str] | None) -> list[str]:
    """:func:`parse_report_to`, and a ConfigError naming the package and its ``pip install``
    when a requested tracker is not installed. Call it before any work."""
    names = parse_report_to(value)
    for name in names:
        if not installed(name):
            pkg = PACKAGES[name]
            hint = f"pip install 'rewardlab[{name}]'" if name in EXTRAS else f"pip install {pkg}"
            raise ConfigError(f"report_to={name} needs the {pkg} package, which is not installed: "
                              f"{hint} (or leave {name} out of report_to)")
    return names


def report_to_of(config, tensorboard: bool = True) -> list[str]:
    """The trackers a trainer config asks for: its ``report_to`` (default ``tensorboard``);
    ``tensorboard=False`` (the engine's flag, or the config's) drops TensorBoard."""
    names = check_report_to(getattr(config, "report_to", DEFAULT) if config is not None else DEFAULT)
    if not tensorboard or getattr(config, "tensorboard", True) is False:
        names = [n for n in names if n != "tensorboard"]
    return names


def flat_config(config) -> dict[str, Any]:
    """A config dataclass as one level of ``dotted.key: value`` (int, float, str, bool; other
    values as strings), the form every tracker stores."""
    def walk(d: dict, prefix: str) -> Iterable[tuple[str, Any]]:
        for k, v in d.items():
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v if isinstance(v, (int, float, str, bool)) else str(v)
    return dict(walk(dataclasses.asdict(config), "")) if dataclasses.is_dataclass(config) else {}


class Trackers:
    """The trackers of one run, behind one :class:`accelerate.Accelerator` (``log_with``):
    ``log(step, values)`` and ``close()``. Create it on the main process only.

    TensorBoard writes to ``<out>/tb``; the other trackers run in project ``rewardlab`` with the
    run named ``run_name`` and the flattened config stored as their run's parameters."""

    def __init__(self, names: list[str], out: str | Path, run_name: str, config=None):
        import torch
        from accelerate import Accelerator

        out = Path(out)
        self.names = list(names)
        trackers = [self._make(name, out, run_name) for name in self.names]
        self.accelerator = Accelerator(log_with=trackers, project_dir=str(out),
                                       cpu=not torch.cuda.is_available())
        self.accelerator.init_trackers(PROJECT)
        params = flat_config(config)
        if params:   # TensorBoard: the run's config.yaml is beside tb/ already
            for tracker in self.accelerator.trackers:
                if tracker.name != "tensorboard":
                    tracker.store_init_configuration(params)

    @staticmethod
    def _make(name: str, out: Path, run_name: str):
        cls = _registered()[name]
        if name == "tensorboard":
            return cls("tb", str(out))                     # <out>/tb, as before
        kwargs = {"wandb": {"name": run_name, "dir": str(out)},
                  "trackio": {"name": run_name},
                  "mlflow": {"run_name": run_name}}.get(name, {})
        return cls(PROJECT, str(out), **kwargs) if cls.requires_logging_directory else cls(PROJECT, **kwargs)

    @property
    def trackers(self) -> list:
        return list(self.accelerator.trackers)

    def log(self, step: int, values: dict[str, float]) -> None:
        """Log the finite numbers of ``values`` at ``step`` to every tracker."""
        finite = {k: float(v) for k, v in values.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if finite:
            self.accelerator.log(finite, step=step)

    def close(self) -> None:
        """Finish every tracker. (Not ``Accelerator.end_training``: that also destroys the
        process group, which a multi-process run still needs for its final save.)"""
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []

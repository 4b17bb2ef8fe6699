"""Progress of jobs that run in worker processes, shown by the parent process.

Workers report ``("start", name, total, t)``, ``("step", name, done, t)`` and ``("end", name,
None, t)`` messages (``t``: the worker's ``time.time()``, so elapsed times and ETAs do not depend on
how late the parent reads them) on a multiprocessing queue (:func:`queue_reporter`); the parent drains the queue into a
:class:`JobBoard`: on a terminal, a live rich panel with one row per job (step/total, elapsed time,
ETA); elsewhere (a log file, CI), one line per job every ``every`` steps and at its end.
"""

from __future__ import annotations

import queue as queue_mod
import time
from typing import Callable, Iterable


def queue_reporter(q, name: str) -> Callable[[str, object], None]:
    """``report(kind, value)`` that puts ``(kind, name, value, time.time())`` on ``q`` (never
    raises: a progress message is not worth failing a training job for)."""
    def report(kind: str, value=None) -> None:
        try:
            q.put_nowait((kind, name, value, time.time()))
        except Exception:   # a full or closed queue: drop the message
            pass
    return report


def eta_seconds(elapsed: float, done: int, first: int, total: int) -> float | None:
    """Seconds left at the pace so far: ``elapsed / (done − first) · (total − done)``, where
    ``first`` is the step the job started from (a resumed job); None before the first step."""
    if done <= first or total is None:
        return None
    return elapsed / (done - first) * max(total - done, 0)


def clock(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class JobBoard:
    """Rows of jobs (``names``) fed by :meth:`handle` / :meth:`drain`; a context manager.

    ``live``: a rich panel (only when stdout is a terminal); otherwise ``log`` gets a line per job
    every ``every`` steps (except the last) and, with ``end_lines``, at its end (a caller that logs each job's result
    itself turns that off and takes the time from :meth:`elapsed`). ``totals``: steps per job
    (None: unknown, e.g. a job that reports only its start and end)."""

    def __init__(self, names: Iterable[str], totals: dict[str, int | None], *, live: bool = True,
                 log: Callable[[str], None] = print, every: int = 10, label: str = "",
                 end_lines: bool = True):
        from rich.console import Console

        self.names = list(names)
        self.totals = dict(totals)
        self.log, self.every, self.label = log, max(int(every), 1), label
        self.end_lines = end_lines
        self.live = live and Console().is_terminal
        self.t0: dict[str, float] = {}
        self.first: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.ended: set[str] = set()
        self.t_end: dict[str, float] = {}
        self._progress = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "JobBoard":
        if self.live and self.names:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[state]}"))
            for n in self.names:
                self._tasks[n] = self._progress.add_task(f"{self.label}{n}", total=self.totals.get(n),
                                                         start=False, eta="–", state="waiting")
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def elapsed(self, name: str, now: float | None = None) -> float:
        """Seconds since ``name`` started (0 before; frozen once it ended)."""
        now = time.time() if now is None else now
        return max(self.t_end.get(name, now) - self.t0.get(name, now), 0.0)

    def handle(self, kind: str, name: str, value=None, t: float | None = None) -> None:
        """One message: ``start`` (value: total steps or None), ``step`` (value: steps done),
        ``end``; ``t``: when it happened (``time.time()``; now when None)."""
        now = time.time() if t is None else t
        if kind == "start":
            self.t0.setdefault(name, now)
            if value is not None:
                self.totals[name] = int(value)
            if self._progress is not None and name in self._tasks:
                t = self._tasks[name]
                self._progress.start_task(t)
                self._progress.update(t, total=self.totals.get(name), state="running")
        elif kind == "step":
            self.t0.setdefault(name, now)
            done = int(value)
            self.first.setdefault(name, done - 1)
            self.done[name] = done
            total = self.totals.get(name)
            eta = eta_seconds(self.elapsed(name, now), done, self.first[name], total)
            if self._progress is not None and name in self._tasks:
                self._progress.update(self._tasks[name], completed=done, eta=clock(eta))
            elif not self.live and done % self.every == 0 and done != total:
                of = f"/{total}" if total else ""
                self.log(f"{self.label}{name}: step {done}{of}, {clock(self.elapsed(name, now))} elapsed"
                         + (f", ETA {clock(eta)}" if eta else ""))
        elif kind == "end" and name not in self.ended:
            self.ended.add(name)
            self.t0.setdefault(name, now)
            self.t_end[name] = now
            if self._progress is not None and name in self._tasks:
                t = self._tasks[name]
                total = self.totals.get(name)
                if total is None:
                    self._progress.update(t, total=1, completed=1)
                else:
                    self._progress.update(t, completed=total)
                self._progress.update(t, eta="0:00", state="done")
                self._progress.stop_task(t)
            elif not self.live and self.end_lines:
                done = self.done.get(name)
                self.log(f"{self.label}{name}: done" + (f", {done} steps" if done else "")
                         + f" in {clock(self.elapsed(name))}")

    def drain(self, q) -> None:
        """Handle every message waiting on ``q`` (without blocking)."""
        while True:
            try:
                msg = q.get_nowait()
            except (queue_mod.Empty, EOFError, OSError):
                return
            self.handle(*msg)

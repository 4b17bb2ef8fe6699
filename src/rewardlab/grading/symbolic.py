"""A time limit for math-verify that works from any thread: a small pool of worker processes.

math-verify's own timeouts use ``signal.alarm``, which only works in the main thread. Here each
check is sent to a persistent worker process (``python -m rewardlab.grading._symbolic_worker``,
started with ``subprocess`` so no ``__main__`` module is re-imported) and the reply is awaited with
a selector; a worker that overruns the limit is killed, and its replacement is started in the
background at once so that later checks need not wait for it. Workers are started lazily, reused,
capped at :data:`MAX_WORKERS` at once, and shut down at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path

STARTUP_TIMEOUT_S = 120.0  # importing sympy/math-verify in a fresh process; not part of a check's limit
MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))


class _Worker:
    """One child process answering ``{"pred","gold"}`` lines with ``{"ok"}`` lines."""

    def __init__(self) -> None:
        env = dict(os.environ)
        src_dir = str(Path(__file__).resolve().parents[2])  # the folder holding `rewardlab`
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_dir, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewardlab.grading._symbolic_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        reply = self._read(STARTUP_TIMEOUT_S)
        if not reply or not reply.get("ready"):
            self.kill()
            raise RuntimeError("symbolic grading worker failed to start")

    def _read(self, timeout: float) -> dict | None:
        """One reply line within ``timeout`` seconds, or None (timeout, garbage or dead worker)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:  # epoll/poll: no FD_SETSIZE limit, unlike select()
            sel.register(fd, selectors.EVENT_READ)
            while not buf.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                buf += chunk
        try:
            reply = json.loads(buf)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def ask(self, pred: str, gold: str, timeout: float) -> bool | None:
        """The worker's verdict, or None if it overran ``timeout`` or died (then it is killed)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"pred": pred, "gold": gold}) + "\n").encode())
            reply = self._read(timeout)
        except (OSError, ValueError):
            reply = None
        if reply is None:
            self.kill()
            return None
        return bool(reply.get("ok"))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the process and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


class SymbolicPool:
    """Up to ``max_workers`` reusable workers shared by all threads."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._idle: list[_Worker] = []
        self._n_busy = 0
        self._cond = threading.Condition()
        self._owner_pid = os.getpid()

    def _acquire(self) -> _Worker | None:
        """An idle worker, or None if the caller may start a new one (waits when all are busy)."""
        with self._cond:
            while not self._idle and self._n_busy >= self.max_workers:
                self._cond.wait()
            self._n_busy += 1
            return self._idle.pop() if self._idle else None

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            self._n_busy -= 1
            if worker is not None and worker.alive:
                self._idle.append(worker)
            self._cond.notify()

    def check(self, pred: str, gold: str, timeout: float) -> bool:
        """math-verify's verdict within ``timeout`` seconds of compute; False on timeout.

        Waiting for a free worker and starting one are not counted against ``timeout``.
        """
        worker = self._acquire()
        try:
            worker = worker or _Worker()
            verdict = worker.ask(pred, gold, max(timeout, 0.01))
        except BaseException:
            if worker is not None:
                worker.kill()
            self._release(None)
            raise
        if verdict is None:  # timed out and killed: keep the slot, start a replacement now
            threading.Thread(target=self._replace, daemon=True).start()
        else:
            self._release(worker)
        return bool(verdict)

    def _replace(self) -> None:
        """Start a worker in the background to fill a slot whose worker was killed."""
        try:
            worker: _Worker | None = _Worker()
        except (RuntimeError, OSError):
            worker = None
        self._release(worker)

    def warm_up(self, n: int = 1) -> None:
        """Start ``n`` workers now so that later checks do not pay the start-up time."""
        started = []
        for _ in range(min(n, self.max_workers)):
            w = self._acquire()
            started.append(w or _Worker())
        for w in started:
            self._release(w)

    def shutdown(self) -> None:
        """Kill all idle workers (busy ones are killed by their callers on timeout or reused).

        Does nothing in a forked child: the workers belong to the parent.
        """
        if os.getpid() != self._owner_pid:
            return
        with self._cond:
            idle, self._idle = self._idle, []
        for w in idle:
            w.kill()


_POOL: SymbolicPool | None = None
_POOL_PID: int | None = None
_POOL_LOCK = threading.Lock()


def get_pool() -> SymbolicPool:
    """The process-wide cached pool (a forked child gets its own, never its parent's pipes)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL, _POOL_PID = SymbolicPool(), os.getpid()
            atexit.register(_POOL.shutdown)
        return _POOL


def _forget_pool_after_fork() -> None:
    """A forked child starts with no pool and a fresh lock (the parent's may be held)."""
    global _POOL, _POOL_PID, _POOL_LOCK
    _POOL, _POOL_PID, _POOL_LOCK = None, None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def symbolic_equiv(pred: str, gold: str, timeout: float = 5.0) -> bool:
    """math-verify equivalence of two LaTeX answers, bounded by ``timeout`` seconds, any thread."""
    return get_pool().check(pred, gold, timeout)


def warm_up(n: int = 1) -> None:
    """Start ``n`` symbolic workers ahead of time."""
    get_pool().warm_up(n)


def shutdown() -> None:
    """Stop the cached workers (they are also stopped at interpreter exit)."""
    if _POOL is not None and _POOL_PID == os.getpid():
        _POOL.shutdown()

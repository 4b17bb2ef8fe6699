"""A time limit for math-verify that works from any thread: a small pool of worker processes.

math-verify's own timeouts use ``signal.alarm``, which only works in the main thread. Here each
check is sent to a persistent worker process (``python -m rewardlab.grading._symbolic_worker``,
started with ``subprocess`` so no ``__main__`` module is re-imported) and the reply is awaited with
a selector; a worker that overruns the limit is killed, and its replacement is started in the
background at once. Workers are started lazily in background threads, reused, capped at
:data:`MAX_WORKERS` at once, and shut down at exit. A check's limit covers its wait for a free
worker too, so from any number of threads each call returns within its limit
(:class:`SymbolicPool`).
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

STARTUP_TIMEOUT_S = 120.0  # importing sympy/math-verify in a fresh process (the pool's cold start)
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
    """Up to ``max_workers`` reusable workers shared by all threads.

    A check's wall time is bounded by its ``timeout``: the wait for a free worker and the
    worker's compute together (a call that finds no worker free within ``timeout`` returns
    False, "not shown equal", and counts in ``gave_up``). Workers are started in background
    threads, never by the caller, so a caller never waits for a start-up once the pool has had a
    worker ready. The one exception is the pool's cold start: until its first worker is ready
    (importing sympy and math-verify, a second or two), callers wait for it, bounded by
    :data:`STARTUP_TIMEOUT_S`, and that first check then gets its whole ``timeout`` to compute,
    so that an answer is never marked wrong only because the pool was still starting."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._idle: list[_Worker] = []
        self._n_slots = 0        # workers busy, idle or starting
        self._ready_once = False
        self._start_error: str | None = None
        self._cond = threading.Condition()
        self._owner_pid = os.getpid()
        self.gave_up = 0

    def _spawn_locked(self) -> None:
        """Take a slot and start a worker in a background thread (the lock is held)."""
        self._n_slots += 1
        threading.Thread(target=self._spawn, daemon=True).start()

    def _spawn(self) -> None:
        try:
            worker: _Worker | None = _Worker()
            error = None
        except (RuntimeError, OSError) as e:
            worker, error = None, str(e)
        with self._cond:
            if worker is None:
                self._n_slots -= 1
                if not self._ready_once:
                    self._start_error = error
            else:
                self._idle.append(worker)
                self._ready_once = True
            self._cond.notify_all()

    def _acquire(self, timeout: float) -> tuple[_Worker | None, float]:
        """An idle worker within ``timeout`` seconds (None: none came free) and the seconds left
        for its compute (the whole ``timeout`` after a cold start)."""
        t0 = time.monotonic()
        with self._cond:
            cold = not self._ready_once
            while not self._idle:
                if not self._ready_once and self._start_error is not None:
                    error, self._start_error = self._start_error, None
                    raise RuntimeError(f"symbolic grading worker failed to start: {error}")
                if self._n_slots < self.max_workers:
                    self._spawn_locked()
                limit = STARTUP_TIMEOUT_S if not self._ready_once else timeout
                left = t0 + limit - time.monotonic()
                if left <= 0:
                    self.gave_up += 1
                    return None, 0.0
                self._cond.wait(left)
            worker = self._idle.pop()
        left = timeout if cold else timeout - (time.monotonic() - t0)
        return worker, left

    def check(self, pred: str, gold: str, timeout: float) -> bool:
        """math-verify's verdict within ``timeout`` seconds of wall time (waiting for a free
        worker included; see the class docstring for the cold start); False on timeout."""
        worker, left = self._acquire(timeout)
        if worker is None:
            return False
        try:
            verdict = worker.ask(pred, gold, max(left, 0.01))
        except BaseException:
            worker.kill()
            with self._cond:
                self._n_slots -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            if verdict is None:   # overran and killed: its slot starts a replacement at once
                self._n_slots -= 1
                self._spawn_locked()
            else:
                self._idle.append(worker)
            self._cond.notify_all()
        return bool(verdict)

    def warm_up(self, n: int = 1) -> None:
        """Start workers until ``n`` (at most ``max_workers``) are ready, and wait for them, so
        that later checks do not wait for a start-up."""
        n = min(n, self.max_workers)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with self._cond:
            while self._n_slots < n:
                self._spawn_locked()
            while len(self._idle) < n and time.monotonic() < deadline:
                if self._start_error is not None and not self._ready_once:
                    error, self._start_error = self._start_error, None
                    raise RuntimeError(f"symbolic grading worker failed to start: {error}")
                if self._n_slots < n:
                    self._spawn_locked()
                self._cond.wait(max(deadline - time.monotonic(), 0.0))

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

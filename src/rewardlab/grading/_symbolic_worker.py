"""Child-process side of the symbolic equivalence check (run as ``python -m ...``).

Protocol: one JSON object per line on stdin, ``{"pred": str, "gold": str}``; one JSON object per
line on stdout, ``{"ok": bool}``. The first line written is ``{"ready": true}`` once math-verify has
been imported. math-verify's own ``signal``-based timeouts are switched off
(``parsing_timeout=None``, ``timeout_seconds=None``); the parent enforces the time limit by killing
this process. Only LaTeX parsing is used (``LatexExtractionConfig``): math-verify's plain
expression mode goes through ``sympy.parse_expr``, which evaluates text as Python.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

MEMORY_LIMIT_BYTES = 4 * 1024 ** 3  # address-space cap: a runaway sympy expansion dies, not the host


def _limit_memory() -> None:
    """Best-effort RLIMIT_AS cap (POSIX only; ignored where unsupported)."""
    try:
        import resource
        limit = int(os.environ.get("REWARDLAB_GRADER_MEM_BYTES", MEMORY_LIMIT_BYTES))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def _parse(text: str):
    """``$text$`` → math-verify's parsed list (may be empty)."""
    from math_verify import LatexExtractionConfig, parse
    return parse(f"${text}$", extraction_config=[LatexExtractionConfig()],
                 parsing_timeout=None)


def symbolic_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict on ``pred`` against ``gold`` (False on any error). No time limit here."""
    from math_verify import verify
    try:
        gold_parsed, pred_parsed = _parse(gold), _parse(pred)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - any failure of the symbolic path means "not shown equal"
        return False


def _watch_parent(interval: float = 1.0) -> None:
    """Exit when the parent process goes away (an orphan must not keep computing)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _send(out, obj: dict) -> None:
    """Write one reply line; a closed pipe means the parent is gone, so exit quietly."""
    try:
        out.write(json.dumps(obj) + "\n")
        out.flush()
    except (BrokenPipeError, OSError):
        os._exit(0)


def main() -> None:
    """Serve requests until stdin closes."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints from libraries go to stderr, never into the protocol
    sys.stdout = sys.stderr
    _limit_memory()
    _watch_parent()
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    import math_verify  # noqa: F401 - import before announcing readiness
    _send(out, {"ready": True})
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = symbolic_equal(str(req["pred"]), str(req["gold"]))
        except (ValueError, KeyError, TypeError):
            ok = False
        _send(out, {"ok": ok})


if __name__ == "__main__":
    main()

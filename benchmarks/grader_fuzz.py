"""Fuzz the graders with random and hostile text: time per call and memory.

Every public checker of :mod:`rewardlab.grading` meets the same strings — random ones (digits,
operators, parentheses, LaTeX commands, letters, spaces; up to ``--max-bytes``) and adversarial
ones (long sums that end in a word, long ``=`` chains, deep or unbalanced parentheses, power
towers, huge numbers, harmonic sums, annotation floods, LaTeX bombs such as ``\\frac{`` ×
10⁴ or ``\\text{ a}`` × 10⁴, whitespace floods, 100 kB inputs). For each function it prints the
number of calls, the largest and 99th-percentile time per call, and the process's memory: RSS
before any call, after a warm-up pass (the adversarial strings, which hold the largest inputs,
and ``--warmup-n`` random ones of another seed, from the same number of threads: imports, regex
compilation, thread stacks and the allocator's per-thread arenas reach their size there), at each
quarter of the measured run and after it, and the growth per 1,000 strings after the warm-up
(a leak grows with the number of strings; a warm-up does not). A call that raises ``ValueError`` (``parse_expr`` on text that is not
arithmetic) counts as handled; any other exception is a failure, listed at the end, and the
script exits 1. A call still running after ``--call-limit`` seconds is stopped and listed too.

    python benchmarks/grader_fuzz.py [--n 300 --max-bytes 100000 --seed 0] [--threads 4]
                                     [--warmup-n 200]

``is_equiv`` and ``grade`` run with ``timeout=0``: their exact and numeric stages, in this
process (the symbolic stage is a worker process with its own time limit).
"""

from __future__ import annotations

import argparse
from array import array
import random
import resource
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rewardlab.grading import (check_calc_annotations, extract_answer, grade,  # noqa: E402
                               is_equiv, normalize_answer, parse_expr, step_arithmetic_ok)
from rewardlab.grading.answers import last_boxed, to_fraction  # noqa: E402
from rewardlab.grading.calc import to_number  # noqa: E402

KB100 = 100_000

FUNCTIONS = {
    "parse_expr": parse_expr,
    "to_number": to_number,
    "check_calc_annotations": check_calc_annotations,
    "step_arithmetic_ok": step_arithmetic_ok,
    "extract_answer[gsm8k]": lambda s: extract_answer(s, "gsm8k"),
    "extract_answer[math]": lambda s: extract_answer(s, "math"),
    "last_boxed": last_boxed,
    "normalize_answer": normalize_answer,
    "to_fraction": lambda s: to_fraction(normalize_answer(s)),
    "is_equiv": lambda s: is_equiv(s, "42", timeout=0),
    "grade[math]": lambda s: grade(s, "\\frac{1}{2}", "math", timeout=0),
}

PIECES = ["0", "1", "2", "7", "9", "12", "1,000", ".5", "3.25", "+", "-", "*", "/", "^", "**", "%",
          "(", ")", "=", " ", " ", "  ", "\n", "x", "$", "<<", ">>", "####", "\\frac{", "}", "{",
          "\\boxed{", "\\text{ ", "\\left(", "\\right)", "\\sqrt", "\\cdot", "\\times", "^{", "_",
          "apples", "n", "ки", "−", "–", "÷", "×", ",", "."]


def random_text(rng: random.Random, max_bytes: int) -> str:
    target = int(10 ** rng.uniform(0, __import__("math").log10(max_bytes)))
    out, size = [], 0
    while size < target:
        p = rng.choice(PIECES)
        out.append(p)
        size += len(p)
    return "".join(out)[:max_bytes]


def adversarial(max_bytes: int) -> dict[str, str]:
    def fill(unit: str, head: str = "", tail: str = "") -> str:
        return head + unit * max(1, (max_bytes - len(head) - len(tail)) // max(len(unit), 1)) + tail

    cases = {}
    for n in (10, 22, 30, 60, 200, 2000, 20000):
        s = " + ".join(str(i) for i in range(1, n + 1)) + " + n = 500"
        cases[f"sum of {n} terms + n = 500"] = s[-max_bytes:]
    cases["sum of 40 terms, spaced"] = "  +  ".join(["1"] * 40) + "  +  n = 40"
    cases["sum of 40 with signs and parens"] = " - ".join(["( -1"] * 40) + " x = 5"
    cases["= chain 1 + 1 = 2"] = fill("1 + 1 = 2 = ")
    cases["= flood"] = fill("=")
    cases["digits and = alternating"] = fill("1=")
    cases["deep parens 1"] = "(" * 50 + "1" + ")" * 50 + " = 1"
    cases["deep parens 100k"] = fill("(", tail="1")
    cases["deep parens balanced 100k"] = "(" * (max_bytes // 2 - 1) + "1" + ")" * (max_bytes // 2 - 1)
    cases["unary signs 2k"] = "-" * 1999 + "1"
    cases["power tower 2^2^..."] = "^".join(["2"] * 500)
    cases["power tower 9**9**9"] = "9**9**9"
    cases["power (2^1000)^(2^1000)"] = "(2^1000)^(2^1000)"
    cases["power 2^1000 * 2^1000 ..."] = "*".join(["2^1000"] * 200)
    cases["huge number"] = "9" * max_bytes
    cases["huge number in expr"] = "9" * 1990 + "*" + "9" * 5
    cases["harmonic sum"] = "+".join(f"1/{k}" for k in range(2, 400))[:1999]
    cases["division chain"] = "1" + "/7" * 999
    cases["percent chain"] = "1" + "%" * 1999
    cases["annotation flood"] = fill("<<1+1=2>> ")
    cases["annotation flood wrong"] = fill("<<12*3=35>> ")
    cases["annotation long expr"] = "<<" + "+".join(["1"] * 990) + "=990>>"
    cases["<< flood"] = fill("<<")
    cases["<< then = flood"] = fill("=", head="<<")
    cases["<<a flood"] = fill("<<a")
    cases["frac bomb"] = fill("\\frac{")
    cases["frac nested"] = "\\frac{" * 2000 + "1" + "}{2}" * 2000
    cases["text-unit bomb"] = fill("\\text{ a}")
    cases["text-unit open bomb"] = fill("\\text{ a")
    cases["text wrap bomb"] = fill("\\text{", tail="x" + "}" * 10)
    cases["boxed bomb"] = fill("\\boxed{")
    cases["boxed nested"] = "\\boxed{" * 10000 + "1" + "}" * 10000
    cases["boxed escapes"] = fill("\\\\", head="\\boxed{")
    cases["left right bomb"] = fill("\\left(\\right)")
    cases["sqrt bomb"] = fill("\\sqrt")
    cases["latex frac short"] = fill("\\frac12")
    cases["#### flood"] = fill("#### ")
    cases["#### then number"] = fill(" ", head="#### ", tail="42")
    cases["whitespace flood"] = "1" + " " * (max_bytes - 10) + "+ 1 = 2"
    cases["thousands commas"] = fill("1,000,") + "000"
    cases["x multiplication flood"] = fill("2 x ")[:-3] + " = 4"
    cases["unicode minus"] = fill("5 − 3 = 2 ")
    cases["letters and digits"] = fill("a1b2")
    cases["12 slices * 1/3 = 4"] = fill("12 slices * 1/3 = 4 ")
    cases["decimal dots"] = fill("1.")
    cases["100 kB random arithmetic"] = "".join(random.Random(1).choice("0123456789+-*/() =.")
                                                for _ in range(max_bytes))
    cases["empty"] = ""
    return cases


class CallTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CallTimeout()


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="random strings (besides the adversarial ones)")
    ap.add_argument("--max-bytes", type=int, default=KB100, help="longest input")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--call-limit", type=float, default=10.0, help="seconds before a call is stopped")
    ap.add_argument("--only", default=None, help="comma-separated function names")
    ap.add_argument("--warmup-n", type=int, default=200,
                    help="random strings (another seed) of the warm-up pass, besides the adversarial ones")
    ap.add_argument("--threads", type=int, default=1,
                    help="run the whole fuzz in this many threads at once (times are per call, "
                         "as each thread saw them; no per-call alarm, which only the main thread gets)")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    inputs = list(adversarial(args.max_bytes).items())
    inputs += [(f"random #{i}", random_text(rng, args.max_bytes)) for i in range(args.n)]
    funcs = {k: v for k, v in FUNCTIONS.items() if not args.only or k in args.only.split(",")}
    rss0 = rss_mb()
    # per-call times in arrays allocated up front (thread t fills slots t·len(inputs) ...), so
    # that recording them does not itself grow the RSS being measured (a list of floats would:
    # 32 bytes a call, 14 MiB for 10,000 strings × 11 functions × 4 threads)
    times = {k: array("d", bytes(8 * len(inputs) * max(args.threads, 1))) for k in funcs}
    worst: dict[str, tuple[float, str]] = {k: (0.0, "") for k in funcs}
    failures: list[str] = []
    alarm = args.threads == 1
    if alarm:
        signal.signal(signal.SIGALRM, _alarm)
    done = [0]      # calls finished in the measured pass (+= under the GIL; an estimate is enough)

    def fuzz(strings, record: bool, tid: int = 0) -> None:
        for name, f in funcs.items():
            for i, (label, text) in enumerate(strings):
                if alarm:
                    signal.setitimer(signal.ITIMER_REAL, args.call_limit)
                t0 = time.perf_counter()
                try:
                    f(text)
                except ValueError:
                    pass
                except CallTimeout:
                    failures.append(f"{name}({label}): still running after {args.call_limit:g} s")
                except Exception as e:  # noqa: BLE001 - a fuzzer reports whatever breaks
                    failures.append(f"{name}({label}): {type(e).__name__}: {str(e)[:120]}")
                finally:
                    if alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                dt = time.perf_counter() - t0
                if record:
                    times[name][tid * len(strings) + i] = dt
                    done[0] += 1
                    if dt > worst[name][0]:
                        worst[name] = (dt, label)

    def run_pass(strings, record: bool) -> None:
        if args.threads == 1:
            fuzz(strings, record)
            return
        pool = [threading.Thread(target=fuzz, args=(strings, record, t)) for t in range(args.threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    # warm-up: every function on the adversarial strings (the largest inputs) and on random ones
    # of another seed, from the same number of threads, so that imports, compiled regexes,
    # thread stacks and the allocator's arenas have their size before memory is measured
    wrng = random.Random(args.seed + 10_007)
    warm = list(adversarial(args.max_bytes).items())
    warm += [(f"warm-up #{i}", random_text(wrng, args.max_bytes)) for i in range(args.warmup_n)]
    t_warm = time.perf_counter()
    run_pass(warm, record=False)
    t_warm = time.perf_counter() - t_warm
    rss_warm = rss_mb()

    total = len(funcs) * len(inputs) * args.threads
    marks: list[tuple[int, float]] = []     # (quarter, RSS) as the measured pass goes
    stop = threading.Event()

    def watch() -> None:
        q = 1
        while not stop.wait(0.05) and q < 4:
            if done[0] >= q * total / 4:
                marks.append((q, rss_mb()))
                q += 1

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t_run = time.perf_counter()
    run_pass(inputs, record=True)
    t_run = time.perf_counter() - t_run
    stop.set()
    watcher.join()
    rss1 = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = [len(t) for _, t in inputs]
    print(f"{len(inputs)} strings ({len(inputs) - args.n} adversarial, {args.n} random; "
          f"longest {max(sizes)} chars, median {sorted(sizes)[len(sizes) // 2]}); "
          f"{args.threads} thread(s) at once")
    print(f"{'function':<24} {'calls':>6} {'max ms':>9} {'p99 ms':>9} {'mean ms':>9}  slowest input")
    for name, ts in times.items():
        print(f"{name:<24} {len(ts):>6} {1e3 * max(ts):>9.2f} {1e3 * p99(ts):>9.2f} "
              f"{1e3 * sum(ts) / len(ts):>9.3f}  {worst[name][1]}")
    quarters = ", ".join(f"{25 * q}% {r:.1f}" for q, r in marks)
    per_k = (rss1 - rss_warm) / (len(inputs) / 1000)
    print(f"RSS (MiB): {rss0:.1f} before any call, {rss_warm:.1f} after the warm-up pass "
          f"({len(warm)} strings, {t_warm:.0f} s), during the run {quarters or '-'}, "
          f"{rss1:.1f} after it ({t_run:.0f} s); peak {peak:.1f}")
    print(f"growth after the warm-up: {rss1 - rss_warm:+.1f} MiB over {len(inputs)} strings, "
          f"{per_k:+.3f} MiB per 1,000 strings")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

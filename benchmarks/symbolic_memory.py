"""The symbolic grading workers under hostile text from several threads: their memory and time.

``is_equiv`` sends what its exact and numeric stages cannot decide to a pool of worker processes
(``rewardlab.grading.symbolic``: math-verify / sympy, each worker capped at 4 GiB of address
space, killed and replaced when a call passes its time limit). This script sends the fuzzer's
adversarial strings and ``--n`` random ones (``benchmarks/grader_fuzz.py``'s generators) through
``is_equiv(s, gold, timeout=--timeout)`` from ``--threads`` threads, twice (a warm-up pass, then
the measured pass), while a sampler reads every live worker's resident memory every 50 ms. It
prints the workers' peak RSS, the summed worker RSS after the warm-up and after the run (a leak in
a reused worker grows with the number of strings), the workers started (a replacement per
killed call), and the largest and 99th-percentile wall time per call.

    python benchmarks/symbolic_memory.py [--n 400 --threads 4 --timeout 1.0 --max-bytes 100000]
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grader_fuzz import adversarial, random_text  # noqa: E402

from rewardlab.grading import is_equiv  # noqa: E402
from rewardlab.grading import symbolic  # noqa: E402


def worker_rss_mb(pids) -> dict[int, float]:
    """VmRSS of each live pid, MiB (Linux /proc)."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out[pid] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--max-bytes", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    started: list[int] = []
    orig_init = symbolic._Worker.__init__

    def counting_init(self):
        orig_init(self)
        started.append(self.proc.pid)
    symbolic._Worker.__init__ = counting_init

    rng = random.Random(a.seed)
    strings = list(adversarial(a.max_bytes).values()) + [random_text(rng, a.max_bytes) for _ in range(a.n)]
    golds = ["42", "\\frac{1}{2}", "x^2+1", "\\sqrt{2}"]
    peak = {"rss": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for v in worker_rss_mb(started).values():
                peak["rss"] = max(peak["rss"], v)
            time.sleep(0.05)

    def run(pass_strings, times):
        def work(k):
            for i in range(k, len(pass_strings), a.threads):
                t = time.perf_counter()
                is_equiv(pass_strings[i], golds[i % len(golds)], timeout=a.timeout)
                times.append(time.perf_counter() - t)
        ts = [threading.Thread(target=work, args=(k,)) for k in range(a.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run(strings, [])
    live = worker_rss_mb(started)
    after_warm, n_warm = sum(live.values()), len(started)
    times: list[float] = []
    run(strings, times)
    live = worker_rss_mb(started)
    stop.set()
    sampler.join()
    times.sort()
    print(f"strings per pass: {len(strings)} ({len(strings) - a.n} adversarial, {a.n} random, "
          f"up to {a.max_bytes} bytes), {a.threads} threads, timeout {a.timeout} s")
    print(f"workers started: {n_warm} in the warm-up pass, {len(started) - n_warm} in the measured pass "
          f"(a replacement for each call killed at its time limit)")
    print(f"live workers' RSS summed: {after_warm:.1f} MiB after the warm-up, {sum(live.values()):.1f} MiB "
          f"after the measured pass ({len(live)} live); peak of one worker {peak['rss']:.1f} MiB")
    print(f"wall time per call (measured pass, waiting for a free worker included): "
          f"max {times[-1] * 1e3:.0f} ms, p99 {times[int(0.99 * (len(times) - 1))] * 1e3:.0f} ms, "
          f"median {times[len(times) // 2] * 1e3:.1f} ms")
    symbolic.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bounded time on untrusted text: the arithmetic checkers stay polynomial (no regex with 2^n ways
to fail), look at a bounded number of annotations and equations, and bound every value."""

import importlib.util
import re
import time
from pathlib import Path

import pytest

from rewardlab.grading import check_calc_annotations, normalize_answer, parse_expr, step_arithmetic_ok
from rewardlab.grading.calc import MAX_ANNOTATIONS, MAX_EQUATIONS, MAX_VALUE_BITS


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


@pytest.mark.parametrize("n", [22, 40, 200])
def test_long_sum_ending_in_a_word_is_fast(n):
    # 22 terms took 6 s before (×4 per 2 more terms): 40 would have taken days
    text = " + ".join(str(i) for i in range(1, n + 1)) + " + n = 500"
    out, dt = _timed(step_arithmetic_ok, text)
    assert out is None and dt < 0.5, dt


@pytest.mark.parametrize("text,want", [
    (" + ".join(str(i) for i in range(1, 41)) + " = 820", True),
    (" + ".join(str(i) for i in range(1, 41)) + " = 821", False),
    ("3 * ( -2) = -6", True),
    ("3 * (-2) = -6", True),
    ("16 - 3 - 4 = 9", True),
    ("12 slices * 1/3 = 4", None),
])
def test_plain_equations_still_checked(text, want):
    assert step_arithmetic_ok(text) is want


def test_only_the_first_equations_and_annotations_are_examined():
    ok = "1 + 1 = 2. " * MAX_EQUATIONS
    assert step_arithmetic_ok(ok + "2 + 2 = 5.") is True         # past the limit: not examined
    assert step_arithmetic_ok("2 + 2 = 5. " + ok) is False
    flood = "<<1+1=2>> " * 10_000
    out, dt = _timed(check_calc_annotations, flood)
    assert len(out) == MAX_ANNOTATIONS and all(r["ok"] for r in out) and dt < 0.5
    out, dt = _timed(step_arithmetic_ok, "1 + 1 = 2 = " * 10_000)
    assert out is True and dt < 0.5


def test_intermediate_values_are_bounded():
    with pytest.raises(ValueError, match=f"{MAX_VALUE_BITS} bits"):
        parse_expr("*".join(["2^1000"] * 200))
    big = "9" * 1990
    assert parse_expr(big) == int(big)                # any literal that fits the length limit
    _, dt = _timed(lambda: parse_expr("+".join(f"1/{k}" for k in range(2, 400))[:1999]))
    assert dt < 0.5


def test_latex_unit_bomb_is_linear():
    assert normalize_answer("5 \\text{ m}\\text{ s}") == "5"
    out, dt = _timed(normalize_answer, "\\text{ a}" * 11_000)
    assert dt < 0.5 and isinstance(out, str)


def test_fuzz_benchmark_runs_every_checker_within_a_second_per_call(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "grader_fuzz.py"
    spec = importlib.util.spec_from_file_location("grader_fuzz", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--n", "20", "--max-bytes", "100000", "--call-limit", "1", "--warmup-n", "5"]) == 0
    out = capsys.readouterr().out
    assert "step_arithmetic_ok" in out and "FAILED" not in out
    # memory: before any call, after the warm-up pass, after the run, and the growth per 1,000
    assert re.search(r"RSS \(MiB\): [\d.]+ before any call, [\d.]+ after the warm-up pass "
                     r"\(58 strings, .*[\d.]+ after it", out), out
    assert re.search(r"growth after the warm-up: [+-][\d.]+ MiB over 73 strings, [+-][\d.]+ MiB per "
                     r"1,000 strings", out), out
    # from 2 threads: every call of both threads is timed (2 × 73 per function)
    assert mod.main(["--n", "20", "--threads", "2", "--warmup-n", "0", "--only", "parse_expr"]) == 0
    assert re.search(r"parse_expr\s+146\s", capsys.readouterr().out)

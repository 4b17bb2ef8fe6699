"""A sample of benchmarks/bad_inputs.py's corpus (every class, every command): each bad input
gets one line of error, exit 2, no traceback, and nothing written (issue 21). The full corpus:
``python benchmarks/bad_inputs.py``."""

import importlib.util
import sys
from pathlib import Path

import pytest

PER_CLASS = 7   # cases taken, evenly spread, from each class of the corpus


def _load():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bad_inputs.py"
    spec = importlib.util.spec_from_file_location("bad_inputs", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bad_inputs", mod)   # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load()


def _sample(cases, k):
    by = {}
    for c in cases:
        by.setdefault(c.cls, []).append(c)
    out = []
    for cs in by.values():
        step = max(1, len(cs) // k)
        out += cs[::step][:k]
    return out


def _command(argv):
    return " ".join(argv[:2]) if argv[0] == "data" else argv[0]


def test_a_sample_of_the_corpus_gets_clear_errors(tmp_path, tiny_policy, bench):
    cases = bench.build(tmp_path / "fixtures", policy=str(tiny_policy))
    assert len(cases) >= 300
    sample = _sample(cases, PER_CLASS)
    commands = {_command(c.argv) for c in sample} | {_command(c.argv) for c in cases}
    assert {"sft", "rl", "train-rm", "po", "po-iterative", "sample", "label", "score", "eval",
            "eval-prm", "bon", "pairs", "grade", "demo", "data show", "data testbed"} <= commands
    assert len(sample) >= 80 and len({c.cls for c in sample}) == len({c.cls for c in cases})
    bench.run_cases(sample, tmp_path / "work", jobs=2, limit=60)
    bad = [f"[{c.cls}] {c.name}: {c.verdict()}" for c in sample if c.verdict() is not None]
    assert not bad, "\n".join(bad)
    assert all(c.rc == 2 and c.message for c in sample)


def test_the_verdict_flags_what_is_not_a_clear_error(bench):
    C = bench.Case
    ok = C("x", "ok", [], rc=2, err="warning: a note\nerror: data.jsonl:3: field 'answer': null\n")
    assert ok.verdict() is None
    usage = C("x", "usage", [], rc=2, err="Usage: rewardlab sample [OPTIONS]\nTry 'rewardlab sample "
              "--help' for help.\n\nError: Invalid value for '--samples': 'abc' is not a valid integer.\n")
    assert usage.verdict() is None
    assert "traceback" in C("x", "tb", [], rc=1, err="Traceback (most recent call last):\nKeyError: 1\n"
                            ).verdict()
    assert C("x", "zero", [], rc=0, err="").verdict() == "exit 0"
    assert "not one line" in C("x", "many", [], rc=2, err="error: a\nmore\n").verdict()
    assert "wrote runs/x/config.yaml" in C("x", "left", [], rc=2, err="error: a\n",
                                           left=["runs/x/config.yaml"]).verdict()
    assert C("x", "slow", [], rc=None).verdict() == "timed out"

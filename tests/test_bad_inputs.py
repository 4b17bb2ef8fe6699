"""A sample of benchmarks/bad_inputs.py's corpus (every class, every command): each bad input
gets one line of error, exit 2, no traceback, and nothing written (issue 21). The full corpus:
``python benchmarks/bad_inputs.py``."""

import dataclasses
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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_policy, bench):
    """The corpus, built once (fixtures, run folders); each test runs fresh copies of its cases."""
    cases = bench.build(tmp_path_factory.mktemp("bad_inputs") / "fixtures", policy=str(tiny_policy))
    return lambda: [dataclasses.replace(c) for c in cases]


def test_a_sample_of_the_corpus_gets_clear_errors(tmp_path, corpus, bench):
    cases = corpus()
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


def test_an_input_that_the_command_writes_over_is_refused_and_kept(tmp_path, corpus, bench):
    """Every command whose --out holds (or whose --overwrite would delete) one of its own inputs
    refuses in one line before any work, and the input is still there: po-iterative (its start
    policy in a round of its run, its data in its metrics), demo (an --rl-set input in its
    stages or report), and rl, sft, train-rm, po with a model in the run they write."""
    kept = [c for c in corpus() if c.keep]
    assert {_command(c.argv) for c in kept} >= {"po-iterative", "demo", "rl", "sft", "train-rm", "po"}
    assert len(kept) >= 11
    bench.run_cases(kept, tmp_path / "work", jobs=2, limit=60)
    bad = [f"{c.name}: {c.verdict()}" for c in kept if c.verdict() is not None]
    assert not bad, "\n".join(bad)
    for c in kept:
        assert c.rc == 2 and not c.lost, c.name
        assert "lies in" in c.message[-1] and "writes there" in c.message[-1] or \
            "--overwrite would delete it" in c.message[-1], (c.name, c.message)
        assert all(Path(k).exists() for k in c.keep)
    assert any("(po.model.name_or_path)" in c.message[-1] for c in kept)
    assert any("(--rl-set data.train_path)" in c.message[-1] for c in kept)


def test_the_verdict_flags_a_deleted_input(bench, tmp_path):
    gone = bench.Case("x", "gone", [], rc=2, err="error: refused\n", keep=[str(tmp_path / "m")],
                      lost=[str(tmp_path / "m")])
    assert gone.verdict() == f"deleted its input {tmp_path / 'm'}"

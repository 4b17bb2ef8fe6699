"""A corpus of bad inputs across every command: does each get a clear one-line error?

It builds, in a temporary folder, a tiny policy, small valid data files and a set of bad ones
(missing, malformed, null or wrongly typed fields, non-finite and out-of-range numbers, sizes
without bound, unwritable or clashing outputs, runs of another config, damaged checkpoints,
things that are not models, bad config files and options), then runs every case as its own
process and checks, per class, that it exits 2 with one line of error (``error: ...``, or click's
usage error naming the option) and no traceback, that it wrote nothing into its (empty)
working folder, and that the inputs it was given to overwrite or delete are still there. Cases that fail are listed; the script exits 1 when any does.

The processes are forked from this one after ``rewardlab`` and its heavy dependencies are
imported, so a case costs milliseconds to start instead of seconds (the whole corpus runs in
about a minute on two cores); each runs ``rewardlab.cli.main.main(argv)`` in a fresh empty
working folder, with its output captured, and is stopped after ``--case-limit`` seconds.

    python benchmarks/bad_inputs.py [--jobs 2] [--case-limit 60] [--only CLASS] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

torch.set_num_threads(1)   # before any torch work: forked children must not inherit a thread pool

from rewardlab.cli.main import build_app, main  # noqa: E402
from rewardlab.config import load_config  # noqa: E402
from rewardlab.data.testbed import generate_problems  # noqa: E402
from rewardlab.io import write_jsonl  # noqa: E402
from rewardlab.models.loading import make_testbed_policy  # noqa: E402
from rewardlab.rl.config import RLConfig  # noqa: E402
from rewardlab.sft.trainer import SFTConfig  # noqa: E402
from rewardlab.training.rundir import prepare_run_dir  # noqa: E402

HUGE = str(10 ** 12)


@dataclass
class Case:
    cls: str
    name: str
    argv: list[str]
    rc: int | None = None
    out: str = ""
    err: str = ""
    wall: float = 0.0
    left: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)   # inputs that must still exist afterwards
    lost: list[str] = field(default_factory=list)   # those of them that do not

    @property
    def message(self) -> list[str]:
        """The lines of stderr that are not warnings."""
        return [ln for ln in self.err.splitlines() if ln.strip() and not ln.startswith("warning:")]

    def verdict(self) -> str | None:
        """None when the case got a clear one-line error with exit 2 and wrote nothing, else why not."""
        if self.rc is None:
            return "timed out"
        if "Traceback" in self.err or "Traceback" in self.out:
            last = self.message[-1] if self.message else ""
            return f"traceback, exit {self.rc}: {last[:160]}"
        if self.rc != 2:
            return f"exit {self.rc}" + (f": {self.message[-1][:160]}" if self.message else "")
        msg = self.message
        usage = any(ln.startswith("Error:") or "Error" in ln for ln in msg) and any(
            "Usage:" in ln for ln in msg)
        if not usage and (len(msg) != 1 or not msg[0].startswith("error:")):
            return f"not one line of error ({len(msg)} lines): {' | '.join(msg)[:200]}"
        if self.left:
            return f"wrote {', '.join(self.left[:3])} before refusing"
        if self.lost:
            return f"deleted its input {', '.join(self.lost[:3])}"
        return None


# ---------------------------------------------------------------------------------------------
# fixtures


def read_only_dir(root: Path) -> str:
    """A directory this process cannot write to (root ignores mode bits: then sysfs)."""
    d = root / "ro"
    d.mkdir(exist_ok=True)
    d.chmod(stat.S_IRUSR | stat.S_IXUSR)
    for cand in (str(d), "/sys/kernel"):
        try:
            open(os.path.join(cand, ".rewardlab-probe"), "w").close()
        except OSError:
            return cand
        os.unlink(os.path.join(cand, ".rewardlab-probe"))
    raise SystemExit("no read-only directory available")


def jl(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def make_fixtures(root: Path, policy: str | None = None) -> dict[str, str]:
    """Valid and bad files under ``root``; ``policy``: a tiny policy to use (else one is made)."""
    root.mkdir(parents=True, exist_ok=True)
    f: dict[str, str] = {}
    f["policy"] = policy or str(make_testbed_policy(root / "policy", size="tiny", seed=0))
    probs = generate_problems(n=6, seed=0)
    write_jsonl(root / "problems.jsonl", (p.to_dict() for p in probs))
    f["problems"] = str(root / "problems.jsonl")
    p0 = probs[0].to_dict()
    steps = list(probs[0].steps or ["1 + 1 = 2"])
    f["samples"] = jl(root / "samples.jsonl", [
        {"id": p.id, "question": p.question, "gold": p.answer, "steps": list(p.steps or ["x"]),
         "outcome": 1, "step_labels": [1] * len(p.steps or ["x"])} for p in probs])
    f["rm"] = f["samples"]
    f["pairs"] = jl(root / "pairs.jsonl", [{"question": p.question, "chosen": "a\n", "rejected": "b\n"}
                                           for p in probs])
    f["solutions"] = jl(root / "solutions.jsonl", [{"question": probs[0].question, "steps": steps}])
    f["pb"] = jl(root / "pb.jsonl", [{"id": f"x{i}", "problem": "q", "steps": ["a", "b"],
                                      "final_answer_correct": False, "label": 1} for i in range(4)])
    f["preds"] = jl(root / "preds.jsonl", [{"id": p.id, "prediction": "1"} for p in probs])
    # malformed files
    f["bad_json"] = jl(root / "bad_json.jsonl", ['{"question": "q", "answer": '])
    f["not_object"] = jl(root / "not_object.jsonl", ["[1, 2, 3]"])
    f["empty"] = jl(root / "empty.jsonl", [])
    (root / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9"}\n')
    f["latin1"] = str(root / "latin1.jsonl")
    (root / "a_dir.jsonl").mkdir(exist_ok=True)
    f["a_dir"] = str(root / "a_dir.jsonl")
    f["missing"] = str(root / "missing.jsonl")
    # null, missing and wrongly typed fields
    f["null_answer"] = jl(root / "null_answer.jsonl", [{**p0, "answer": None}])
    f["no_answer"] = jl(root / "no_answer.jsonl", [{k: v for k, v in p0.items() if k != "answer"}])
    f["null_question"] = jl(root / "null_question.jsonl", [
        {"question": None, "gold": "1", "steps": steps, "outcome": 1, "step_labels": [1] * len(steps)}])
    f["steps_string"] = jl(root / "steps_string.jsonl", [
        {"question": "q", "gold": "1", "steps": "a b", "outcome": 1, "step_labels": [1]}])
    f["labels_string"] = jl(root / "labels_string.jsonl", [
        {"question": "q", "gold": "1", "steps": ["a"], "outcome": 1, "step_labels": "yes"}])
    f["pair_no_rejected"] = jl(root / "pair_no_rejected.jsonl", [{"question": "q", "chosen": "a"}])
    f["pair_null_chosen"] = jl(root / "pair_null_chosen.jsonl",
                               [{"question": "q", "chosen": None, "rejected": "b"}])
    f["question_number"] = jl(root / "question_number.jsonl", [{**p0, "question": 3}])
    f["pb_bad_label"] = jl(root / "pb_bad_label.jsonl", [{"id": "x", "problem": "q", "steps": ["a"],
                                                          "final_answer_correct": False,
                                                          "label": "first"}])
    f["preds_no_id"] = jl(root / "preds_no_id.jsonl", [{"prediction": "1"}])
    # config files
    (root / "bad.yaml").write_text("lr: [1, \n")
    f["bad_yaml"] = str(root / "bad.yaml")
    (root / "unknown.yaml").write_text("no_such_field: 1\n")
    f["unknown_yaml"] = str(root / "unknown.yaml")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    f["list_yaml"] = str(root / "list.yaml")
    f["missing_yaml"] = str(root / "missing.yaml")
    # output places
    (root / "afile").write_text("keep me\n")
    f["afile"] = str(root / "afile")
    (root / "adir").mkdir(exist_ok=True)
    f["adir"] = str(root / "adir")
    f["ro"] = read_only_dir(root)
    # things that are not models
    (root / "empty_model").mkdir(exist_ok=True)
    f["empty_model"] = str(root / "empty_model")
    (root / "junk_model").mkdir(exist_ok=True)
    (root / "junk_model" / "config.json").write_text("{not json")
    f["junk_model"] = str(root / "junk_model")
    return f


SFT = ["--set", "model.size=tiny", "--set", "steps=1", "--set", "batch_size=2",
       "--set", "data.n_train=4", "--set", "data.n_test=0", "--set", "progress=false",
       "--set", "eval_every=0", "--set", "save_every=0"]


def rl_args(f):
    return ["--model", f["policy"], "--set", "steps=1", "--set", "prompts_per_step=2",
            "--set", "sampling.n=2", "--set", "data.n_train=4", "--set", "data.n_test=0",
            "--set", "progress=false", "--set", "eval_every=0", "--set", "save_every=0",
            "--set", "minibatch_size=4"]


def rm_args(f):
    return ["--kind", "prm", "--set", "steps=1", "--set", "batch_size=2",
            "--set", "progress=false", "--set", "tensorboard=false"]


def po_args(f):
    return ["--model", f["policy"], "--set", "steps=1", "--set", "batch_size=2",
            "--set", "progress=false", "--set", "eval_every=0", "--set", "save_every=0",
            "--set", "data.n_test=0"]


def poi_args(f):
    return ["--set", "rounds=1", "--set", "problems_per_round=2",
            "--set", f"po.model.name_or_path={f['policy']}", "--set", "po.progress=false",
            "--set", "sampling.n=2", "--set", "po.data.n_train=4", "--set", "po.data.n_test=0",
            "--set", "eval_rounds=false"]


def make_runs(root: Path, f: dict) -> None:
    """Run folders: one holding a run (of the SFT args above), and ones whose checkpoints are
    all damaged in some way (config as the CLI makes it, so only the checkpoints are wrong)."""
    def sft_cfg(out):
        ov = [a for a in SFT if a != "--set"] + [f"out={out}"]
        return load_config(SFTConfig, None, ov)

    run = root / "sft_run"
    prepare_run_dir(run, sft_cfg(run), "sft")
    (run / "metrics.jsonl").write_text('{"step": 1, "sft/loss": 1.0}\n')
    f["sft_run"] = str(run)
    rl = root / "rl_run"
    prepare_run_dir(rl, load_config(RLConfig, None, [a for a in rl_args(f)[2:] if a != "--set"]
                                    + [f"out={rl}", f"model.name_or_path={f['policy']}"]), "ppo")
    (rl / "metrics.jsonl").write_text('{"step": 1}\n')
    f["rl_run"] = str(rl)
    # a po-iterative run (a finished round's policy, round rows) and a demo's folder: their own
    # outputs given back to them as inputs
    poi = root / "poi_run"
    (poi / "round_0" / "final").mkdir(parents=True)
    (poi / "round_0" / "final" / "config.json").write_text("{}\n")
    (poi / "metrics.jsonl").write_text('{"step": 1, "round": 0}\n')
    (poi / "config.yaml").write_text("rounds: 1\n")
    f["poi_run"] = str(poi)
    demo = root / "demo_run"
    (demo / "sft" / "final").mkdir(parents=True)
    (demo / "sft" / "final" / "config.json").write_text("{}\n")
    (demo / "results.json").write_text("{}\n")
    f["demo_run"] = str(demo)
    damage = {
        "empty_step_dir": {},
        "empty_weights": {"model.safetensors": b"", "trainer_state.pt": b"PK", "checkpoint.json": b"{}"},
        "truncated_weights": {"model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":",
                              "checkpoint.json": b'{"files": {}}'},
        "no_trainer_state": {"model.safetensors": b"\x02\x00\x00\x00\x00\x00\x00\x00{}",
                             "checkpoint.json": b'{"files": {}}'},
        "no_manifest": {"model.safetensors": b"\x02\x00\x00\x00\x00\x00\x00\x00{}"},
    }
    for name, files in damage.items():
        out = root / f"ck_{name}"
        prepare_run_dir(out, sft_cfg(out), "sft")
        ck = out / "checkpoints" / "step_0000001"
        ck.mkdir(parents=True)
        for fn, data in files.items():
            (ck / fn).write_bytes(data)
        (out / "checkpoints" / "latest").write_text("step_0000001")
        f[f"ck_{name}"] = str(out)


# ---------------------------------------------------------------------------------------------
# the corpus


def corpus(f: dict) -> list[Case]:
    C: list[Case] = []

    def add(cls, name, argv, keep=()):
        C.append(Case(cls, name, [str(a) for a in argv], keep=[str(k) for k in keep]))

    P, pol = f["problems"], f["policy"]
    # readers: (command name, argv with {} for the bad file)
    readers = {
        "data show": ["data", "show", "testbed", "--path", "{}"],
        "grade": ["grade", "--dataset", "testbed", "--path", P, "--predictions", "{}"],
        "sample": ["sample", "--model", pol, "--data", "{}", "--samples", "1"],
        "label": ["label", "--input", "{}"],
        "score": ["score", "--model", pol, "--input", "{}", "--out", "o.jsonl"],
        "eval": ["eval", "--model", pol, "--data", "{}"],
        "eval-prm": ["eval-prm", "--model", pol, "--data", "{}"],
        "bon": ["bon", "--model", pol, "--data", "{}", "--samples", "2"],
        "pairs": ["pairs", "--input", "{}"],
        "train-rm": ["train-rm", "--data", "{}", *rm_args(f)],
        "po": ["po", "--pairs", "{}", *po_args(f)],
        "sft": ["sft", *SFT, "--set", "data.train_path={}"],
        "rl": ["rl", *rl_args(f), "--set", "data.train_path={}"],
    }

    def sub(argv, path):
        return [a.replace("{}", path) for a in argv]

    for cmd, argv in readers.items():
        add("missing input file", cmd, sub(argv, f["missing"]))
        for kind in ("bad_json", "not_object", "empty", "latin1", "a_dir"):
            add("malformed data", f"{cmd} {kind}", sub(argv, f[kind]))
    add("missing input file", "po-iterative", ["po-iterative", *poi_args(f), "--set",
                                               f"po.data.train_path={f['missing']}"])
    add("missing input file", "grade dataset", ["grade", "--dataset", "testbed", "--path",
                                                f["missing"], "--predictions", f["preds"]])
    add("missing input file", "train-rm eval-data", ["train-rm", "--data", f["rm"], "--eval-data",
                                                     f["missing"], *rm_args(f)])

    # null, missing and wrongly typed fields
    fields = [
        ("data show", "null_answer"), ("data show", "no_answer"), ("data show", "question_number"),
        ("sample", "null_answer"), ("eval", "null_answer"), ("bon", "null_answer"),
        ("sft", "null_answer"), ("rl", "null_answer"), ("sft", "question_number"),
        ("label", "null_question"), ("label", "steps_string"), ("train-rm", "null_question"),
        ("train-rm", "steps_string"), ("train-rm", "labels_string"), ("score", "null_question"),
        ("score", "steps_string"), ("pairs", "null_question"), ("pairs", "steps_string"),
        ("po", "pair_no_rejected"), ("po", "pair_null_chosen"), ("eval-prm", "pb_bad_label"),
        ("eval-prm", "null_question"), ("grade", "preds_no_id"),
    ]
    for cmd, kind in fields:
        add("null, missing or mistyped field", f"{cmd} {kind}", sub(readers[cmd], f[kind]))

    # non-finite numbers
    nonfinite = {
        "sft": [f"{k}={v}" for k, v in (("lr", ".inf"), ("grad_clip", "nan"), ("weight_decay", ".inf"),
                                          ("min_lr_ratio", ".nan"))],
        "train-rm": ["lr=.inf", "grad_clip=nan", "min_lr_ratio=.inf", "centering=nan", "margin=.inf"],
        "rl": ["kl.coef=.inf", "value.lr=.nan", "entropy_coef=.nan", "gamma=.nan", "lam=.inf",
               "grad_clip=.nan", "clip_eps=.nan", "reward.correct_reward=.inf",
               "sampling.top_p=.nan", "sampling.temperature=.inf", "lr=.nan",
               "reward.prm.eta=.nan", "reward.prm.alpha=.inf"],
        "po": ["lr=.nan", "hparams.beta=.inf", "grad_clip=.nan"],
        "po-iterative": ["po.lr=.inf", "threshold=.nan", "sampling.temperature=.nan"],
    }
    base = {"sft": ["sft", *SFT], "train-rm": ["train-rm", "--data", f["rm"], *rm_args(f)],
            "rl": ["rl", *rl_args(f)], "po": ["po", "--pairs", f["pairs"], *po_args(f)],
            "po-iterative": ["po-iterative", *poi_args(f)]}
    for cmd, sets in nonfinite.items():
        for s in sets:
            add("non-finite number", f"{cmd} {s}", [*base[cmd], "--set", s])
    for argv in (["demo", "--eta", "nan"], ["demo", "--alpha", "inf"], ["demo", "--alpha", "-inf"],
                 ["sample", "--model", pol, "--data", P, "--temperature", "nan"],
                 ["eval", "--model", pol, "--data", P, "--samples", "2", "--temperature", "inf"],
                 ["bon", "--model", pol, "--data", P, "--temperature", "nan"],
                 ["pairs", "--input", f["samples"], "--threshold", "nan"],
                 ["eval-prm", "--model", pol, "--data", f["pb"], "--threshold", "nan"]):
        add("non-finite number", " ".join(argv[:1] + argv[-2:]), argv)

    # out-of-range values
    out_of_range = {
        "rl": ["reward.prm.eta=5", "reward.prm.eta=-3", "lr=-1", "sampling.temperature=-1",
               "ppo_epochs=0", "sampling.top_p=2", "steps=0", "prompts_per_step=0", "kl.coef=-1",
               "algo=nope", "sampling.n=0"],
        "sft": ["batch_size=0", "steps=-1", "lr=-1", "warmup_steps=-5", "max_len=0"],
        "train-rm": ["lr=-1", "eval_split=2", "batch_size=0", "kind=nope", "form=nope"],
        "po": ["loss=nope", "batch_size=0", "hparams.beta=-1"],
        "po-iterative": ["rounds=0", "problems_per_round=0", "kind=nope"],
    }
    for cmd, sets in out_of_range.items():
        for s in sets:
            add("out-of-range value", f"{cmd} {s}", [*base[cmd], "--set", s])
    for argv in (["demo", "--seeds", "0"], ["demo", "--workers", "0"], ["demo", "--eta", "5"],
                 ["demo", "--budget", "rm_steps=-1"], ["demo", "--steps", "0"],
                 ["sample", "--model", pol, "--data", P, "--temperature", "-1"],
                 ["eval", "--model", pol, "--data", P, "--top-p", "2"],
                 ["bon", "--model", pol, "--data", P, "--temperature", "0"],
                 ["data", "testbed", "--min-ops", "5", "--max-ops", "2"],
                 ["eval-prm", "--model", pol, "--data", f["pb"], "--val-fraction", "1"],
                 ["pairs", "--input", f["samples"], "--max-per-problem", "0"]):
        add("out-of-range value", " ".join(argv[:1] + argv[-2:]), argv)

    # sizes without bound
    for argv in (["sample", "--model", pol, "--data", P, "--samples", HUGE],
                 ["eval", "--model", pol, "--data", P, "--samples", HUGE],
                 ["bon", "--model", pol, "--data", P, "--samples", HUGE],
                 ["label", "--model", pol, "--data", P, "--samples", HUGE],
                 ["data", "testbed", "-n", HUGE],
                 ["sample", "--model", pol, "--data", P, "--max-new-tokens", HUGE],
                 ["rl", *rl_args(f), "--set", f"sampling.n={HUGE}"],
                 ["demo", "--steps", HUGE]):
        add("size without bound", " ".join(argv[:1] + argv[-2:]), argv)

    # output paths
    ro = f["ro"]
    file_out = {"data testbed": ["data", "testbed", "-n", "2"],
                "sample": readers["sample"][:-2] + ["--samples", "1"],
                "label": ["label", "--input", f["samples"]],
                "score": ["score", "--model", pol, "--input", f["solutions"]],
                "pairs": ["pairs", "--input", f["samples"]],
                "grade": ["grade", "--dataset", "testbed", "--path", P, "--predictions", f["preds"]]}
    file_out["sample"] = ["sample", "--model", pol, "--data", P, "--samples", "1"]
    for cmd, argv in file_out.items():
        add("output path", f"{cmd} out=dir", [*argv, "--out", f["adir"]])
        add("output path", f"{cmd} out=read-only", [*argv, "--out", os.path.join(ro, "x.jsonl")])
        add("output path", f"{cmd} out under a file", [*argv, "--out", os.path.join(f["afile"], "x.jsonl")])
    dir_out = {"eval": ["eval", "--model", pol, "--data", P], "bon": ["bon", "--model", pol, "--data", P],
               "eval-prm": ["eval-prm", "--model", pol, "--data", f["pb"]],
               "sft": base["sft"], "train-rm": base["train-rm"], "rl": base["rl"], "po": base["po"],
               "po-iterative": base["po-iterative"], "demo": ["demo", "--quick"]}
    for cmd, argv in dir_out.items():
        add("output path", f"{cmd} out=file", [*argv, "--out", f["afile"]])
        add("output path", f"{cmd} out=read-only", [*argv, "--out", os.path.join(ro, "run")])
        add("output path", f"{cmd} out under a file", [*argv, "--out", os.path.join(f["afile"], "run")])
    for name, argv in (("pairs out=input", ["pairs", "--input", f["samples"], "--out", f["samples"]]),
                       ("label out=input", ["label", "--input", f["samples"], "--out", f["samples"]]),
                       ("score out=input", ["score", "--model", pol, "--input", f["solutions"],
                                            "--out", f["solutions"]]),
                       ("grade out=input", ["grade", "--dataset", "testbed", "--path", P,
                                            "--predictions", f["preds"], "--out", f["preds"]]),
                       ("grade out=dataset", ["grade", "--dataset", "testbed", "--path", P,
                                              "--predictions", f["preds"], "--out", P]),
                       ("label out=pairs", ["label", "--input", f["samples"], "--out", "o.jsonl",
                                            "--pairs", "o.jsonl"]),
                       ("label pairs=step-pairs", ["label", "--input", f["samples"], "--pairs",
                                                   "p.jsonl", "--step-pairs", "./p.jsonl"]),
                       ("sample out=data", ["sample", "--model", pol, "--data", P, "--out", P]),
                       ("train-rm data in its run", [*base["train-rm"], "--data",
                                                     os.path.join(f["sft_run"], "metrics.jsonl"),
                                                     "--out", f["sft_run"]]),
                       ("po pairs in the run --overwrite deletes",
                        ["po", *po_args(f), "--pairs", os.path.join(f["sft_run"], "metrics.jsonl"),
                         "--out", f["sft_run"], "--overwrite"])):
        add("output path", name, argv)
    # an input that the run writes over, or that --overwrite deletes: refused, and still there
    poi, demo = Path(f["poi_run"]), Path(f["demo_run"])
    r0 = poi / "round_0" / "final"
    for name, argv, keep in (
            ("po-iterative start policy in its rounds --overwrite",
             [*base["po-iterative"], "--set", f"po.model.name_or_path={r0}", "--out", poi,
              "--overwrite"], r0),
            ("po-iterative start policy in its rounds",
             [*base["po-iterative"], "--set", f"po.model.name_or_path={r0}", "--out", poi], r0),
            ("po-iterative data in its run --overwrite",
             [*base["po-iterative"], "--set", f"po.data.train_path={poi / 'metrics.jsonl'}",
              "--out", poi, "--overwrite"], poi / "metrics.jsonl"),
            ("po-iterative data in its run",
             [*base["po-iterative"], "--set", f"po.data.train_path={poi / 'metrics.jsonl'}",
              "--out", poi], poi / "metrics.jsonl"),
            ("demo --rl-set data = its results.json",
             ["demo", "--quick", "--out", demo, "--rl-set", f"data.train_path={demo / 'results.json'}"],
             demo / "results.json"),
            ("demo --rl-set policy in its stages",
             ["demo", "--quick", "--out", demo, "--rl-set",
              f"model.name_or_path={demo / 'sft' / 'final'}"], demo / "sft" / "final"),
            ("rl policy = its own final --overwrite",
             [*base["rl"], "--model", r0, "--out", r0.parent, "--overwrite"], r0),
            ("rl critic init = its own final",
             [*base["rl"], "--set", f"value.init={r0}", "--out", r0.parent], r0),
            ("sft model = its own final --overwrite",
             [*base["sft"], "--model", r0, "--out", r0.parent, "--overwrite"], r0),
            ("train-rm base = its own final", [*base["train-rm"], "--model", r0, "--out", r0.parent], r0),
            ("po ref model = its own final --overwrite",
             [*base["po"], "--set", f"ref_model={r0}", "--out", r0.parent, "--overwrite"], r0)):
        add("output path", name, argv, keep=[keep])

    # run folders
    run = f["sft_run"]
    add("run folder", "sft other config", ["sft", *SFT, "--out", run, "--set", "lr=0.5"])
    add("run folder", "sft other model size", ["sft", *SFT, "--out", run, "--set", "model.size=small"])
    add("run folder", "sft resume=false", ["sft", *SFT, "--out", run, "--set", "resume=false"])
    add("run folder", "rl other config", [*base["rl"], "--out", f["rl_run"], "--set", "kl.coef=0.5"])
    add("run folder", "rl other reward", [*base["rl"], "--out", f["rl_run"], "--set",
                                          "reward.correct_reward=2"])
    add("run folder", "train-rm over an sft run", [*base["train-rm"], "--out", run])
    add("run folder", "po over an sft run", [*base["po"], "--out", run])

    # broken checkpoints: every checkpoint damaged
    for k in ("empty_step_dir", "empty_weights", "truncated_weights", "no_trainer_state", "no_manifest"):
        add("broken checkpoints", k, ["sft", *SFT, "--out", f[f"ck_{k}"]])

    # not models
    for k in ("missing", "afile", "empty_model", "junk_model"):
        m = f[k] if k != "missing" else str(Path(f["missing"]).with_suffix(""))
        add("not a model", f"sample {k}", ["sample", "--model", m, "--data", P])
        add("not a model", f"eval {k}", ["eval", "--model", m, "--data", P])
        add("not a model", f"bon {k}", ["bon", "--model", m, "--data", P])
        add("not a model", f"score {k}", ["score", "--model", m, "--input", f["solutions"], "--out", "o.jsonl"])
        add("not a model", f"rl {k}", ["rl", *rl_args(f)[2:], "--model", m])
        add("not a model", f"sft {k}", ["sft", *SFT, "--model", m])
        add("not a model", f"po {k}", ["po", "--pairs", f["pairs"], *po_args(f)[2:], "--model", m])
        add("not a model", f"train-rm {k}", [*base["train-rm"], "--model", m])
    for argv in (["eval", "--model", pol, "--data", P, "--device", "foo"],
                 ["sample", "--model", pol, "--data", P, "--device", "foo"],
                 ["score", "--model", pol, "--input", f["solutions"], "--out", "o.jsonl", "--device", "foo"],
                 ["eval", "--model", pol, "--data", P, "--dtype", "float7"],
                 ["sft", *SFT, "--set", "model.device=foo"],
                 ["rl", *rl_args(f), "--set", "model.dtype=float7"]):
        add("not a model", " ".join(argv[:1] + argv[-2:]), argv)

    # config files and --set
    for cmd in ("sft", "train-rm", "rl", "po", "po-iterative"):
        for k in ("bad_yaml", "unknown_yaml", "list_yaml", "missing_yaml"):
            add("config", f"{cmd} {k}", [*base[cmd], "--config", f[k]])
        add("config", f"{cmd} --set without =", [*base[cmd], "--set", "lr"])
        add("config", f"{cmd} --set unknown field", [*base[cmd], "--set", "no_such.field=1"])
        add("config", f"{cmd} --set not a number", [*base[cmd], "--set", "max_bad_steps=abc"])

    # bad option values
    for argv in (["eval", "--model", pol, "--data", P, "--style", "latex"],
                 ["label", "--input", f["samples"], "--method", "vibes"],
                 ["label", "--input", f["samples"], "--format", "csv"],
                 ["label", "--input", f["samples"], "--method", "mc"],
                 ["pairs", "--input", f["samples"], "--kind", "triples"],
                 ["pairs", "--input", f["samples"], "--format", "csv"],
                 ["po-iterative", "--design", "nope"],
                 ["demo", "--designs", "nope"],
                 ["demo", "--budget", "no_such=1"],
                 ["demo", "--rl-set", "lr=.inf"],
                 ["score", "--model", pol, "--input", f["solutions"], "--out", "o.jsonl",
                  "--aggregation", "mean-ish"],
                 ["bon", "--model", pol, "--data", P, "--prm-tag", " ки"],
                 ["data", "show", "no_such_dataset_name"],
                 ["grade", "--dataset", "testbed", "--path", P, "--predictions", f["preds"],
                  "--style", "latex"],
                 ["sample", "--model", pol, "--data", P, "--samples", "abc"],
                 ["sample", "--model", pol, "--data", P, "--system", "be brief"]):
        add("bad option", " ".join(argv[:1] + argv[-2:]), argv)
    return C


# ---------------------------------------------------------------------------------------------
# running


def _child(case: Case, cwd: Path, out_path: Path, err_path: Path) -> None:
    """In the forked process: run the case with its output captured; never returns."""
    rc = 1
    try:
        os.chdir(cwd)
        fo, fe = os.open(out_path, os.O_WRONLY | os.O_CREAT), os.open(err_path, os.O_WRONLY | os.O_CREAT)
        os.dup2(fo, 1)
        os.dup2(fe, 2)
        # a host that captures output (pytest) may have put other objects in sys.stdout/stderr
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
        try:
            rc = main(case.argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            rc = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc if isinstance(rc, int) and 0 <= rc < 256 else 1)


def warm_up(work: Path) -> None:
    """Import every command module and run one cheap failing command in this process, so the
    forked cases start with everything imported (else each pays seconds of imports)."""
    import contextlib
    import io

    build_app()
    import transformers  # noqa: F401  (the children load models through it)
    missing = str(work / "missing.jsonl")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        main(["pairs", "--input", missing, "--out", missing])


def run_cases(cases: list[Case], work: Path, jobs: int = 2, limit: float = 60.0) -> None:
    """Run every case in a forked process, ``jobs`` at a time; fills rc, out, err, wall, left."""
    work.mkdir(parents=True, exist_ok=True)
    warm_up(work)
    pending = list(enumerate(cases))
    running: dict[int, tuple[int, Case, Path, float]] = {}
    while pending or running:
        while pending and len(running) < jobs:
            i, case = pending.pop(0)
            cwd = work / f"case_{i:03d}"
            cwd.mkdir()
            logs = work / f"log_{i:03d}"
            logs.mkdir()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(case, cwd, logs / "out", logs / "err")
            running[pid] = (i, case, cwd, time.time())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.time()
            for p, (i, case, cwd, t0) in list(running.items()):
                if now - t0 > limit:
                    os.kill(p, 9)
            time.sleep(0.02)
            continue
        i, case, cwd, t0 = running.pop(pid)
        case.wall = time.time() - t0
        case.rc = os.waitstatus_to_exitcode(status)
        if case.rc < 0:   # killed: the time limit
            case.rc = None
        logs = work / f"log_{i:03d}"
        case.out = (logs / "out").read_text(errors="replace")
        case.err = (logs / "err").read_text(errors="replace")
        case.left = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file())
        case.lost = [k for k in case.keep if not Path(k).exists()]


def report(cases: list[Case]) -> int:
    """Print per class how many got a clear one-line error; returns the number that did not."""
    by: dict[str, list[Case]] = {}
    for c in cases:
        by.setdefault(c.cls, []).append(c)
    bad = []
    print(f"{'class':<34} {'cases':>5} {'clear':>5}  {'max s':>6}")
    for cls, cs in by.items():
        ok = [c for c in cs if c.verdict() is None]
        bad += [c for c in cs if c.verdict() is not None]
        print(f"{cls:<34} {len(cs):>5} {len(ok):>5}  {max(c.wall for c in cs):>6.1f}")
    n_ok = len(cases) - len(bad)
    print(f"{'all':<34} {len(cases):>5} {n_ok:>5}")
    for c in bad:
        print(f"NOT CLEAR [{c.cls}] {c.name}: {c.verdict()}\n    argv: {' '.join(c.argv)[:300]}")
    return len(bad)


def build(root: Path, policy: str | None = None) -> list[Case]:
    """Fixtures and run folders under ``root``, and the corpus that uses them."""
    f = make_fixtures(root, policy)
    make_runs(root, f)
    return corpus(f)


def main_(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="Cases run at once.")
    ap.add_argument("--case-limit", type=float, default=60.0, help="Seconds before a case is stopped.")
    ap.add_argument("--only", default=None, help="Run only the classes containing this text.")
    ap.add_argument("--keep", default=None, help="Build in this folder and keep it.")
    args = ap.parse_args(argv)
    t0 = time.time()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bad_inputs."))
    try:
        cases = build(root / "fixtures")
        if args.only:
            cases = [c for c in cases if args.only in c.cls]
        t1 = time.time()
        run_cases(cases, root / "work", args.jobs, args.case_limit)
        n_bad = report(cases)
        print(f"{len(cases)} cases in {time.time() - t1:.1f} s (fixtures {t1 - t0:.1f} s)")
    finally:
        if not args.keep:
            ro = root / "fixtures" / "ro"
            if ro.exists():
                ro.chmod(0o755)
            shutil.rmtree(root, ignore_errors=True)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main_())

"""`rewardlab demo --quick` end to end (one test, a few minutes), plus CLI error paths."""

import json
import os
import subprocess
import sys

import pytest

from rewardlab.cli.main import main
from rewardlab.demo import DEFAULT_DESIGNS, DESIGNS
from rewardlab.eval.report import METRICS as REPORT_METRICS


def test_rl_cli_rejects_bad_config(tmp_path, capsys):
    assert main(["rl", "--set", "reward.prm.refine=bogus", "--out", str(tmp_path / "x")]) == 2
    assert "refine" in capsys.readouterr().err
    assert main(["rl", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["rl", "--set", "steps=many"]) == 2
    assert main(["demo", "--seeds", "0", "--out", str(tmp_path / "d")]) == 2
    assert main(["demo", "--rl-set", "lr=fast", "--out", str(tmp_path / "d")]) == 2
    assert "--rl-set" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_rm_backbone_is_the_policy_unless_trained_longer(tmp_path):
    from rewardlab.demo import DemoConfig, plan_jobs
    cfg = DemoConfig(out=str(tmp_path), designs=["success", "prm_raw", "orm", "grpo_process"], seeds=2)
    cfg.budget.rm_backbone_steps = 800   # a separate, longer-trained backbone
    cfg.budget.prm_members = cfg.budget.orm_members = 1   # single models (ensembles: below)
    jobs, runs, _ = plan_jobs(cfg)
    by = {j.name: j for j in jobs}
    assert by["rm backbone"].arg.steps == cfg.budget.rm_backbone_steps
    assert by["rm prm"].arg.members[0].model == str(tmp_path / "rm" / "backbone" / "final")
    assert set(by["rm prm"].deps) == {"rm data", "rm backbone"}
    # the ORM starts from the SFT policy and trains while the backbone does (unless asked)
    assert by["rm orm"].arg.members[0].model == str(tmp_path / "sft" / "final")
    assert by["rm orm"].deps == ("rm data",)
    # each reward model trains its own number of steps
    assert (by["rm prm"].arg.members[0].steps == cfg.budget.prm_steps != cfg.budget.rm_steps
            == by["rm orm"].arg.members[0].steps)
    cfg.budget.orm_from_backbone = True
    orm = {j.name: j for j in plan_jobs(cfg)[0]}["rm orm"]
    assert orm.arg.members[0].model == by["rm prm"].arg.members[0].model
    assert set(orm.deps) == {"rm data", "rm backbone"}
    cfg.budget.orm_from_backbone = False
    assert by["prm_raw/s1"].deps == ("sft", "rm prm") and by["orm/s0"].deps == ("sft", "rm orm")
    assert by["success/s0"].deps == ("sft",)
    names = [j.name for j in jobs]   # success-only runs last: they fill gaps, not the tail
    assert names[-2:] == ["success/s0", "success/s1"] and names[:2] == ["sft", "rm backbone"]
    assert names[-5:-3] == ["grpo_process/s0", "grpo_process/s1"]   # short runs last, then bon
    assert runs["prm_raw"] == [tmp_path / "rl" / "prm_raw" / "s0", tmp_path / "rl" / "prm_raw" / "s1"]
    # a preference design: iterative PO on the RL runs' budget of samples, needing only the SFT policy
    cfg.designs.append("step_dpo")
    by = {j.name: j for j in plan_jobs(cfg)[0]}
    po = by["step_dpo/s1"].arg
    assert by["step_dpo/s1"].deps == ("sft",) and by["step_dpo/s1"].steps == po.rounds == 3
    assert po.rounds * po.problems_per_round * po.sampling.n >= cfg.budget.rl_steps * cfg.budget.rl_prompts * cfg.budget.rl_n
    assert po.out == str(tmp_path / "rl" / "step_dpo" / "s1") and po.po.loss == "step_dpo"
    cfg.budget.rm_backbone_steps = cfg.budget.sft_steps
    by = {j.name: j for j in plan_jobs(cfg)[0]}
    assert "rm backbone" not in by and by["rm orm"].arg.members[0].model == str(tmp_path / "sft" / "final")
    assert by["rm orm"].deps == ("rm data",)   # no backbone job to wait for


def test_reward_model_ensembles_train_their_members_as_jobs(tmp_path):
    from rewardlab.demo import DemoConfig, plan_jobs
    from rewardlab.config import ConfigError
    cfg = DemoConfig(out=str(tmp_path), designs=["prm_raw", "orm"], seeds=1)
    cfg.budget.prm_members, cfg.budget.prm_forms, cfg.budget.orm_members = 3, "lm,head", 2
    cfg.budget.orm_from_backbone = True
    by = {j.name: j for j in plan_jobs(cfg)[0]}
    prm = [by[f"rm prm m{k}"].arg for k in range(3)]
    assert [m.seed for m in prm] == [0, 1, 2] and [m.form for m in prm] == ["lm", "head", "lm"]
    assert [m.out for m in prm] == [str(tmp_path / "rm" / "prm" / f"m{k}") for k in range(3)]
    assert all(set(by[f"rm prm m{k}"].deps) == {"rm data", "rm backbone"} for k in range(3))
    assert by["rm prm"].deps == ("rm prm m0", "rm prm m1", "rm prm m2")
    assert by["rm prm"].arg.ensemble and by["rm prm"].arg.out == tmp_path / "rm" / "prm"
    assert by["rm orm"].deps == ("rm orm m0", "rm orm m1") and "rm orm m2" not in by
    assert [by[f"rm orm m{k}"].arg.seed for k in range(2)] == [0, 1]
    # the RL runs and best-of-N wait for the ensembles, not for single members
    assert by["prm_raw/s0"].deps == ("sft", "rm prm") and by["orm/s0"].deps == ("sft", "rm orm")
    cfg.budget.prm_forms = "lm,tree"
    with pytest.raises(ConfigError, match="prm_forms"):
        cfg.validate()


def _record_job(arg, on_step):
    log, name = arg
    on_step(1)
    with open(log, "a") as f:
        f.write(name + "\n")
    return name.upper()


@pytest.mark.parametrize("workers", [1, 2])
def test_run_jobs_respects_dependencies(tmp_path, workers):
    from rewardlab.demo import Job, run_jobs
    from rewardlab.training.progress import JobBoard
    log = tmp_path / "order.txt"
    jobs = [Job(n, "s", _record_job, (str(log), n), deps)
            for n, deps in [("c", ("a", "b")), ("a", ()), ("b", ("a",)), ("d", ())]]
    got = {}
    with JobBoard([j.name for j in jobs], {}, live=False, log=lambda s: None) as board:
        took = run_jobs(jobs, workers, board, lambda j, r: got.setdefault(j.name, r))
    order = log.read_text().split()
    assert sorted(order) == ["a", "b", "c", "d"] and set(took) == set(order)
    assert order.index("a") < order.index("b") < order.index("c")
    assert got == {"a": "A", "b": "B", "c": "C", "d": "D"}
    with pytest.raises(ValueError, match="unknown"):
        run_jobs([Job("x", "s", _record_job, (str(log), "x"), ("y",))], workers, board, lambda j, r: None)


@pytest.mark.parametrize("design,loss,kind", [("dpo", "dpo", "outcome"), ("kto", "kto", "outcome"),
                                              ("step_dpo", "step_dpo", "step")])
def test_demo_po_designs_carry_the_tuned_settings(tmp_path, design, loss, kind):
    """The demo's preference designs train at the testbed-tuned learning rate (3e-6, not
    POConfig's 1e-4, at which they collapsed the SFT policy: docs/preference.md) with the
    sweep's other settings, on exactly an RL run's budget of sampled solutions."""
    from pathlib import Path

    from rewardlab.demo import DemoConfig, po_config
    from rewardlab.preference.iterative import PO_TESTBED_LR
    from rewardlab.preference.trainer import POConfig
    cfg = DemoConfig(out=str(tmp_path), designs=[design], seeds=1)
    pc = po_config(cfg, design, 0, Path(tmp_path) / "sft")
    assert PO_TESTBED_LR == 3e-6 and pc.po.lr == PO_TESTBED_LR != POConfig().lr
    assert (pc.po.loss, pc.kind) == (loss, kind)
    assert pc.po.hparams.beta == 0.1 and pc.epochs == 2.0 and pc.max_pairs_per_problem == 4
    assert pc.ref == "previous" and pc.rounds == 3 and pc.sampling.n == 8
    b = cfg.budget
    assert pc.rounds * pc.problems_per_round * pc.sampling.n == b.rl_steps * b.rl_prompts * b.rl_n == 1920



def test_demo_budget_overrides(tmp_path, capsys):
    from rewardlab.demo import QUICK, DemoBudget, budget_with
    b = budget_with(True, ["rl_steps=3", "rm_lr=1e-4"])
    assert (b.rl_steps, b.rm_lr, b.sft_steps) == (3, 1e-4, QUICK.sft_steps)
    assert budget_with(False, []) == DemoBudget() and QUICK.rl_steps == 2   # QUICK is not mutated
    for bad in (["rm_steps=-1"], ["rm_steps=lots"], ["nope=1"], ["rm_lr=0"]):
        with pytest.raises(ValueError):
            budget_with(False, bad)
    assert main(["demo", "--budget", "sft_steps=0", "--out", str(tmp_path / "d")]) == 2
    assert "sft_steps" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_demo_rl_overrides_reach_every_run(tmp_path):
    from rewardlab.demo import DESIGNS, DemoConfig, rl_config
    cfg = DemoConfig(out=str(tmp_path), rl_overrides=["lr=7e-5", "reward.prm.alpha=3.0"])
    for design in DESIGNS:
        rc = rl_config(cfg, design, 0, tmp_path / "sft", tmp_path / "rm")
        assert rc.lr == 7e-5 and rc.reward.prm.alpha == 3.0, design
    plain = DemoConfig()
    assert rl_config(plain, "success", 0, tmp_path, tmp_path).lr == plain.budget.rl_lr != 7e-5


def test_sft_cli_missing_problems_file(tmp_path, capsys):
    code = main(["sft", "--out", str(tmp_path / "s"), "--set", f"data.train_path={tmp_path / 'nope.jsonl'}"])
    assert code == 2 and "nope.jsonl" in capsys.readouterr().err


def test_parallel_jobs_share_the_cores():
    from rewardlab.demo import job_threads
    assert [job_threads(2, a) for a in (2, 1, 0)] == [1, 2, 2]
    assert job_threads(16, 3) == 5 and job_threads(2, 5) == 1


@pytest.mark.timeout(900)
def test_quick_demo_trains_every_design_and_writes_report(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rewardlab.cli.main", "demo", "--quick", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res["designs"]) == set(DEFAULT_DESIGNS)
    for design, row in res["designs"].items():
        assert row["n_seeds"] == 3 and row["seeds"] == ["s0", "s1", "s2"], design   # --seeds 3 by default
        assert 0.0 <= row["accuracy"]["mean"] <= 1.0
        for metric in REPORT_METRICS:
            cell = row[metric]
            assert len(cell["values"]) == 3 and len(cell["ci95"]) == 2 and "std" in cell, (design, metric)
            if cell["mean"] is not None:
                assert cell["ci95"][0] <= cell["mean"] + 1e-9 <= cell["ci95"][1] + 2e-9, (design, metric)
            assert ("vs_success" in cell) == (design != "success"), (design, metric)
        for seed in range(3):
            summary = json.loads((out / "rl" / design / f"s{seed}" / "rl_summary.json").read_text())
            assert summary["actor/grad_norm"] >= 0 and "reward/success" in summary
            assert (out / "rl" / design / f"s{seed}" / "final" / "config.json").exists()
    assert list(res["stage_s"]) == ["sft", "sft eval", "rm data", "rm backbone", "rm training", "bon", "rl"]
    assert res["setting"]["seeds"] == 3 and res["wall_s"] > 0
    # the terminal gets the compact table (80 columns) and the path of the full report
    lines = r.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["design", "accuracy"])
    table = lines[head:head + len(DEFAULT_DESIGNS) + 3]
    assert max(len(ln) for ln in table) <= 80 and "…" not in "".join(table), "\n".join(table)
    assert "report.md" in r.stdout and "| design |" not in r.stdout
    prm_designs = [d for d in DEFAULT_DESIGNS if d.startswith("prm") or d == "grpo_process"]
    for d in prm_designs:
        summary = json.loads((out / "rl" / d / "s0" / "rl_summary.json").read_text())
        assert "reward/prm_return" in summary, d
    report = (out / "report.md").read_text()
    assert "| design |" in report and "SFT policy (start)" in report
    for desc, _ in (DESIGNS[d] for d in DEFAULT_DESIGNS):
        assert desc in report
    assert "## Paired differences" in report and "α = 2, η = 0.3, 3 seeds" in report
    for png in ["bon/bon.png", "curve_accuracy.png", "curve_steps_per_solution.png", "curve_prm_return.png",
                "curve_hacking.png", "curve_kl.png", "summary.png", "paired.png"]:
        assert (out / png).stat().st_size > 1000, png
    assert res["reward_models"]["prm"]["eval/n"] > 0
    # the PRM starts from the longer-trained backbone, the ORM from the policy (budget.orm_from_backbone);
    assert (out / "rm" / "backbone" / "final" / "config.json").exists()
    for kind, base in (("prm", out / "rm" / "backbone" / "final"), ("orm", out / "sft" / "final")):
        assert f"model: {base}\n" in (out / "rm" / kind / "config.yaml").read_text()
    assert "Minimal pairs" in report and "Earliest error" in report
    # a second run continues from the cached stages instead of starting over
    r2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    cached = " ".join(r2.stdout.split())   # the cached line may wrap
    for job in ["sft", "rm backbone", "sft eval", "rm data", "rm orm", "rm prm", "bon"] + [
            f"{d}/s{s}" for d in DEFAULT_DESIGNS for s in range(3)]:
        assert job in cached, job
    assert "accuracy 0." not in r2.stdout   # no job ran again


def test_cached_stages_made_with_other_settings_are_refused(tmp_path):
    from rewardlab.config import ConfigError
    from rewardlab.demo import DemoConfig, check_cached_settings
    out = tmp_path / "d"
    outputs = {"sft": [out / "sft"], "rl": [out / "rl"]}
    cfg = DemoConfig(out=str(out))
    out.mkdir()
    check_cached_settings(cfg, outputs)   # nothing cached yet: records the settings
    (out / "rl").mkdir()
    check_cached_settings(DemoConfig(out=str(out)), outputs)   # same settings: fine
    with pytest.raises(ConfigError, match=r"rl stage .*prm_alpha: cached 2.0, now 3.0"):
        check_cached_settings(DemoConfig(out=str(out), prm_alpha=3.0), outputs)
    cfg = DemoConfig(out=str(out))
    cfg.budget.unnecessary_rate = 0.5   # the SFT data changed: SFT has no outputs yet, RL has
    with pytest.raises(ConfigError, match=r"rl stage .*unnecessary_rate: cached 0.3, now 0.5"):
        check_cached_settings(cfg, outputs)
    (out / "rl").rmdir()                 # nothing cached depends on it any more: accepted
    check_cached_settings(cfg, outputs)
    assert json.loads((out / "demo_settings.json").read_text())["sft"]["unnecessary_rate"] == 0.5

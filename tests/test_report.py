"""The demo report: per-seed metrics, intervals, paired differences, tables, plots, progress."""

import json
from io import StringIO

import pytest

from rewardlab.eval.report import (METRICS, compact_table, markdown_table, paired_table,
                                   seed_metrics, summarise_runs, write_report)
from rewardlab.training.progress import JobBoard, clock, eta_seconds

T2 = 4.3027   # t_{0.975, 2}


def _write_run(d, acc, unnecessary, repeated, kl_scale, hack_scale, steps=20):
    d.mkdir(parents=True)
    summary = {"eval/accuracy": acc, "eval/maj@k": acc + 0.05, "eval/mean_steps": 3.0 + acc,
               "eval/repeated_frac": repeated, "eval/unnecessary_frac": unnecessary,
               "eval/mean_length": 30.0, "kl/ref": 99.0, "rl/wall_s": 10.0}
    (d / "rl_summary.json").write_text(json.dumps(summary))
    rows = [{"step": 0, "eval/accuracy": 0.1}]      # the step-0 evaluation: no training keys
    for s in range(1, steps + 1):
        rows.append({"step": s, "kl/ref": kl_scale * s, "response/steps": 3.0,
                     "hack/unnecessary_frac": hack_scale * s, "hack/repeated_frac": 0.0,
                     "reward/success": 0.5})
    rows[-1].update({k: v for k, v in summary.items() if k.startswith("eval/")})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def runs(tmp_path):
    """2 designs × 3 seeds with hand-chosen numbers."""
    accs = {"success": [0.5, 0.6, 0.7], "prm_clip": [0.6, 0.8, 0.7]}
    out = {}
    for design, a in accs.items():
        out[design] = []
        for seed, acc in enumerate(a):
            d = tmp_path / "rl" / design / f"s{seed}"
            hack = 0.01 if design == "success" else 0.02
            _write_run(d, acc, unnecessary=0.1 * seed, repeated=0.05, kl_scale=0.01 * (seed + 1),
                       hack_scale=hack)
            out[design].append(d)
    return out


def test_seed_metrics_kl_is_the_mean_of_the_last_ten_steps(runs):
    m = seed_metrics(runs["success"][1])
    assert m["KL"] == pytest.approx(0.02 * 15.5)          # mean of steps 11..20, not the summary's 99
    assert m["hacking"] == pytest.approx(0.1 + 0.05)      # unnecessary + repeated, held out
    # drift: mean of the last 10 steps minus the first 10 (0.01 · (15.5 − 5.5))
    assert m["drift/hacking"] == pytest.approx(0.1) and m["drift/unnecessary"] == pytest.approx(0.1)
    assert m["drift/steps"] == pytest.approx(0.0)
    assert seed_metrics(runs["success"][0].parent / "missing") is None


def test_summary_and_paired_differences_by_hand(runs):
    table = summarise_runs(runs)
    acc = table["success"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.6) and acc["std"] == pytest.approx(0.1)
    assert acc["values"] == pytest.approx([0.5, 0.6, 0.7])
    half = T2 * 0.1 / 3 ** 0.5
    assert acc["ci95"] == pytest.approx([0.6 - half, 0.6 + half], abs=1e-4)
    assert "vs_success" not in acc
    assert set(table["prm_clip"]) >= set(METRICS) | {"n_seeds", "seeds", "rl_wall_s"}
    # prm_clip − success per seed: 0.1, 0.2, 0.0 → mean 0.1, s = 0.1
    d = table["prm_clip"]["accuracy"]["vs_success"]
    assert d["mean"] == pytest.approx(0.1)
    assert d["ci95"] == pytest.approx([0.1 - half, 0.1 + half], abs=1e-4)
    # KL per seed 0.155 · (seed+1) in both designs → paired difference exactly 0
    kl = table["prm_clip"]["KL"]
    assert kl["values"] == pytest.approx([0.155, 0.31, 0.465])
    assert kl["vs_success"]["mean"] == pytest.approx(0.0, abs=1e-12)
    # drift of hacking: 0.2 for prm_clip and 0.1 for success on every seed → difference 0.1 ± 0
    dh = table["prm_clip"]["drift/hacking"]["vs_success"]
    assert dh["mean"] == pytest.approx(0.1) and dh["ci95"] == pytest.approx([0.1, 0.1])
    assert table["prm_clip"]["n_seeds"] == 3 and table["prm_clip"]["rl_wall_s"] == 30.0


def test_pairs_follow_seed_names_and_missing_runs(runs):
    # seed s0 of prm_clip unfinished: pairs are s1, s2 only (0.2, 0.0)
    (runs["prm_clip"][0] / "rl_summary.json").unlink()
    table = summarise_runs(runs)
    d = table["prm_clip"]["accuracy"]
    assert table["prm_clip"]["seeds"] == ["s1", "s2"] and d["values"] == pytest.approx([0.8, 0.7])
    assert d["vs_success"]["mean"] == pytest.approx(0.1)
    lo, hi = d["vs_success"]["ci95"]
    assert hi - 0.1 == pytest.approx(12.7062 * 0.1414214 / 2 ** 0.5, abs=1e-3)
    one = summarise_runs({"success": runs["success"][:1]})["success"]["accuracy"]
    assert one["ci95"] == [0.5, 0.5] and one["std"] == 0.0


def test_tables_and_report_files(runs, tmp_path):
    desc = {"success": "PPO, success reward only", "prm_clip": "PPO, success + PRM-Clip"}
    table = summarise_runs(runs)
    md = markdown_table(table, desc, {"eval/accuracy": 0.4}, {"eval_k": 4})
    assert "maj@4" in md and "0.600 [0.352, 0.848]" in md and "| SFT policy (start) | – | 0.400 |" in md
    paired = paired_table(table, desc)
    assert "+0.100 [-0.148, +0.348] |" in paired                # accuracy: includes 0
    assert "+0.100 [+0.100, +0.100]*" in paired                 # drift/hacking: 0.1 on every seed
    out = tmp_path / "report"
    out.mkdir()
    setting = {"prm_alpha": 1.0, "prm_eta": 0.8, "seeds": 3, "rl_steps": 20, "rl_prompts": 8, "rl_n": 2}
    res = write_report(out, tmp_path / "sft", tmp_path / "rm", tmp_path / "bon", runs, desc, 12.0,
                       setting=setting, stage_s={"sft": 30.0, "rl": 300.0})
    saved = json.loads((out / "results.json").read_text())
    assert saved["stage_s"] == {"sft": 30.0, "rl": 300.0} and saved["wall_s"] == 12.0
    assert saved["designs"]["prm_clip"]["accuracy"]["vs_success"]["mean"] == pytest.approx(0.1)
    report = (out / "report.md").read_text()
    assert "α = 1, η = 0.8, 3 seeds, 20 RL steps (8 prompts × 2 samples)" in report   # integers as integers
    assert "sft 30 s" in report and "rl 5.0 min" in report and "## Paired differences" in report
    for png in res["curves"] + res["plots"]:
        assert (out / png).stat().st_size > 1000, png
    assert {"curve_hacking.png", "curve_kl.png"} <= set(res["curves"])
    assert res["plots"] == ["summary.png", "paired.png"]


def _render(results, width=80):
    from rich.console import Console
    buf = StringIO()
    Console(width=width, file=buf, force_terminal=False, color_system=None).print(compact_table(results))
    return buf.getvalue()


def test_compact_table_fits_80_columns(runs):
    from rewardlab.demo import DESIGNS
    table = summarise_runs(runs)
    results = {"designs": table, "sft": {"eval/accuracy": 0.4, "eval/unnecessary_frac": 0.0,
                                         "eval/repeated_frac": 0.1, "eval/mean_steps": 3.2},
               "setting": {"prm_alpha": 1.0, "prm_eta": 0.8, "seeds": 3, "rl_steps": 30,
                           "rl_prompts": 32, "rl_n": 4}}
    text = _render(results)
    assert "0.600±0.248" in text and "sft (start)" in text and "0.400" in text, text
    # the widest numbers a run could print, under every design name
    wide = {m: {"mean": -123.456, "ci95": [-300.0, 60.0], "values": [1.0, 2.0, 3.0]} for m in METRICS}
    results["designs"].update({d: wide for d in DESIGNS})
    text = _render(results)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80, text
    assert "…" not in text, text
    for head in ("design", "accuracy", "hacking", "steps/sol", "KL"):
        assert head in lines[0] or head in lines[1], text
    for d in DESIGNS:
        assert any(ln.strip().startswith(d + " ") for ln in lines), (d, text)
    assert "-123.5±180.0" in text


def test_job_board_lines_without_a_terminal():
    lines = []
    board = JobBoard(["a/s0", "b/s0"], {"a/s0": 20, "b/s0": 20}, live=False, log=lines.append,
                     every=10, label="rl ")
    with board:
        board.handle("start", "a/s0", 20)
        for s in range(1, 21):
            board.handle("step", "a/s0", s)
        board.handle("end", "a/s0")
        board.handle("end", "a/s0")          # a second end is ignored
    assert lines[0].startswith("rl a/s0: step 10/20, 0:00 elapsed, ETA 0:00")
    assert lines[1:] == ["rl a/s0: done, 20 steps in 0:00"]
    quiet = []
    with JobBoard(["a"], {"a": 3}, live=False, log=quiet.append, end_lines=False) as b:
        for kind, v in [("start", 3), ("step", 1), ("step", 2), ("step", 3), ("end", None)]:
            b.handle(kind, "a", v)
    assert quiet == [] and b.elapsed("a") >= 0.0
    # the workers' timestamps, not the time the parent reads the queue, set elapsed time and ETA
    timed = []
    with JobBoard(["j"], {"j": 40}, live=False, log=timed.append, every=10) as b:
        b.handle("start", "j", 40, 1000.0)
        for s in range(1, 11):
            b.handle("step", "j", s, 1000.0 + 3 * s)
        b.handle("end", "j", None, 1100.0)
    assert timed == ["j: step 10/40, 0:30 elapsed, ETA 1:30", "j: done, 10 steps in 1:40"]
    assert b.elapsed("j") == 100.0
    assert eta_seconds(30.0, 13, 10, 20) == pytest.approx(70.0)     # resumed at step 10
    assert eta_seconds(5.0, 10, 10, 20) is None
    assert clock(75) == "1:15" and clock(3725) == "1:02:05" and clock(None) == "–"


def test_job_board_live_panel_drains_a_queue():
    import queue
    q = queue.Queue()
    for msg in [("start", "a/s0", 4), ("step", "a/s0", 1), ("step", "a/s0", 2), ("end", "a/s0", None)]:
        q.put(msg)
    board = JobBoard(["a/s0"], {}, live=True)
    board.live = True                         # as on a terminal
    with board:
        board.drain(q)
        task = board._progress.tasks[0]
        assert (task.completed, task.total, task.fields["state"]) == (4, 4, "done")
    assert board.done["a/s0"] == 2 and q.empty()


def test_accuracy_curve_takes_step_0_from_the_start_policy(runs, tmp_path):
    """A run that did not evaluate at step 0 gets the starting policy's accuracy there; a run
    that did keeps its own; smoothed training curves get no invented point."""
    from rewardlab.eval.report import curve_bands
    dirs = runs["success"]
    for d in dirs:   # drop the step-0 evaluation, as demo runs (eval_at_start=false) log it
        lines = (d / "metrics.jsonl").read_text().splitlines()[1:]
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    bands = curve_bands(dirs, ["eval/accuracy"], 1, start=0.42)
    assert bands[0][:4] == (0, 0.42, 0.42, 0.42) and [b[0] for b in bands] == [0, 20]
    assert curve_bands(dirs, ["eval/accuracy"], 1)[0][0] == 20
    assert curve_bands(runs["prm_clip"], ["eval/accuracy"], 1, start=0.42)[0][1] == pytest.approx(0.1)

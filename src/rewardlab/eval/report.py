"""The comparison report of a demo run: results.json, report.md, plots, and the terminal table.

Every metric of every design is summarised over its seeds as ``{"mean", "std", "ci95", "values"}``
(95 % Student-t interval, :func:`rewardlab.stats.t_interval`), and every design other than the
baseline (``success``) also gets the paired difference against it on the same seeds,
``vs_success = {"mean", "ci95"}``. docs/architecture.md ("Demo results") lists the keys.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Mapping, Sequence

from rewardlab.eval.plots import plot_bands, plot_intervals
from rewardlab.io import write_json, write_text
from rewardlab.stats import t_interval
from rewardlab.training.metrics import read_metrics

BASELINE = "success"
WINDOW = 10
"""RL steps averaged at each end of training: KL is the mean of ``kl/ref`` over the last
``WINDOW`` steps; a drift is the mean over the last ``WINDOW`` steps minus the first ``WINDOW``."""
SMOOTH = 5
"""Moving-average window (RL steps) of the training curves."""

# metric -> key(s) in a run's final metrics (rl_summary.json); several keys are summed
FINAL = {
    "accuracy": ("eval/accuracy",),
    "maj@k": ("eval/maj@k",),
    "steps/solution": ("eval/mean_steps",),
    "repeated": ("eval/repeated_frac",),
    "unnecessary": ("eval/unnecessary_frac",),
    "hacking": ("eval/unnecessary_frac", "eval/repeated_frac"),
    # the same measure over the k samples per held-out problem (temperature 1, as in training):
    # the policy's distribution rather than its mode
    "hacking (samples)": ("eval/sample_unnecessary_frac", "eval/sample_repeated_frac"),
    "length": ("eval/mean_length",),
}
# metric -> key(s) in metrics.jsonl whose drift (last WINDOW − first WINDOW RL steps) it is
DRIFT = {
    "drift/steps": ("response/steps",),
    "drift/unnecessary": ("hack/unnecessary_frac",),
    "drift/hacking": ("hack/unnecessary_frac", "hack/repeated_frac"),
}
KL_KEY = "kl/ref"
METRICS = [*FINAL, "KL", *DRIFT]
# metric -> (column heading, format of a number)
LABELS = {
    "accuracy": ("accuracy", "{:.3f}"),
    "maj@k": ("maj@k", "{:.3f}"),
    "steps/solution": ("steps/solution", "{:.2f}"),
    "repeated": ("repeated", "{:.3f}"),
    "unnecessary": ("unnecessary", "{:.3f}"),
    "hacking": ("hacking", "{:.3f}"),
    "hacking (samples)": ("hacking (samples)", "{:.3f}"),
    "length": ("length", "{:.1f}"),
    "KL": ("KL", "{:.3f}"),
    "drift/steps": ("Δ steps (train)", "{:+.2f}"),
    "drift/unnecessary": ("Δ unnecessary (train)", "{:+.3f}"),
    "drift/hacking": ("Δ hacking (train)", "{:+.3f}"),
}
RM_KEYS = ["eval/step_auroc", "eval/step_f1", "eval/step_ece", "eval/outcome_auroc",
           "eval/outcome_ece", "eval/n", "rm/members", "rm/n_train", "rm/wall_s"]
# file stem -> (title, y label, metrics.jsonl key(s) summed, smoothed)
CURVES = {
    "accuracy": ("Held-out greedy accuracy", "accuracy", ("eval/accuracy",), False),
    "success": ("Success rate (training samples)", "fraction correct", ("reward/success",), True),
    "steps_per_solution": ("Steps per solution (training samples)", "steps",
                           ("response/steps",), True),
    "prm_return": ("PRM return (training samples)", "return of the refined PRM rewards",
                   ("reward/prm_return",), True),
    "unnecessary_frac": ("Unnecessary-step fraction (training samples)", "fraction of steps",
                         ("hack/unnecessary_frac",), True),
    "hacking": ("Unnecessary + repeated steps (training samples)", "fraction of steps",
                ("hack/unnecessary_frac", "hack/repeated_frac"), True),
    "kl": ("KL to the SFT policy (training samples)", "KL estimate per response",
           ("kl/ref",), True),
}
STAGES = ["sft", "sft eval", "rm data", "rm backbone", "rm training", "bon", "rl"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _sum(row: Mapping, keys: Sequence[str]) -> float | None:
    if not all(_finite(row.get(k)) for k in keys):
        return None
    return float(sum(row[k] for k in keys))


def _series(rows: list[dict], keys: Sequence[str]) -> list[tuple[int, float]]:
    """``(step, Σ keys)`` of every metrics row that has all ``keys``, in step order."""
    out = [(int(r.get("step", 0)), _sum(r, keys)) for r in rows]
    return sorted((s, v) for s, v in out if v is not None)


def drift(rows: list[dict], keys: Sequence[str], window: int = WINDOW) -> float | None:
    """Training drift of a metric (the sum of ``keys``): mean over the last ``window`` RL steps
    minus the mean over the first ``window`` (halves of the run when it is shorter than
    2·window); None with fewer than 2 points."""
    xs = [v for _, v in _series(rows, keys)]
    window = min(window, len(xs) // 2)
    if window == 0:
        return None
    return statistics.fmean(xs[-window:]) - statistics.fmean(xs[:window])


SUMMARY_FILES = ("rl_summary.json", "po_summary.json")
"""A run's final metrics: an RL run's, or a preference (PO) design's, whose held-out ``eval/...``
keys are the same."""


def run_summary(run_dir: Path) -> dict | None:
    """The final metrics of one run (the first of :data:`SUMMARY_FILES` there), or None."""
    for name in SUMMARY_FILES:
        path = Path(run_dir) / name
        if path.exists():
            return json.loads(path.read_text())
    return None


def seed_metrics(run_dir: Path) -> dict[str, float | None] | None:
    """Every metric of one RL (or PO) run (one seed); None when it has no summary yet.

    Final metrics come from the held-out evaluation in ``rl_summary.json`` (``hacking`` =
    unnecessary + repeated step fraction), ``KL`` is the mean of ``kl/ref`` over the last
    ``WINDOW`` RL steps of ``metrics.jsonl`` (the summary's final estimate without a log), drifts
    as in :func:`drift`."""
    final = run_summary(run_dir)
    if final is None:
        return None
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    out: dict[str, float | None] = {m: _sum(final, keys) for m, keys in FINAL.items()}
    kl = [v for _, v in _series(rows, (KL_KEY,))]
    out["KL"] = statistics.fmean(kl[-WINDOW:]) if kl else _sum(final, (KL_KEY,))
    for m, keys in DRIFT.items():
        out[m] = drift(rows, keys)
    return out


def summary_cell(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "ci95": [lo, hi], "values"}`` over the finite ``values`` (one per seed;
    None where a seed lacks the metric); mean/std/ci95 are None when no value is finite."""
    xs = [float(v) for v in values if _finite(v)]
    if not xs:
        return {"mean": None, "std": None, "ci95": [None, None], "values": list(values)}
    lo, hi = t_interval(xs)
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "ci95": [lo, hi], "values": list(values)}


def paired_cell(design: Sequence[float | None], base: Sequence[float | None]) -> dict:
    """Paired difference on the same seeds: mean of (design − base) over the seeds where both
    are finite, with its 95 % t-interval; ``{"mean", "ci95", "n"}`` (n pairs; None without one)."""
    d = [a - b for a, b in zip(design, base) if _finite(a) and _finite(b)]
    if not d:
        return {"mean": None, "ci95": [None, None], "n": 0}
    return {"mean": statistics.fmean(d), "ci95": list(t_interval(d)), "n": len(d)}


def summarise_runs(runs: Mapping[str, Sequence[Path]], baseline: str = BASELINE) -> dict[str, dict]:
    """Per design: every metric over its seeds (:func:`summary_cell`), and for designs other
    than ``baseline`` the paired difference against it (``<metric>.vs_<baseline>``), pairing
    runs by their directory name (``s0``, ``s1``, …)."""
    per_seed = {design: {Path(d).name: seed_metrics(Path(d)) for d in dirs}
                for design, dirs in runs.items()}
    base = per_seed.get(baseline, {})
    table: dict[str, dict] = {}
    for design, seeds in per_seed.items():
        done = {s: m for s, m in seeds.items() if m is not None}
        row: dict = {"n_seeds": len(done), "seeds": list(done)}
        for metric in METRICS:
            cell = summary_cell([m[metric] for m in done.values()])
            if design != baseline and base:
                pairs = [(m[metric], base[s][metric]) for s, m in done.items() if base.get(s)]
                cell[f"vs_{baseline}"] = paired_cell([a for a, _ in pairs], [b for _, b in pairs])
            row[metric] = cell
        finals = [run_summary(d) for d in runs[design]]
        row["rl_wall_s"] = sum(f.get("rl/wall_s", f.get("po/wall_s", 0.0)) for f in finals if f)
        table[design] = row
    return table


def num(x: float | int | None, fmt: str = "{:.3f}") -> str:
    """A number for people: integers (also 3.0) without decimals, others by ``fmt``."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    return fmt.format(x)


def duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _n(cell: Mapping) -> int:
    """Seeds (or pairs) behind a cell."""
    if "n" in cell:
        return int(cell["n"])
    return sum(1 for v in cell.get("values", []) if _finite(v))


def interval_text(cell: Mapping, fmt: str) -> str:
    """``mean [lo, hi]`` (just the mean for one seed, "–" without one)."""
    m = cell.get("mean")
    if m is None:
        return "–"
    lo, hi = cell.get("ci95", [None, None])
    if lo is None or _n(cell) < 2:
        return fmt.format(m)
    return f"{fmt.format(m)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def _excludes_zero(cell: Mapping) -> bool:
    lo, hi = cell.get("ci95", [None, None])
    return lo is not None and _n(cell) >= 2 and (lo > 0 or hi < 0)


def caption(setting: Mapping, batch: bool = True) -> str:
    """One line: α, η, seeds, RL steps (what every plot and table was made with); ``batch``:
    also the prompts × samples of an RL step."""
    parts = []
    if "prm_alpha" in setting:
        parts.append(f"α = {num(setting['prm_alpha'], '{:g}')}")
    if "prm_eta" in setting:
        parts.append(f"η = {num(setting['prm_eta'], '{:g}')}")
    if "seeds" in setting:
        parts.append(f"{num(setting['seeds'])} seed{'s' if setting['seeds'] != 1 else ''}")
    if "rl_steps" in setting:
        rl = f"{num(setting['rl_steps'])} RL steps"
        if batch and "rl_prompts" in setting and "rl_n" in setting:
            rl += f" ({num(setting['rl_prompts'])} prompts × {num(setting['rl_n'])} samples)"
        if batch and "rl_lr" in setting:
            rl += f", lr {num(setting['rl_lr'], '{:g}')}"
        parts.append(rl)
    if batch and "unnecessary_rate" in setting:
        parts.append(f"SFT data padded at rate {num(setting['unnecessary_rate'], '{:g}')}")
    return ", ".join(parts)


def _heading(metric: str, setting: Mapping) -> str:
    if metric == "maj@k" and "eval_k" in setting:
        return f"maj@{num(setting['eval_k'])}"
    return LABELS[metric][0]


def markdown_table(table: Mapping[str, dict], descriptions: Mapping[str, str],
                   baseline: Mapping | None, setting: Mapping | None = None) -> str:
    """Every metric of every design as ``mean [lo, hi]`` (95 % t-interval over seeds)."""
    setting = setting or {}
    head = "| design | seeds | " + " | ".join(_heading(m, setting) for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    if baseline:
        start = {m: _sum(baseline, FINAL[m]) for m in FINAL}
        cells = [LABELS[m][1].format(start[m]) if _finite(start.get(m)) else "–" for m in METRICS]
        lines.append("| SFT policy (start) | – | " + " | ".join(cells) + " |")
    for d, row in table.items():
        cells = [interval_text(row[m], LABELS[m][1]) for m in METRICS]
        lines.append(f"| {descriptions.get(d, d)} | {row['n_seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(table: Mapping[str, dict], descriptions: Mapping[str, str],
                 baseline: str = BASELINE, setting: Mapping | None = None) -> str:
    """Design − baseline on the same seeds, ``mean [lo, hi]``; * where the interval excludes 0."""
    setting = setting or {}
    key = f"vs_{baseline}"
    rows = {d: r for d, r in table.items() if d != baseline and key in r.get(METRICS[0], {})}
    if not rows:
        return ""
    lines = ["| design − " + descriptions.get(baseline, baseline) + " | pairs | "
             + " | ".join(_heading(m, setting) for m in METRICS) + " |",
             "|" + "---|" * (len(METRICS) + 2)]
    for d, row in rows.items():
        fmts = {m: "{:+" + LABELS[m][1][2:].lstrip("+") for m in METRICS}
        cells = [interval_text(row[m][key], fmts[m]) + ("*" if _excludes_zero(row[m][key]) else "")
                 for m in METRICS]
        n = sum(1 for s in row["seeds"] if s in table[baseline]["seeds"])
        lines.append(f"| {descriptions.get(d, d)} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points (fewer at the ends)."""
    if window <= 1:
        return list(values)
    h = window // 2
    return [statistics.fmean(values[max(0, i - h):i + h + 1]) for i in range(len(values))]


def curve_bands(dirs: Sequence[Path], keys: Sequence[str], smooth: int, start: float | None = None
                ) -> list[tuple[float, float, float, float]]:
    """``(step, mean, lo, hi)`` across seeds of a (moving-averaged) metric of RL runs; ``start``:
    the metric at step 0 for a run that did not log it (the policy every run starts from)."""
    by_step: dict[int, list[float]] = {}
    for d in dirs:
        pts = _series(read_metrics(Path(d) / "metrics.jsonl"), keys)
        if start is not None and pts and pts[0][0] != 0:
            pts = [(0, start)] + pts
        for (s, _), v in zip(pts, _smooth([v for _, v in pts], smooth)):
            by_step.setdefault(s, []).append(v)
    return [(s, statistics.fmean(v), *t_interval(v)) for s, v in sorted(by_step.items())]


def training_curves(runs: Mapping[str, Sequence[Path]], out: Path, descriptions: Mapping[str, str],
                    setting: Mapping | None = None, start: Mapping[str, float] | None = None) -> list[Path]:
    """One PNG per curve: mean ± 95 % interval across seeds against the RL step, one band per
    design (training metrics moving-averaged over ``SMOOTH`` steps). ``start``: metrics of the
    starting policy (e.g. ``eval/accuracy`` of the SFT policy), the step-0 point of an unsmoothed
    curve whose runs did not evaluate at step 0."""
    note = caption(setting or {})
    paths = []
    for stem, (title, ylabel, keys, smooth) in CURVES.items():
        s0 = None if smooth else _sum(start or {}, keys)
        bands = {descriptions.get(d, d): b for d, dirs in runs.items()
                 if (b := curve_bands(dirs, keys, SMOOTH if smooth else 1, s0))}
        if bands:
            sub = note + ("; " if note else "") + "mean ± 95 % t-interval over seeds" + (
                f", moving average over {SMOOTH} steps" if smooth else "")
            paths.append(plot_bands(bands, title, "RL step", ylabel, out / f"curve_{stem}.png", sub))
    return paths


def summary_plots(table: Mapping[str, dict], out: Path, descriptions: Mapping[str, str],
                  setting: Mapping | None = None, baseline: str = BASELINE) -> list[Path]:
    """``summary.png`` (accuracy, hacking, steps/solution, KL per design with 95 % intervals and
    the seeds' values) and ``paired.png`` (the same, design − ``baseline`` on the same seeds)."""
    metrics = ["accuracy", "hacking", "steps/solution", "KL"]
    note = caption(setting or {})
    names = {d: descriptions.get(d, d) for d in table}
    paths = []
    cells = {names[d]: {LABELS[m][0]: (r[m]["mean"], *r[m]["ci95"], r[m]["values"]) for m in metrics}
             for d, r in table.items() if r["n_seeds"]}
    if cells:
        paths.append(plot_intervals(cells, "Final policies on held-out problems",
                                    out / "summary.png", note + "; mean, 95 % t-interval and seeds"))
    key = f"vs_{baseline}"
    diffs = {names[d]: {LABELS[m][0]: (r[m][key]["mean"], *r[m][key]["ci95"], None) for m in metrics}
             for d, r in table.items() if d != baseline and key in r.get(metrics[0], {})}
    if diffs:
        paths.append(plot_intervals(diffs, f"Difference from {names.get(baseline, baseline)} (same seeds)",
                                    out / "paired.png", note + "; mean paired difference, 95 % t-interval",
                                    zero_line=True))
    return paths


def write_report(out: Path, sft_dir: Path, rm_dir: Path, bon_dir: Path, runs: dict[str, list[Path]],
                 descriptions: dict[str, str], wall_s: float, setting: Mapping | None = None,
                 stage_s: Mapping[str, float] | None = None) -> dict:
    """Write results.json, report.md and the plots; returns the results dict.

    ``setting``: what the run was made with (``prm_alpha``, ``prm_eta``, ``seeds``, ``rl_steps``,
    …), for the captions; ``stage_s``: seconds of work each stage took (``STAGES``; the sum
    of its jobs' times, which overlap)."""
    setting, stage_s = dict(setting or {}), dict(stage_s or {})
    table = summarise_runs(runs)
    baseline = None
    if (sft_dir / "eval_summary.json").exists():
        baseline = {f"eval/{k}": v for k, v in json.loads((sft_dir / "eval_summary.json").read_text()).items()}
    rm_metrics = {k: json.loads((rm_dir / f"{k}_metrics.json").read_text())
                  for k in ("orm", "prm") if (rm_dir / f"{k}_metrics.json").exists()}
    bon = json.loads((bon_dir / "bon.json").read_text()) if (bon_dir / "bon.json").exists() else None
    curves = training_curves(runs, out, descriptions, setting, baseline)
    summaries = summary_plots(table, out, descriptions, setting)
    results = {"designs": table, "descriptions": descriptions, "baseline_design": BASELINE,
               "setting": setting, "sft": baseline, "reward_models": rm_metrics, "bon": bon,
               "wall_s": wall_s, "stage_s": stage_s, "curves": [p.name for p in curves],
               "plots": [p.name for p in summaries]}
    write_json(out / "results.json", results)
    rl_compute = sum(r["rl_wall_s"] for r in table.values())
    times = ", ".join(f"{k} {duration(v)}" for k, v in stage_s.items())
    paired = paired_table(table, descriptions, BASELINE, setting)
    md = ["# rewardlab demo report", "",
          f"Arithmetic testbed; {caption(setting) or 'setting not recorded'}. Held-out greedy accuracy, "
          "maj@k and reward-hacking diagnostics (oracle; hacking = unnecessary + repeated step "
          "fraction) of the final policy of each reward design, as mean [95 % Student-t interval] "
          f"over seeds. KL: mean of the KL estimate over the last {WINDOW} RL steps; Δ columns: "
          f"drift during training (mean of the last {WINDOW} RL steps minus the first {WINDOW}, on "
          "the training samples).", "",
          markdown_table(table, descriptions, baseline, setting), ""]
    if paired:
        md += [f"## Paired differences against {descriptions.get(BASELINE, BASELINE)}", "",
               "Design minus the success-only baseline on the same seeds: mean [95 % t-interval]; "
               "* marks an interval that excludes 0.", "", paired, ""]
    md += [f"Work per stage (the seconds of its jobs, which overlap on the worker processes, so "
           f"they add up to more than the wall time): {times or 'not recorded'}; wall time of this "
           f"invocation {duration(wall_s)} (cached stages are not re-run); the RL runs in the table "
           f"took {duration(rl_compute)} of run time in all.", ""]
    if summaries:
        md += ["## Summary plots", ""] + [f"![{p.stem}]({p.name})" for p in summaries] + [""]
    if rm_metrics:
        md += ["## Reward models (the policy's samples on held-out problems)", ""]
        for k, m in rm_metrics.items():
            md.append(f"- **{k.upper()}**: " + ", ".join(
                f"{a.split('/')[-1]}={num(m[a])}" for a in RM_KEYS if _finite(m.get(a))))
        md.append("")
        md += prm_checks(rm_metrics.get("prm") or {})
    if bon:
        md += ["## Best-of-N", "", "![best-of-N](bon/bon.png)", ""]
        table_bon = bon.get("table", bon)
        ns = sorted({int(n) for v in table_bon.values() if isinstance(v, dict) for n in v})
        if ns:
            md.append("| method | " + " | ".join(f"N={n}" for n in ns) + " |")
            md.append("|" + "---|" * (len(ns) + 1))
            for meth, vals in table_bon.items():
                if isinstance(vals, dict):
                    md.append(f"| {meth} | " + " | ".join(
                        num(vals.get(str(n), vals.get(n))) for n in ns) + " |")
            md.append("")
        if bon.get("auroc"):
            md += ["How well each scorer separates right from wrong responses *to the same problem* "
                   "(the AUROC within a problem, averaged over problems with both), which is what "
                   "best-of-N follows, against the AUROC pooled over problems (which also rewards "
                   "knowing which problems are hard):", ""]
            md += [f"- {k}: within a problem {num(a.get('within_problem_auroc'))}, pooled "
                   f"{num(a.get('pooled_auroc'))}" for k, a in bon["auroc"].items()]
            md.append("")
    if curves:
        md += ["## Training curves", ""] + [f"![{p.stem}]({p.name})" for p in curves] + [""]
    write_text(out / "report.md", "\n".join(md))
    return results


def prm_checks(m: Mapping) -> list[str]:
    """Report lines for a PRM's earliest-error identification, minimal pairs and score bias
    (the ``eval/earliest_error_*``, ``probe/*`` and ``bias/*`` metrics; the lines of what is
    there)."""
    md = []
    e = "eval/earliest_error_"
    if e + "f1" in m:
        md.append(f"- **Earliest error** (ProcessBench: the first step scored below τ = "
                  f"{num(m.get(e + 'threshold'))}, chosen on half of the problems, against the "
                  f"oracle's, on the other half): accuracy {num(m.get(e + 'acc_err'))} on "
                  f"{int(m.get(e + 'n_err', 0))} solutions with an error, "
                  f"{num(m.get(e + 'acc_correct'))} on {int(m.get(e + 'n_correct', 0))} correct "
                  f"ones, **F1 {num(m[e + 'f1'])}**.")
    if _finite(m.get("probe/pair_acc")):
        kinds = sorted(k.rsplit("/", 1)[1] for k in m if k.startswith("probe/pair_acc/"))
        md.append(f"- **Minimal pairs** ({int(m.get('probe/n_pairs', 0))}: each step of the held-out "
                  "problems' reference solutions against the same step with its result off by one): "
                  f"right scored above wrong {num(m['probe/pair_acc'])}, right ≥ 0.5 > wrong "
                  f"{num(m.get('probe/separated'))} (mean score right {num(m.get('probe/mean_right'))}, "
                  f"wrong {num(m.get('probe/mean_wrong'))}); by step, right above wrong / "
                  "separated: " + ", ".join(
                      f"{k} {num(m.get('probe/pair_acc/' + k))} / {num(m.get('probe/separated/' + k))}"
                      for k in kinds) + ".")
    by_steps = m.get("bias/score_by_steps")
    if isinstance(by_steps, Mapping) and by_steps:
        counts = m.get("bias/count_by_steps") or {}
        md.append("- **Score bias** (mean solution score): by number of steps " + ", ".join(
            f"{k}: {num(v)} ({counts.get(k, '?')})" for k, v in by_steps.items())
            + (f"; right final answer {num(m.get('bias/score_correct'))}, wrong "
               f"{num(m.get('bias/score_wrong'))}" if "bias/score_correct" in m else "") + ".")
    return md + [""] if md else []


# the terminal table: metric -> (heading, decimals)
COMPACT = {"accuracy": ("accuracy", 3), "hacking": ("hacking", 3), "steps/solution": ("steps/sol", 2),
           "KL": ("KL", 3)}


def short(x: float, decimals: int) -> str:
    """``x`` with ``decimals`` decimals below 10 and one fewer per further integer digit (at
    most 4 significant digits for large numbers): 0.512, 12.35, 123.5, 1235."""
    digits = len(str(int(abs(x)))) if math.isfinite(x) else 1
    return f"{x:.{max(0, decimals - digits + 1)}f}"


def _pm(cell: Mapping, decimals: int) -> str:
    m = cell.get("mean")
    if m is None:
        return "–"
    lo, hi = cell.get("ci95", [None, None])
    if lo is None or _n(cell) < 2:
        return short(m, decimals)
    return f"{short(m, decimals)}±{short((hi - lo) / 2, decimals)}"


def compact_table(results: Mapping):
    """The terminal summary: design (short name), accuracy, hacking, steps/solution and KL as
    mean±half the 95 % interval; a rich Table that fits 80 columns (the full table is report.md)."""
    from rich import box
    from rich.table import Table

    setting = results.get("setting") or {}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left", caption_style="dim",
                  caption="mean±95% CI half-width" + ("; " + caption(setting, batch=False) if setting else ""))
    table.add_column("design", no_wrap=True, overflow="fold")
    for heading, _ in COMPACT.values():
        table.add_column(heading, justify="right", no_wrap=True)
    sft = results.get("sft")
    if sft:
        table.add_row("sft (start)", *[_pm({"mean": _sum(sft, FINAL[m])} if m in FINAL else {}, f)
                                       for m, (_, f) in COMPACT.items()])
    for d, row in results.get("designs", {}).items():
        table.add_row(d, *[_pm(row.get(m, {}), f) for m, (_, f) in COMPACT.items()])
    return table

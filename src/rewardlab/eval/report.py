"""The comparison report of a demo run: results.json, report.md, training-curve PNGs."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from rewardlab.eval.plots import plot_curves
from rewardlab.io import write_json, write_text
from rewardlab.training.metrics import read_metrics


# column -> (metric key in a run's final metrics, format)
COLUMNS = {
    "accuracy": ("eval/accuracy", "{:.3f}"),
    "maj@k": ("eval/maj@k", "{:.3f}"),
    "steps/solution": ("eval/mean_steps", "{:.2f}"),
    "repeated": ("eval/repeated_frac", "{:.3f}"),
    "unnecessary": ("eval/unnecessary_frac", "{:.3f}"),
    "length": ("eval/mean_length", "{:.1f}"),
    "KL": ("kl/ref", "{:.3f}"),
}
# training-time drift (last 10 − first 10 RL steps, on the training samples): where hacking shows
DRIFT = {"Δ steps (train)": "response/steps", "Δ unnecessary (train)": "hack/unnecessary_frac"}
FORMATS = {**{c: f for c, (_, f) in COLUMNS.items()}, "Δ steps (train)": "{:+.3f}",
           "Δ unnecessary (train)": "{:+.3f}"}
RM_KEYS = ["eval/step_auroc", "eval/step_f1", "eval/step_ece", "eval/outcome_auroc",
           "eval/outcome_ece", "eval/n", "rm/n_train", "rm/wall_s"]
CURVES = {"accuracy": "eval/accuracy", "steps_per_solution": "response/steps",
          "prm_return": "reward/prm_return", "unnecessary_frac": "hack/unnecessary_frac"}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise_runs(runs: dict[str, list[Path]]) -> dict[str, dict]:
    """Per design: mean and std over seeds of every report column."""
    table: dict[str, dict] = {}
    for design, dirs in runs.items():
        finals = [json.loads((d / "rl_summary.json").read_text()) for d in dirs
                  if (d / "rl_summary.json").exists()]
        row = {"n_seeds": len(finals)}
        for col, (key, _) in COLUMNS.items():
            m, s = _mean_std([f.get(key) for f in finals])
            row[col] = {"mean": m, "std": s}
        for col, key in DRIFT.items():
            m, s = _mean_std([_drift(read_metrics(d / "metrics.jsonl"), key) for d in dirs])
            row[col] = {"mean": m, "std": s}
        row["rl_wall_s"] = sum(f.get("rl/wall_s", 0.0) for f in finals)
        table[design] = row
    return table


def _drift(rows: list[dict], key: str, window: int = 10) -> float | None:
    """Training drift of a metric: mean over the last ``window`` RL steps minus the first."""
    xs = [r[key] for r in rows if key in r]
    if len(xs) < 2 * window:
        window = len(xs) // 2
    if window == 0:
        return None
    return statistics.fmean(xs[-window:]) - statistics.fmean(xs[:window])


def _fmt(cell: dict, fmt: str, with_std: bool) -> str:
    m, s = cell["mean"], cell["std"]
    if isinstance(m, float) and math.isnan(m):
        return "–"
    return fmt.format(m) + (f" ± {fmt.replace('+', '').format(s)}" if with_std else "")


def markdown_table(table: dict[str, dict], descriptions: dict[str, str], baseline: dict | None) -> str:
    with_std = any(r["n_seeds"] > 1 for r in table.values())
    cols = list(FORMATS)
    head = "| design | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    if baseline:
        cells = [COLUMNS[c][1].format(baseline[COLUMNS[c][0]])
                 if c in COLUMNS and isinstance(baseline.get(COLUMNS[c][0]), (int, float)) else "–"
                 for c in cols]
        lines.append("| SFT policy (start) | " + " | ".join(cells) + " |")
    for d, row in table.items():
        cells = [_fmt(row[c], FORMATS[c], with_std) for c in cols]
        lines.append(f"| {descriptions.get(d, d)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_curves(runs: dict[str, list[Path]], out: Path) -> list[Path]:
    """One PNG per curve: the seed-mean of a metric against the RL step, one line per design."""

    paths = []
    for name, key in CURVES.items():
        curves = {}
        for design, dirs in runs.items():
            by_step: dict[int, list[float]] = {}
            for d in dirs:
                for row in read_metrics(d / "metrics.jsonl"):
                    if key in row:
                        by_step.setdefault(int(row["step"]), []).append(row[key])
            if by_step:
                curves[design] = [(s, statistics.fmean(v)) for s, v in sorted(by_step.items())]
        if curves:
            paths.append(plot_curves(curves, name.replace("_", " "), name, out / f"curve_{name}.png"))
    return paths


def write_report(out: Path, sft_dir: Path, rm_dir: Path, bon_dir: Path, runs: dict[str, list[Path]],
                 descriptions: dict[str, str], wall_s: float) -> dict:
    """Write results.json, report.md and the curve plots; returns the results dict."""
    table = summarise_runs(runs)
    baseline = None
    if (sft_dir / "eval_summary.json").exists():
        baseline = {f"eval/{k}": v for k, v in json.loads((sft_dir / "eval_summary.json").read_text()).items()}
    rm_metrics = {k: json.loads((rm_dir / f"{k}_metrics.json").read_text())
                  for k in ("orm", "prm") if (rm_dir / f"{k}_metrics.json").exists()}
    bon = json.loads((bon_dir / "bon.json").read_text()) if (bon_dir / "bon.json").exists() else None
    curves = training_curves(runs, out)
    results = {"designs": table, "descriptions": descriptions, "sft": baseline, "reward_models": rm_metrics,
               "bon": bon, "wall_s": wall_s, "curves": [p.name for p in curves]}
    write_json(out / "results.json", results)
    rl_compute = sum(r["rl_wall_s"] for r in table.values())
    md = ["# rewardlab demo report", "",
          f"Arithmetic testbed. This invocation: {wall_s / 60:.1f} min (cached stages are not re-run); "
          f"the RL runs in the table took {rl_compute / 60:.1f} min of run time in all. Held-out greedy "
          "accuracy, maj@k, and reward-hacking diagnostics (oracle) of the final policy of each reward "
          "design" + (" (mean ± std over seeds)" if any(r["n_seeds"] > 1 for r in table.values()) else "")
          + "; the Δ columns are the drift during training (mean of the last 10 RL steps minus the "
          "first 10, on the training samples).", "",
          markdown_table(table, descriptions, baseline), ""]
    if rm_metrics:
        md += ["## Reward models (the policy's samples on held-out problems)", ""]
        for k, m in rm_metrics.items():
            md.append(f"- **{k.upper()}**: " + ", ".join(
                f"{a.split('/')[-1]}={m[a]:.3f}" for a in RM_KEYS if isinstance(m.get(a), (int, float))))
        md.append("")
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
                        f"{vals.get(str(n), vals.get(n, float('nan'))):.3f}" for n in ns) + " |")
            md.append("")
    if curves:
        md += ["## Training curves", ""] + [f"![{p.stem}]({p.name})" for p in curves] + [""]
    write_text(out / "report.md", "\n".join(md))
    return results

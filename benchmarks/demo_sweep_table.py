"""One markdown row per design of each demo run directory given (docs/demo_sweep.md).

    python benchmarks/demo_sweep_table.py runs/demo runs/sweep/*

Reads ``<run>/results.json``: held-out accuracy, hacking (greedy and samples), steps per solution
and KL, as mean ± half the 95 % t-interval when the run has more than one seed."""

import json
import sys
from pathlib import Path


def cell(row: dict, metric: str, decimals: int = 3) -> str:
    c = row.get(metric) or {}
    if c.get("mean") is None:
        return "–"
    text = f"{c['mean']:.{decimals}f}"
    lo, hi = c.get("ci95", [None, None])
    if lo is not None and len(c.get("values", [])) > 1:
        text += f" ± {(hi - lo) / 2:.{decimals}f}"
    return text


def main(runs: list[str]) -> None:
    print("| run | setting | design | accuracy | hacking | hacking (samples) | steps/solution | KL |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        path = Path(run) / "results.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        s = res.get("setting", {})
        setting = (f"α {s.get('prm_alpha')}, η {s.get('prm_eta')}, {s.get('rl_steps')} steps × "
                   f"{s.get('rl_prompts')} prompts, lr {s.get('rl_lr')}, {s.get('seeds')} seeds"
                   + (f", {' '.join(s['rl_overrides'])}" if s.get("rl_overrides") else ""))
        for name, row in res["designs"].items():
            print(f"| {Path(run).name} | {setting} | {name} | {cell(row, 'accuracy')} | {cell(row, 'hacking')} | "
                  f"{cell(row, 'hacking (samples)')} | {cell(row, 'steps/solution', 2)} | {cell(row, 'KL', 2)} |")


if __name__ == "__main__":
    main(sys.argv[1:])

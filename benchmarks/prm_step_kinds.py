"""PRM score by step kind on a demo run's held-out policy samples (docs/demo_sweep.md).

    python benchmarks/prm_step_kinds.py runs/demo

Reads ``<run>/rm/eval_samples.jsonl`` and ``<run>/rm/prm``; labels every step with the testbed
oracle (needed / unnecessary / wrong / answer line) and prints the PRM's score distribution per
kind and the share below η = 0.3 and 0.5 (the steps Clip would penalise)."""

import statistics
import sys

import torch

from rewardlab.data.testbed import oracle_label
from rewardlab.io import read_jsonl
from rewardlab.reward_models.models import load_reward_model


def main(run: str) -> None:
    torch.set_num_threads(1)
    rows = read_jsonl(f"{run}/rm/eval_samples.jsonl")
    prm = load_reward_model(f"{run}/rm/prm", device="cpu")
    scores = [r.step_scores for r in prm.score([r["question"] for r in rows], [r["steps"] for r in rows])]
    kinds: dict[str, list[float]] = {}
    for row, sc in zip(rows, scores):
        label = oracle_label(row["question"], "\n".join(row["steps"]), row["gold"])
        for step, v in zip(label.steps, sc):
            if step.is_answer:
                kind = "answer line, right answer" if step.correct else "answer line, wrong answer"
            else:
                kind = "wrong" if not step.correct else "unnecessary" if step.unnecessary else "needed"
            kinds.setdefault(kind, []).append(v)
    print("| step kind | n | mean | p10 | median | share < 0.3 | share < 0.5 |")
    print("|---|---|---|---|---|---|---|")
    for kind, v in sorted(kinds.items()):
        v, n = sorted(v), len(v)
        print(f"| {kind} | {n} | {statistics.fmean(v):.2f} | {v[n // 10]:.2f} | {v[n // 2]:.2f} | "
              f"{sum(x < 0.3 for x in v) / n:.2f} | {sum(x < 0.5 for x in v) / n:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")

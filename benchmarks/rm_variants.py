"""One PRM variant trained on a finished demo's reward-model data, measured as the demo measures
its PRM, plus what best-of-N follows: step AUROC, earliest-error F1, the best-of-N table on the
demo's own best-of-N samples, and each aggregation's AUROC *within a problem*.

    python benchmarks/rm_variants.py --demo runs/demo --out runs/rm_variants/head --form head
    python benchmarks/rm_variants.py --demo runs/demo --out runs/rm_variants/s8 --rm-samples 8
    python benchmarks/rm_variants.py --demo runs/demo --out runs/rm_variants/orm --kind orm --repair 1

Everything but the named option is the demo's PRM recipe (its backbone ``rm/backbone/final``,
its rows ``rm/samples.jsonl``, lr 5e-4, batch 32, 500 steps, LM-head form). ``--rm-samples N``
draws N fresh samples per training problem from the demo's SFT policy (temperature 1, the demo's
RM-data seed) instead of the demo's rows; ``--repair`` / ``--shorten`` / ``--corrupt`` add
augmented copies of the rows (reward_models.pipeline.augment_rows); ``--kind orm`` / ``--kind bt``
train an ORM / a Bradley–Terry model (on every (right, wrong) pair of one problem's rows)
instead. The figures in docs/reward_models_testbed.md come from
this script (one training seed per row unless it says otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rewardlab.data.datasets import load_dataset_by_name  # noqa: E402
from rewardlab.data.steps import split_steps  # noqa: E402
from rewardlab.eval.bon import best_of_n, score_samples, within_problem_auroc  # noqa: E402
from rewardlab.eval.prm_eval import prm_label_metrics  # noqa: E402
from rewardlab.io import read_jsonl, write_json, write_jsonl  # noqa: E402
from rewardlab.models.loading import load_model_and_tokenizer  # noqa: E402
from rewardlab.models.sampling import SamplingConfig  # noqa: E402
from rewardlab.reward_models.labeling import get_labeler  # noqa: E402
from rewardlab.reward_models.models import load_reward_model  # noqa: E402
from rewardlab.reward_models.pipeline import augment_rows, make_pairs, sample_and_label  # noqa: E402
from rewardlab.reward_models.train import RMTrainConfig, train_reward_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, help="a finished `rewardlab demo --out` folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--kind", choices=["prm", "orm", "bt"], default="prm",
                    help="orm: an ORM trained the same way (its outcome AUROC and best-of-N); bt: a "
                         "Bradley–Terry RM on every (right, wrong) pair of one problem's rows")
    ap.add_argument("--form", choices=["lm", "head"], default="lm")
    ap.add_argument("--seed", type=int, default=0, help="the PRM training seed")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--rm-samples", type=int, default=0, help="fresh samples per problem (0: the demo's rows)")
    ap.add_argument("--corrupt", type=float, default=0.0, help="corrupted copies per row (augment_rows)")
    ap.add_argument("--repair", type=float, default=0.0,
                    help="repaired copies per row (augment_rows: first wrong equation given its right result)")
    ap.add_argument("--shorten", type=float, default=0.0,
                    help="shortened copies per row and repair (augment_rows: one operation early)")
    ap.add_argument("--backbone", default="", help="PRM backbone (default: the demo's rm/backbone/final)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    demo, out = Path(a.demo), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    oracle = get_labeler("oracle")
    if a.rm_samples:
        model, tok = load_model_and_tokenizer(demo / "sft" / "final", device="cpu")
        settings = demo / "demo_settings.json"
        n_problems = (json.loads(settings.read_text())["rm"]["rm_problems"] if settings.exists()
                      else 3000)
        problems = load_dataset_by_name(str(demo / "sft" / "train.jsonl"), "train")[-n_problems:]
        rows = sample_and_label(model, tok, problems, a.rm_samples, oracle,
                                SamplingConfig(n=a.rm_samples, temperature=1.0, max_new_tokens=48,
                                               batch_size=512), seed=1, style="gsm8k")
        del model
    else:
        rows = read_jsonl(demo / "rm" / "samples.jsonl")
    rows = augment_rows(rows, oracle, a.corrupt, 0.0, 1, repair=a.repair, shorten=a.shorten)
    write_jsonl(out / "rows.jsonl", make_pairs(rows) if a.kind == "bt" else rows)
    eval_rows = demo / "rm" / "eval_samples.jsonl"
    eval_data = eval_rows
    if a.kind == "bt":
        eval_data = out / "eval_pairs.jsonl"
        write_jsonl(eval_data, make_pairs(read_jsonl(eval_rows)))
    cfg = RMTrainConfig(kind=a.kind, form=a.form, model=a.backbone or str(demo / "rm" / "backbone" / "final"),
                        data=[str(out / "rows.jsonl")], eval_data=[str(eval_data)], out=str(out / a.kind),
                        tag="<|prm_label|>", lr=a.lr, batch_size=a.batch_size, steps=a.steps,
                        seed=a.seed, progress=False, overwrite=True)
    t0 = time.perf_counter()
    res = train_reward_model(cfg)
    train_s = time.perf_counter() - t0
    prm = load_reward_model(out / a.kind / "final", device="cpu")
    if a.kind == "prm":
        res.update(prm_label_metrics(prm, read_jsonl(eval_rows)))

    bon = read_jsonl(demo / "bon" / "samples.jsonl")
    by_id = {p.id: p for p in load_dataset_by_name(str(demo / "sft" / "test.jsonl"), "test")}
    problems = [by_id[r["id"]] for r in bon]
    m = len(bon[0]["responses"])
    flat = score_samples(prm, [p.question for p in problems for _ in range(m)],
                         [split_steps(t, "lines") for r in bon for t in r["responses"]], a.kind)
    scores = {k: [v[i * m:(i + 1) * m] for i in range(len(bon))] for k, v in flat.items()}
    table = best_of_n(problems, [r["responses"] for r in bon], scores, None, "gsm8k", 16, 0)
    correct = [r["correct"] for r in bon]
    within = {k: within_problem_auroc(correct, v)[0] for k, v in scores.items()}
    summary = {"rows": len(rows), "train_s": round(train_s, 1),
               **{k: res[k] for k in ("eval/step_auroc", "eval/outcome_auroc", "eval/earliest_error_f1")
                  if k in res},
               "within_problem_auroc": within, "table": table}
    write_json(out / "result.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1))
    ns = sorted(next(iter(table.values())))
    print(f"{'method':18s}" + "".join(f"{'N=' + str(n):>8s}" for n in ns))
    for meth, row in table.items():
        print(f"{meth:18s}" + "".join(f"{row[n]:8.3f}" for n in ns))


if __name__ == "__main__":
    main()

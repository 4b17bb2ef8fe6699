"""The demo's reward-model and best-of-N stages on a tiny policy: augmented training rows,
earliest-error, minimal-pair and bias metrics in prm_metrics.json and the report's lines
for them, weighted votes in the best-of-N table."""

import json
import shutil

from rewardlab.data.testbed import make_splits, minimal_pairs
from rewardlab.demo import budget_with, DemoConfig, stage_bon, stage_rm
from rewardlab.eval.report import num, prm_checks
from rewardlab.io import write_jsonl


def test_stage_rm_and_bon_on_a_tiny_policy(tmp_path, tiny_policy):
    sft = tmp_path / "sft"
    shutil.copytree(tiny_policy, sft / "final")
    train, test = make_splits(n_train=40, n_test=8, seed=3)
    write_jsonl(sft / "train.jsonl", [p.to_dict() for p in train])
    write_jsonl(sft / "test.jsonl", [p.to_dict() for p in test])
    budget = budget_with(True, ["rm_problems=12", "rm_samples=2", "rm_eval_problems=6",
                                "rm_steps=2", "bon_problems=3", "bon_max_n=4",
                                "rm_corrupt=1.0", "rm_truncate=0.5", "rm_temperature=1.3",
                                "rm_repair=1.0", "orm_members=2", "prm_members=2"])
    cfg = DemoConfig(out=str(tmp_path / "demo"), budget=budget, progress=False, workers=1)
    logs = []
    rm_dir = stage_rm(cfg, sft, logs.append, backbone=sft / "final")
    rows = [json.loads(x) for x in (rm_dir / "samples.jsonl").read_text().splitlines()]
    keys = {(r["id"], tuple(r["steps"])) for r in rows}
    assert len(keys) == len(rows)                                   # deduplicated
    assert any(r.get("augment") == "truncate" for r in rows)   # (an untrained policy writes
    # no equation to corrupt: corrupt_rows is tested on its own)
    assert any("repaired" in line and "corrupted" in line for line in logs)
    m = json.loads((rm_dir / "prm_metrics.json").read_text())
    for k in ("eval/step_auroc", "eval/earliest_error_f1", "eval/earliest_error_acc_err",
              "eval/earliest_error_acc_correct", "eval/earliest_error_threshold",
              "bias/score_by_steps", "bias/score_correct", "bias/score_wrong"):
        assert k in m, k
    assert 0 < m["eval/earliest_error_threshold"] < 1
    questions = {json.loads(x)["question"] for x in (rm_dir / "eval_samples.jsonl").read_text().splitlines()}
    assert m["probe/n_pairs"] == len(minimal_pairs(sorted(questions))) > 0
    assert 0 <= m["probe/separated"] <= m["probe/pair_acc"] <= 1
    lines = "\n".join(prm_checks(m))
    assert "Earliest error" in lines and "Minimal pairs" in lines and "Score bias" in lines
    assert f"F1 {num(m['eval/earliest_error_f1'])}" in lines
    # both reward models are ensembles of two members, measured as one
    for kind in ("orm", "prm"):
        assert (rm_dir / kind / "rewardlab_ensemble.json").exists()
        assert all((rm_dir / kind / f"m{k}" / "final" / "rewardlab_rm.json").exists() for k in (0, 1))
        assert json.loads((rm_dir / f"{kind}_metrics.json").read_text())["rm/members"] == 2
    assert "eval/outcome_auroc" in json.loads((rm_dir / "orm_metrics.json").read_text())
    bon = stage_bon(cfg, sft, rm_dir, print)
    table = json.loads((bon / "bon.json").read_text())["table"]
    assert {"orm-vote", "prm-product-vote", "prm-min-vote", "prm-last-vote"} <= set(table)

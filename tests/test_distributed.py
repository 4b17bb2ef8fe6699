"""Data parallelism (accelerate launch / torchrun, gloo on the CPU): a 2-process run trains the
same weights as a 1-process run of the same global batch, for sft, train-rm and rl."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rewardlab.config import load_config
from rewardlab.data.testbed import make_splits, TestbedConfig
from rewardlab.io import write_jsonl
from rewardlab.reward_models.train import RMTrainConfig, train_reward_model
from rewardlab.rl.config import RLConfig
from rewardlab.rl.trainer import train_rl
from rewardlab.sft.trainer import SFTConfig, train_sft
from tests.test_rm_train import write_step_rows

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src") + os.pathsep
       + os.environ.get("PYTHONPATH", "")}


def _launch(args: list[str], launcher: str = "torchrun") -> subprocess.CompletedProcess:
    if launcher == "accelerate":
        pre = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0"]
    else:
        pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(pre + ["-m", "rewardlab", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


def _max_diff(a: Path, b: Path) -> float:
    worst = 0.0
    for fa in sorted(glob.glob(str(a / "*.safetensors"))):
        ta, tb = load_file(fa), load_file(str(b / Path(fa).name))
        worst = max(worst, max((ta[k].float() - tb[k].float()).abs().max().item() for k in ta))
    return worst


@pytest.fixture(scope="module")
def probs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp_probs")
    train, test = make_splits(TestbedConfig(max_ops=2), 48, 4, seed=0)
    write_jsonl(d / "train.jsonl", [p.to_dict() for p in train])
    write_jsonl(d / "test.jsonl", [p.to_dict() for p in test])
    return d


def test_sft_two_processes_match_one(tmp_path, tiny_policy, probs):
    sets = [f"model.name_or_path={tiny_policy}", f"data.train_path={probs / 'train.jsonl'}",
            "batch_size=8", "steps=3", "eval_every=0", "save_every=0", "progress=false",
            "model.device=cpu", "lr=1e-2"]
    train_sft(load_config(SFTConfig, None, sets + [f"out={tmp_path / 'one'}"]))
    r = _launch(["sft", "--out", str(tmp_path / "two"), *sum((["--set", s] for s in sets), [])],
                launcher="accelerate")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("sft/final_loss") == 1    # the summary is printed by rank 0 only
    d = _max_diff(tmp_path / "one" / "final", tmp_path / "two" / "final")
    assert d <= 1e-5
    assert (tmp_path / "one" / "final" / "model.safetensors").exists()


def test_train_rm_two_processes_match_one(tmp_path, tiny_policy):
    # 9 rows in batches of 4: the third batch holds 1 row, so rank 1 has none (uneven shards)
    data = tmp_path / "rows.jsonl"
    write_step_rows(data, n=5)
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:9]))
    sets = [f"data=[{data}]", f"model={tiny_policy}", "kind=prm", "batch_size=4", "steps=3",
            "progress=false", "device=cpu", "eval_split=0", "tag=ки", "lr=1e-3"]
    train_reward_model(load_config(RMTrainConfig, None, sets + [f"out={tmp_path / 'one'}"]))
    r = _launch(["train-rm", "--out", str(tmp_path / "two"), *sum((["--set", s] for s in sets), [])])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("rm/final_loss") == 1
    assert _max_diff(tmp_path / "one" / "final", tmp_path / "two" / "final") <= 1e-5


@pytest.fixture(scope="module")
def po_pairs(tmp_path_factory):
    """12 outcome pairs: a testbed solution against a corrupted copy."""
    from tests.test_rm_train import _problems
    path = tmp_path_factory.mktemp("ddp_po") / "pairs.jsonl"
    write_jsonl(path, [{"question": p.question, "chosen": "\n".join(p.steps),
                        "rejected": "\n".join(bad)} for p, bad, _ in _problems(12)])
    return path


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_po_two_processes_match_one(tmp_path, tiny_policy, po_pairs, loss):
    """KTO's z_ref is a statistic of the whole batch: reduced over the ranks, not per shard.
    lr 1e-4: at 1e-3 AdamW's first steps (≈ lr·sign(g)) turn the rounding of near-zero gradient
    entries into lr-sized differences, 4.1e-5 on one CPU and under 1e-5 on another."""
    from rewardlab.preference.trainer import POConfig, train_po
    sets = [f"loss={loss}", f"pairs={po_pairs}", f"model.name_or_path={tiny_policy}",
            "model.device=cpu", "batch_size=4", "steps=3", "warmup_steps=0", "lr=1e-4",
            "max_len=48", "eval_every=0", "save_every=0", "progress=false"]
    one = train_po(load_config(POConfig, None, sets + [f"out={tmp_path / 'one'}"]))
    r = _launch(["po", "--out", str(tmp_path / "two"), *sum((["--set", s] for s in sets), [])])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("po/loss") == 1
    assert _max_diff(tmp_path / "one" / "final", tmp_path / "two" / "final") <= 1e-5
    two = json.loads((tmp_path / "two" / "po_summary.json").read_text())
    assert two["po/loss"] == pytest.approx(one["po/loss"], abs=1e-5)
    if loss == "kto":
        assert two["po/kl"] == pytest.approx(one["po/kl"], abs=1e-5) and one["po/kl"] > 0


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_two_processes_match_one(tmp_path, tiny_policy, probs, algo):
    sets = [f"algo={algo}", f"model.name_or_path={tiny_policy}", f"data.train_path={probs / 'train.jsonl'}",
            f"data.test_path={probs / 'test.jsonl'}", "steps=3", "prompts_per_step=4", "sampling.n=2", "sampling.max_new_tokens=12",
            "eval_every=0", "eval_k=0", "save_every=10", "progress=false", "model.device=cpu",
            "lr=1e-3"]
    train_rl(load_config(RLConfig, None, sets + [f"out={tmp_path / 'one'}"]))
    r = _launch(["rl", "--out", str(tmp_path / "two"), *sum((["--set", s] for s in sets), [])])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("metric") == 1
    assert _max_diff(tmp_path / "one" / "final", tmp_path / "two" / "final") <= 1e-5
    if algo == "ppo":
        # a checkpoint of 2 processes resumes only with 2: never silently with another count
        cfg = load_config(RLConfig, None, sets + [f"out={tmp_path / 'two'}"])
        with pytest.raises(ValueError, match="2 process"):
            train_rl(cfg)


@pytest.mark.parametrize("design", ["prime", "vine"])
def test_rl_prime_and_vine_two_processes_match_one(tmp_path, tiny_policy, probs, design):
    """DDP: PRIME's π_φ takes the one-process step (its loss weighted by each rank's share of the
    whole batch, its gradients summed, its advantages whitened over the whole batch), and
    VinePPO's Monte-Carlo prefixes are de-duplicated over the whole batch and split over the
    ranks with the one-process uniforms. (An entropy bonus gives the update a gradient while the
    random policy is never right; without one AdamW's first step follows rounding noise.)"""
    sets = [f"algo=ppo", f"advantage={design}", f"model.name_or_path={tiny_policy}",
            f"data.train_path={probs / 'train.jsonl'}", f"data.test_path={probs / 'test.jsonl'}",
            "steps=3", "prompts_per_step=4", "sampling.n=2", "sampling.max_new_tokens=12",
            "minibatch_size=4", "eval_every=0", "eval_k=0", "save_every=10", "progress=false",
            "model.device=cpu", "lr=1e-3", "kl.in_reward=false", "kl.estimator=k3",
            "entropy_coef=0.1", "prime.lr=1e-3", "vine.k=4"]
    one = train_rl(load_config(RLConfig, None, sets + [f"out={tmp_path / 'one'}"]))
    r = _launch(["rl", "--out", str(tmp_path / "two"), *sum((["--set", s] for s in sets), [])])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _max_diff(tmp_path / "one" / "final", tmp_path / "two" / "final") <= 1e-5
    two = json.loads((tmp_path / "two" / "rl_summary.json").read_text())
    key = "prime/rm_loss" if design == "prime" else "vine/value_start"
    assert two[key] == pytest.approx(one[key], abs=1e-5)
    if design == "prime":   # π_φ: the same on both ranks and as in one process
        sub = Path("checkpoints") / "step_0000003" / "prime_rm"
        assert _max_diff(tmp_path / "one" / sub, tmp_path / "two" / sub) <= 1e-5


def test_a_world_size_that_does_not_divide_the_batch_stops_before_any_work(tmp_path, tiny_policy, probs):
    r = _launch(["sft", "--out", str(tmp_path / "odd"), "--set", f"model.name_or_path={tiny_policy}",
                 "--set", f"data.train_path={probs / 'train.jsonl'}", "--set", "batch_size=7",
                 "--set", "steps=2", "--set", "progress=false"])
    assert r.returncode != 0
    assert "batch_size = 7 is not divisible by the number of processes (2)" in r.stdout + r.stderr
    assert not (tmp_path / "odd" / "checkpoints").exists() and not (tmp_path / "odd" / "final").exists()


def test_deepspeed_launches_rewardlab_cannot_run_are_refused_with_a_message(monkeypatch):
    # ZeRO-2/3 run sft, train-rm and po (tests/test_distributed_deepspeed.py); another stage is
    # refused before any work, whether or not deepspeed is installed
    from rewardlab.training.distributed import Dist
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    with pytest.raises(ValueError, match="zero_stage 1 is not supported"):
        Dist()


@pytest.mark.parametrize("n, world", [(8, 2), (9, 2), (1, 2), (0, 3), (10, 4), (7, 7), (3, 5)])
def test_split_bounds_covers_every_item_once(n, world):
    from rewardlab.training.distributed import split_bounds
    spans = [split_bounds(n, world, r) for r in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == n                     # starts at 0, ends at n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))        # contiguous, no overlap
    sizes = [hi - lo for lo, hi in spans]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    if n % world == 0:                                                # the even split as before
        assert spans == [(r * n // world, (r + 1) * n // world) for r in range(world)]


def test_split_bounds_refuses_a_rank_outside_the_world():
    from rewardlab.training.distributed import split_bounds
    with pytest.raises(ValueError, match="rank < world"):
        split_bounds(4, 2, 2)


def test_shard_rows_gives_an_empty_fsdp_rank_a_placeholder_row(monkeypatch):
    from rewardlab.training.distributed import Dist
    d = Dist()
    d.world, d.rank = 2, 1
    assert d.shard_rows([5]) == ([], False)                  # DDP: the rank skips the forward
    assert d.shard_rows([5, 6, 7]) == ([7], False)
    monkeypatch.setattr(Dist, "sharded", property(lambda self: True))
    assert d.shard_rows([5]) == ([5], True)                  # FSDP: a weight-0 copy of row 0
    assert d.shard_rows([5, 6, 7]) == ([7], False)


def test_one_process_collectives_are_the_identity():
    import torch
    from rewardlab.training.distributed import Dist
    d = Dist()
    assert (d.rank, d.world, d.active) == (0, 1, False)
    x = torch.tensor([1.5, 2.0])
    assert d.sum(x) is x and d.sum(3) == 3 and d.sum_dict({"a": 1.0}) == {"a": 1.0}
    assert d.shard([1, 2, 3]) == [1, 2, 3] and d.bounds(4) == (0, 4)
    assert d.gather_objects({"a": 1}) == [{"a": 1}]

"""DeepSpeed ZeRO-2 / ZeRO-3 under ``accelerate launch`` with configs/accelerate/deepspeed_zero*.yaml,
run here on the CPU (DeepSpeed's CPU accelerator, gloo): 2 processes against 1 process of the same
global batch, max |Δ| of the final weights ≤ 1e-5 after 3 steps. Skipped without ``deepspeed``
(not a dependency of rewardlab; see docs/distributed.md for the install)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed")

from rewardlab.config import load_config  # noqa: E402
from rewardlab.data.testbed import make_splits, TestbedConfig  # noqa: E402
from rewardlab.io import write_jsonl  # noqa: E402
from rewardlab.sft.trainer import SFTConfig, train_sft  # noqa: E402
# the launch environment, weight comparison and train-rm data of the FSDP tests
from tests.test_distributed_fsdp import (_cli_sets, _max_diff, _train_rm_one, _weights,  # noqa: E402
                                         CONFIGS, ENV, rm_data)  # noqa: F401 (a fixture)


def _launch_ds(stage: int, args: list[str]) -> subprocess.CompletedProcess:
    pre = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(CONFIGS / f"deepspeed_zero{stage}.yaml"), "--num_processes", "2"]
    return subprocess.run(pre + ["-m", "rewardlab", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


@pytest.fixture(scope="module")
def sft_setup(tmp_path_factory, tiny_policy):
    """The SFT settings (2 micro-batches per step: DeepSpeed accumulates them) and the weights of
    a one-process run of 3 steps."""
    d = tmp_path_factory.mktemp("ds_sft")
    train, _ = make_splits(TestbedConfig(max_ops=2), 48, 4, seed=0)
    write_jsonl(d / "train.jsonl", [p.to_dict() for p in train])
    sets = [f"model.name_or_path={tiny_policy}", f"data.train_path={d / 'train.jsonl'}",
            "batch_size=4", "grad_accum=2", "steps=3", "eval_every=0", "progress=false",
            "model.device=cpu", "lr=1e-2"]
    train_sft(load_config(SFTConfig, None, sets + ["save_every=0", f"out={d / 'one'}"]))
    return sets, _weights(d / "one" / "final")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_sft_two_processes_match_one(tmp_path, sft_setup, stage):
    sets, one = sft_setup
    r = _launch_ds(stage, ["sft", "--out", str(tmp_path / "two"), *_cli_sets(sets + ["save_every=0"])])
    assert r.returncode == 0, r.stderr[-3000:]
    final = tmp_path / "two" / "final"
    d = _max_diff(one, _weights(final))
    print(f"deepspeed zero-{stage} sft max|Δ| = {d:.2e}")
    assert d <= 1e-5
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert r.stdout.count("sft/final_loss") == 1    # the summary is printed by rank 0 only
    assert f"DeepSpeed ZeRO-{stage} over 2 process(es)" in r.stderr


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_sft_checkpoint_resumes_exactly(tmp_path, sft_setup, stage):
    """Stop after step 2 (the weights, gathered under ZeRO-3, and every rank's ZeRO optimizer
    partition), resume under the same launch: the weights of the uninterrupted one-process run."""
    import torch
    sets, one = sft_setup
    out = str(tmp_path / "two")
    r = _launch_ds(stage, ["sft", "--out", out, *_cli_sets(sets + ["save_every=1", "stop_at=2"])])
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "two" / "checkpoints" / "step_0000002"
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["extra"]["world_size"] == 2
    assert state["optimizer"]["zero_stage"] == stage and len(state["optimizer"]["ranks"]) == 2
    # the checkpoint's weights load without DeepSpeed: a plain Hugging Face folder
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(str(ckpt))
    r = _launch_ds(stage, ["sft", "--out", out, *_cli_sets(sets + ["save_every=1"])])
    assert r.returncode == 0, r.stderr[-3000:]
    d = _max_diff(one, _weights(tmp_path / "two" / "final"))
    print(f"deepspeed zero-{stage} sft stop/resume max|Δ| = {d:.2e}")
    assert d <= 1e-5


# ---------------------------------------------------------------------------- train-rm
@pytest.mark.timeout(900)
@pytest.mark.parametrize("stage, kind, data, lr", [(2, "prm", "rows.jsonl", "1e-3"),
                                                   (3, "prm", "rows.jsonl", "1e-3"),
                                                   (3, "bt", "pairs.jsonl", "1e-4")])
def test_deepspeed_train_rm_two_processes_match_one(tmp_path, tiny_policy, rm_data, stage, kind, data,
                                                    lr):
    """The LM-head PRM reads the tied unembedding (under ZeRO-3 through the module's own forward,
    where DeepSpeed gathers it), the BT model its scalar head. BT at lr 1e-4: at 1e-3 two
    embedding rows of rare tokens end 1.4e-5 away under ZeRO-3 (AdamW scales the rounding of a
    near-zero gradient up to ~lr; 1.4e-6 at 1e-4: it scales with lr; ZeRO-2 = DDP bit for bit)."""
    sets = [f"data=[{rm_data / data}]", f"model={tiny_policy}", f"kind={kind}", "batch_size=4",
            "steps=3", "progress=false", "device=cpu", "eval_split=0", "tag=ки", f"lr={lr}"]
    one = _train_rm_one(sets, tmp_path / "one")
    r = _launch_ds(stage, ["train-rm", "--out", str(tmp_path / "two"), *_cli_sets(sets)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"DeepSpeed ZeRO-{stage} over 2 process(es)" in r.stderr
    final = tmp_path / "two" / "final"
    d = _max_diff(one, _weights(final))
    print(f"deepspeed zero-{stage} train-rm {kind} max|Δ| = {d:.2e}")
    assert d <= 1e-5
    from rewardlab.reward_models.models import load_reward_model
    assert load_reward_model(final, "cpu").kind == kind     # loads without DeepSpeed


# ---------------------------------------------------------------------------- po
@pytest.mark.timeout(900)
@pytest.mark.parametrize("stage, loss", [(2, "dpo"), (3, "dpo"), (3, "kto")])
def test_deepspeed_po_two_processes_match_one(tmp_path, tiny_policy, stage, loss):
    """DPO / KTO: the policy under DeepSpeed, the reference model a plain replicated model whose
    log-probs every rank computes for every pair; KTO's z_ref reduced over the ranks. lr 1e-4: at
    1e-3 one MLP weight entry (a near-zero gradient AdamW magnifies) ends 4.1e-5 away for DPO, and
    so does a DDP run (torchrun), which ZeRO-2 matches bit for bit; 4.1e-6 at 1e-4."""
    from rewardlab.preference.trainer import POConfig, train_po
    from tests.test_rm_train import _problems
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"question": p.question, "chosen": "\n".join(p.steps),
                         "rejected": "\n".join(bad)} for p, bad, _ in _problems(12)])
    sets = [f"loss={loss}", f"pairs={pairs}", f"model.name_or_path={tiny_policy}", "model.device=cpu",
            "batch_size=4", "steps=3", "warmup_steps=0", "lr=1e-4", "max_len=48",
            "eval_every=0", "save_every=0", "progress=false"]
    train_po(load_config(POConfig, None, sets + [f"out={tmp_path / 'one'}"]))
    r = _launch_ds(stage, ["po", "--out", str(tmp_path / "two"), *_cli_sets(sets)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"DeepSpeed ZeRO-{stage} over 2 process(es)" in r.stderr
    d = _max_diff(_weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final"))
    print(f"deepspeed zero-{stage} po {loss} max|Δ| = {d:.2e}")
    assert d <= 1e-5


# ---------------------------------------------------------------------------- in one process
@pytest.fixture
def ds_env(monkeypatch):
    for k in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    return monkeypatch


@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_commands_not_ported_to_deepspeed_are_refused_before_any_work(tmp_path, ds_env, name):
    from rewardlab.training.engine import Engine
    with pytest.raises(ValueError, match=rf"{name}: this command does not run under DeepSpeed.*fsdp.yaml"):
        Engine(tmp_path / "run", name, progress=False, tensorboard=False)
    assert not (tmp_path / "run").exists()


def test_rl_under_deepspeed_is_refused_before_writing_anything(tmp_path, ds_env, tiny_policy):
    from rewardlab.rl.config import RLConfig
    from rewardlab.rl.trainer import RLTrainer
    cfg = load_config(RLConfig, None, [f"model.name_or_path={tiny_policy}", "data.dataset=testbed",
                                       f"out={tmp_path / 'rl'}", "progress=false"])
    with pytest.raises(ValueError, match="does not run under DeepSpeed"):
        RLTrainer(cfg)
    assert not (tmp_path / "rl").exists()


def test_a_trainer_that_does_not_route_through_deepspeed_is_refused(tmp_path, ds_env):
    """A ported name that forgets Engine.prepare or the grad_clip of restore (so DeepSpeed would
    never see its backward) is refused at restore."""
    import torch
    from rewardlab.training.engine import Engine
    eng = Engine(tmp_path, "sft", progress=False, tensorboard=False)
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="sft: this trainer does not run under DeepSpeed yet"):
        eng.restore(opt)
    eng.prepare(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not run under DeepSpeed yet"):
        eng.restore(opt)        # no grad_clip

"""Sharded training: FSDP2 (torch ``fully_shard``) under ``accelerate launch`` with
configs/accelerate/fsdp.yaml, run here on the CPU with gloo (torch 2.13 supports it), and the
DeepSpeed configs: parsed, and the launches rewardlab cannot run refused (the DeepSpeed runs
themselves: tests/test_distributed_deepspeed.py, skipped without deepspeed)."""

from __future__ import annotations

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
from rewardlab.sft.trainer import SFTConfig, train_sft

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
for _k in [k for k in ENV if k.startswith(("ACCELERATE_", "FSDP_"))]:
    del ENV[_k]


def _launch_fsdp(args: list[str]) -> subprocess.CompletedProcess:
    # no --cpu: accelerate would then run one plain process; without GPUs each rank takes the CPU
    # and gloo (rewardlab's Dist), as with ddp.yaml
    pre = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(CONFIGS / "fsdp.yaml"), "--num_processes", "2"]
    return subprocess.run(pre + ["-m", "rewardlab", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


def _weights(d: Path) -> dict:
    return load_file(str(d / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def sft_setup(tmp_path_factory, tiny_policy):
    """The SFT settings and the weights of a one-process run of 3 steps."""
    d = tmp_path_factory.mktemp("fsdp")
    train, test = make_splits(TestbedConfig(max_ops=2), 48, 4, seed=0)
    write_jsonl(d / "train.jsonl", [p.to_dict() for p in train])
    sets = [f"model.name_or_path={tiny_policy}", f"data.train_path={d / 'train.jsonl'}",
            "batch_size=8", "steps=3", "eval_every=0", "progress=false", "model.device=cpu",
            "lr=1e-2"]
    train_sft(load_config(SFTConfig, None, sets + ["save_every=0", f"out={d / 'one'}"]))
    return sets, _weights(d / "one" / "final")


def _cli_sets(sets: list[str]) -> list[str]:
    return sum((["--set", s] for s in sets), [])


@pytest.mark.timeout(900)   # two launches of 2 processes; slow on a loaded 2-core machine
def test_fsdp_sft_two_processes_match_one(tmp_path, sft_setup):
    sets, one = sft_setup
    r = _launch_fsdp(["sft", "--out", str(tmp_path / "two"), *_cli_sets(sets + ["save_every=0"])])
    assert r.returncode == 0, r.stderr[-3000:]
    final = tmp_path / "two" / "final"
    assert _max_diff(one, _weights(final)) <= 1e-5      # same keys: tied lm_head stored once
    # a plain Hugging Face model: the class is the model's own, not FSDP's subclass
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


@pytest.mark.timeout(900)
def test_fsdp_checkpoint_resumes_exactly(tmp_path, sft_setup):
    """Stop after step 2 (a gathered checkpoint with the sharded optimizer's state), resume under
    FSDP: the same weights as the uninterrupted one-process run."""
    sets, one = sft_setup
    out = str(tmp_path / "two")
    r = _launch_fsdp(["sft", "--out", out, *_cli_sets(sets + ["save_every=1", "stop_at=2"])])
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "two" / "checkpoints" / "step_0000002"
    state = __import__("torch").load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["extra"]["world_size"] == 2 and state["optimizer"]["state"]   # full, by name
    assert any(k.startswith("model.layers.") for k in state["optimizer"]["state"])
    r = _launch_fsdp(["sft", "--out", out, *_cli_sets(sets + ["save_every=1"])])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _max_diff(one, _weights(tmp_path / "two" / "final")) <= 1e-5


# ---------------------------------------------------------------------------- train-rm
@pytest.fixture(scope="module")
def rm_data(tmp_path_factory):
    """9 step-labelled rows (batches of 4: the third holds one row, so under FSDP rank 1 runs a
    weight-0 placeholder row) and 11 preference pairs (the third batch splits 2 / 1)."""
    from tests.test_rm_train import write_pair_rows, write_step_rows
    d = tmp_path_factory.mktemp("fsdp_rm")
    write_step_rows(d / "rows.jsonl", n=5)
    (d / "rows.jsonl").write_text("".join((d / "rows.jsonl").read_text().splitlines(True)[:9]))
    write_pair_rows(d / "pairs.jsonl", n=11)
    return d


def _train_rm_one(sets: list[str], out: Path) -> dict:
    from rewardlab.reward_models.train import RMTrainConfig, train_reward_model
    train_reward_model(load_config(RMTrainConfig, None, sets + [f"out={out}"]))
    return _weights(out / "final")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind, data", [("prm", "rows.jsonl"), ("bt", "pairs.jsonl")])
def test_fsdp_train_rm_two_processes_match_one(tmp_path, tiny_policy, rm_data, kind, data):
    """The LM-head PRM reads the tied unembedding inside ``pair_logits``, the BT model its scalar
    head inside ``token_logits``: both run through FSDP's hooks on sharded weights."""
    sets = [f"data=[{rm_data / data}]", f"model={tiny_policy}", f"kind={kind}", "batch_size=4",
            "steps=3", "progress=false", "device=cpu", "eval_split=0", "tag=ки", "lr=1e-3"]
    one = _train_rm_one(sets, tmp_path / "one")
    r = _launch_fsdp(["train-rm", "--out", str(tmp_path / "two"), *_cli_sets(sets)])
    assert r.returncode == 0, r.stderr[-3000:]
    final = tmp_path / "two" / "final"
    assert _max_diff(one, _weights(final)) <= 1e-5          # same keys: tied lm_head stored once
    from rewardlab.reward_models.models import load_reward_model
    rm = load_reward_model(final, "cpu")                     # a plain reward model again
    assert rm.kind == kind and not any(type(m).__name__.startswith("FSDP") for m in rm.modules())


@pytest.mark.timeout(900)
def test_fsdp_train_rm_head_form_stops_and_resumes(tmp_path, tiny_policy, rm_data):
    """The 2-class head PRM under FSDP, stopped after step 2 (a gathered checkpoint), resumed and
    evaluated on held-out rows (``score`` on sharded weights): the one-process weights."""
    sets = [f"data=[{rm_data / 'rows.jsonl'}]", f"model={tiny_policy}", "kind=prm", "form=head",
            "batch_size=4", "steps=3", "progress=false", "device=cpu", "eval_split=0.2",
            "tag=ки", "lr=1e-4", "save_every=1"]
    one = _train_rm_one(sets, tmp_path / "one")
    out = str(tmp_path / "two")
    for extra in (["stop_after=2"], []):
        r = _launch_fsdp(["train-rm", "--out", out, *_cli_sets(sets + extra)])
        assert r.returncode == 0, r.stderr[-3000:]
    assert _max_diff(one, _weights(tmp_path / "two" / "final")) <= 1e-5
    ev = json.loads((tmp_path / "one" / "rm_summary.json").read_text())
    got = json.loads((tmp_path / "two" / "rm_summary.json").read_text())
    assert got["eval/n_steps"] == ev["eval/n_steps"] > 0
    assert got["eval/loss"] == pytest.approx(ev["eval/loss"], abs=1e-5)


# ---------------------------------------------------------------------------- po
@pytest.mark.timeout(900)
def test_fsdp_po_kto_two_processes_match_one(tmp_path, tiny_policy):
    """KTO under FSDP: the policy and the reference sharded, z_ref reduced over the ranks, and
    the held-out pair metrics computed by every rank on sharded weights."""
    from rewardlab.preference.trainer import POConfig, train_po
    from tests.test_rm_train import _problems
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"question": p.question, "chosen": "\n".join(p.steps),
                         "rejected": "\n".join(bad)} for p, bad, _ in _problems(12)])
    sets = ["loss=kto", f"pairs={pairs}", f"eval_pairs={pairs}", f"model.name_or_path={tiny_policy}",
            "model.device=cpu", "batch_size=4", "steps=3", "warmup_steps=0", "lr=1e-4",
            "max_len=48", "eval_every=0", "save_every=0", "progress=false"]
    one = train_po(load_config(POConfig, None, sets + [f"out={tmp_path / 'one'}"]))
    r = _launch_fsdp(["po", "--out", str(tmp_path / "two"), *_cli_sets(sets)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _max_diff(_weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")) <= 1e-5
    two = json.loads((tmp_path / "two" / "po_summary.json").read_text())
    for k in ("po/kl", "eval/po/loss", "eval/po/kl"):
        assert two[k] == pytest.approx(one[k], abs=1e-5), k


@pytest.mark.timeout(900)
def test_fsdp_po_dpo_stops_and_resumes(tmp_path, tiny_policy):
    """DPO under FSDP stopped after step 2 (the gathered policy and the sharded optimizer's state
    by name) and resumed with 2 processes: the weights of an uninterrupted one-process run."""
    from rewardlab.preference.trainer import POConfig, train_po
    from tests.test_rm_train import _problems
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"question": p.question, "chosen": "\n".join(p.steps),
                         "rejected": "\n".join(bad)} for p, bad, _ in _problems(12)])
    sets = ["loss=dpo", f"pairs={pairs}", f"model.name_or_path={tiny_policy}", "model.device=cpu",
            "batch_size=4", "steps=3", "warmup_steps=0", "lr=1e-4", "max_len=48",
            "eval_every=0", "save_every=1", "progress=false"]
    train_po(load_config(POConfig, None, sets + [f"out={tmp_path / 'one'}"]))
    out = str(tmp_path / "two")
    r = _launch_fsdp(["po", "--out", out, *_cli_sets(sets + ["stop_at=2"])])
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "two" / "final").exists()
    ckpt = tmp_path / "two" / "checkpoints" / "step_0000002"
    assert __import__("torch").load(ckpt / "trainer_state.pt", weights_only=False)["extra"]["world_size"] == 2
    r = _launch_fsdp(["po", "--out", out, *_cli_sets(sets)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _max_diff(_weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")) <= 1e-5


# ---------------------------------------------------------------------------- rl
def _rl_sets(tiny_policy, probs: Path, algo: str, extra: list[str]) -> list[str]:
    """3 RL steps of 4 prompts × 2 samples, scored by an LM-head PRM (the tiny policy itself, with
    the step tag <s>, which a decoded response never contains); micro-batches of 2 rows in
    minibatches of 4 (random rows of the whole batch): at step 2 one rank holds 1 row of a
    minibatch and the other 3, so under FSDP the first runs a weight-0 placeholder pass to match
    the other's 2 passes (without it the collectives mismatch and the run aborts)."""
    return [f"algo={algo}", f"model.name_or_path={tiny_policy}",
            f"data.train_path={probs / 'train.jsonl'}", f"data.test_path={probs / 'test.jsonl'}",
            "steps=3", "prompts_per_step=4", "sampling.n=2", "sampling.max_new_tokens=12",
            "minibatch_size=4", "micro_batch_size=2", f"reward.prm.path={tiny_policy}",
            "reward.prm.tag=<s>", "reward.prm.alpha=1.0", "eval_every=0", "eval_k=0",
            "progress=false", "model.device=cpu", "lr=1e-3", *extra]


@pytest.fixture(scope="module")
def rl_probs(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp_rl")
    train, test = make_splits(TestbedConfig(max_ops=2), 48, 4, seed=0)
    write_jsonl(d / "train.jsonl", [p.to_dict() for p in train])
    write_jsonl(d / "test.jsonl", [p.to_dict() for p in test])
    return d


def _train_rl_one(sets: list[str], out: Path) -> dict:
    from rewardlab.rl.config import RLConfig
    from rewardlab.rl.trainer import train_rl
    return train_rl(load_config(RLConfig, None, sets + [f"out={out}"]))


def _rl_one_and_two(tmp_path: Path, sets: list[str], same: list[str] = ()) -> tuple[dict, dict]:
    """``rl`` with ``sets`` in one process (``one/``) and in a 2-process FSDP launch (``two/``):
    their summaries, after checking that the launch succeeded and that the summary metrics
    ``same`` agree within 1e-5."""
    one = _train_rl_one(sets, tmp_path / "one")
    r = _launch_fsdp(["rl", "--out", str(tmp_path / "two"), *_cli_sets(sets)])
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "rl_summary.json").read_text())
    for k in same:
        assert two[k] == pytest.approx(one[k], abs=1e-5), k
    return one, two


@pytest.mark.timeout(900)
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_fsdp_rl_two_processes_match_one(tmp_path, tiny_policy, rl_probs, algo):
    """PPO (a separate critic, sharded like the policy and the reference model) and GRPO under
    FSDP: rollouts on gathered weights, the replicated PRM's scores, the update through FSDP.
    The final policy (and the PPO critic) match a one-process run; the held-out evaluation runs
    on rank 0 with gathered weights."""
    sets = _rl_sets(tiny_policy, rl_probs, algo, ["save_every=10"])
    one, _ = _rl_one_and_two(tmp_path, sets, ["reward/prm_step_mean", "reward/total", "kl/ref",
                                              "eval/accuracy"])
    assert _max_diff(_weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")) <= 1e-5
    assert one["reward/prm_step_mean"] > 0
    if algo == "ppo":   # the critic: gathered into the checkpoint in its own layout
        value = tmp_path / "two" / "checkpoints" / "step_0000003" / "value"
        one_value = tmp_path / "one" / "checkpoints" / "step_0000003" / "value"
        assert _max_diff(_weights(one_value), _weights(value)) <= 1e-5
        head = load_file(str(value / "value_head.safetensors"))
        ref_head = load_file(str(one_value / "value_head.safetensors"))
        assert _max_diff(ref_head, head) <= 1e-5 and head["weight"].abs().max() > 0


def _rl_one_and_two_stopped(tmp_path, sets: list[str]) -> dict:
    """Train ``sets`` in one process (``one``) and launch it under FSDP (``two``) stopped after
    step 2; the trainer state of that step-2 checkpoint."""
    _train_rl_one(sets, tmp_path / "one")
    r = _launch_fsdp(["rl", "--out", str(tmp_path / "two"), *_cli_sets(sets + ["stop_at=2"])])
    assert r.returncode == 0, r.stderr[-3000:]
    return __import__("torch").load(tmp_path / "two" / "checkpoints" / "step_0000002" / "trainer_state.pt",
                                    weights_only=False)


def _rl_two_resumed(tmp_path, sets: list[str]) -> None:
    """Launch the stopped FSDP run ``two`` again: it resumes and finishes."""
    r = _launch_fsdp(["rl", "--out", str(tmp_path / "two"), *_cli_sets(sets)])
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.timeout(900)
def test_fsdp_rl_stops_and_resumes(tmp_path, tiny_policy, rl_probs):
    """PPO with a value head on the policy (replicated, beside the sharded policy: one optimizer
    over both, its state saved by name) stopped after step 2 and resumed under FSDP: the weights
    of an uninterrupted one-process run."""
    sets = _rl_sets(tiny_policy, rl_probs, "ppo", ["value.kind=shared", "save_every=1"])
    state = _rl_one_and_two_stopped(tmp_path, sets)
    keys = set(state["optimizer"]["state"])
    assert "value.head.weight" in keys and any(k.startswith("policy.model.layers.") for k in keys)
    _rl_two_resumed(tmp_path, sets)
    for sub in ("final", "checkpoints/step_0000003/value"):
        a, b = tmp_path / "one" / sub, tmp_path / "two" / sub
        files = ["model.safetensors"] if sub == "final" else ["value_head.safetensors"]
        for f in files:
            assert _max_diff(load_file(str(a / f)), load_file(str(b / f))) <= 1e-5, sub


def _design_sets(tiny_policy, probs: Path, design: str, extra: list[str]) -> list[str]:
    """``_rl_sets`` without the PRM, for the estimators that bring their own values: PRIME (an
    implicit PRM π_φ trained at every step) and VinePPO (Monte-Carlo values, 4 rollouts per
    distinct step prefix). The random tiny policy is rarely right (success 0 at steps 1-2), so
    an entropy bonus gives the update a gradient: without one its first steps follow the sign of
    rounding noise (AdamW's first step is lr·sign(g)), and one process and two, whose passes
    round differently, end ~7e-3 apart."""
    sets = [s for s in _rl_sets(tiny_policy, probs, "ppo", extra) if not s.startswith("reward.prm")]
    return sets + [f"advantage={design}", "kl.in_reward=false", "kl.estimator=k3",
                   "entropy_coef=0.1", *(["prime.lr=1e-3"] if design == "prime" else ["vine.k=4"])]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("design", ["prime", "vine"])
def test_fsdp_rl_prime_and_vine_match_one_process(tmp_path, tiny_policy, rl_probs, design):
    """PRIME under FSDP: π_φ sharded like a critic (its passes with gradient through FSDP, each
    rank's loss weighted by its share of the whole batch), π_ref's passes on gathered weights;
    π_φ's checkpoint gathered into its Hugging Face folder. VinePPO: the Monte-Carlo rollouts of
    the whole batch's distinct prefixes split over the ranks, sampled on the gathered policy with
    the one-process uniforms. Both: the policy (and π_φ) of a one-process run after 3 steps."""
    sets = _design_sets(tiny_policy, rl_probs, design, ["save_every=10"])
    keys = ["reward/total", "kl/ref", "eval/accuracy", "actor/pg_loss"]
    keys += ["prime/rm_loss", "prime/implicit_return"] if design == "prime" else ["vine/value_start"]
    _rl_one_and_two(tmp_path, sets, keys)
    assert _max_diff(_weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")) <= 1e-5
    if design == "prime":   # π_φ gathered into the checkpoint, a plain model again
        sub = "checkpoints/step_0000003/prime_rm"
        assert _max_diff(_weights(tmp_path / "one" / sub), _weights(tmp_path / "two" / sub)) <= 1e-5
        assert json.loads((tmp_path / "two" / sub / "config.json").read_text())["architectures"] == [
            "LlamaForCausalLM"]
    else:   # some Monte-Carlo rollouts succeeded: the values are not all 0
        rows = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
        assert any(r.get("vine/value_start", 0) > 0 for r in rows)


@pytest.mark.timeout(900)
def test_fsdp_rl_prime_stops_and_resumes(tmp_path, tiny_policy, rl_probs):
    """PRIME under FSDP stopped after step 2 (π_φ gathered, its sharded optimizer's state saved
    by parameter name) and resumed: the policy and π_φ of an uninterrupted one-process run."""
    sets = _design_sets(tiny_policy, rl_probs, "prime", ["save_every=1"])
    state = _rl_one_and_two_stopped(tmp_path, sets)
    assert any(k.startswith("model.layers.") for k in state["extra"]["prime_opt"]["state"])
    _rl_two_resumed(tmp_path, sets)
    for sub in ("final", "checkpoints/step_0000003/prime_rm"):
        assert _max_diff(_weights(tmp_path / "one" / sub), _weights(tmp_path / "two" / sub)) <= 1e-5, sub


def _adapter(d: Path) -> dict:
    return load_file(str(d / "adapter_model.safetensors"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_fsdp_rl_lora_matches_one_process(tmp_path, tiny_policy, rl_probs, algo):
    """A LoRA policy under FSDP: the frozen base and the trainable adapter sharded together (FSDP2
    reduce-scatters only the adapter's gradients), the reference = the same network with the
    adapter off (gathered), rollouts on the merged view of the gathered weights (the fast
    sampler: the one-process tokens). The adapter after 3 steps matches a one-process run
    (PPO: with the replicated value head); ``final/`` is the adapter alone, gathered on rank 0,
    and ``final_merged/`` a plain model."""
    pytest.importorskip("peft")
    extra = ["model.lora.r=4", "save_every=10", "model.lora.save_merged=true"]
    if algo == "ppo":
        extra.append("value.kind=shared")
    sets = _rl_sets(tiny_policy, rl_probs, algo, extra)
    _rl_one_and_two(tmp_path, sets, ["reward/total", "kl/ref", "eval/accuracy"])
    one, two = _adapter(tmp_path / "one" / "final"), _adapter(tmp_path / "two" / "final")
    assert one and all("lora_" in k for k in two)
    assert _max_diff(one, two) <= 1e-5
    assert max(v.abs().max().item() for k, v in two.items() if "lora_B" in k) > 0   # it trained
    assert not (tmp_path / "two" / "final" / "model.safetensors").exists()
    assert _max_diff(_weights(tmp_path / "one" / "final_merged"),
                     _weights(tmp_path / "two" / "final_merged")) <= 1e-5


@pytest.mark.timeout(900)
@pytest.mark.parametrize("design", ["prime", "vine"])
def test_fsdp_rl_lora_with_prime_or_vine_matches_one_process(tmp_path, tiny_policy, rl_probs, design):
    """A LoRA policy with PRIME (π_ref a plain copy of the base beside the sharded π_φ) or
    VinePPO (Monte-Carlo rollouts on the merged view): the one-process adapter."""
    pytest.importorskip("peft")
    sets = _design_sets(tiny_policy, rl_probs, design, ["save_every=10", "model.lora.r=4"])
    _rl_one_and_two(tmp_path, sets)
    assert _max_diff(_adapter(tmp_path / "one" / "final"), _adapter(tmp_path / "two" / "final")) <= 1e-5


@pytest.mark.timeout(900)
def test_fsdp_rl_lora_stops_and_resumes(tmp_path, tiny_policy, rl_probs):
    """GRPO with a LoRA policy under FSDP stopped after step 2 (the adapter gathered into the
    checkpoint, the sharded optimizer's state by name: adapter weights only) and resumed: the
    adapter of an uninterrupted one-process run."""
    pytest.importorskip("peft")
    sets = _rl_sets(tiny_policy, rl_probs, "grpo", ["model.lora.r=4", "save_every=1"])
    state = _rl_one_and_two_stopped(tmp_path, sets)
    ckpt = tmp_path / "two" / "checkpoints" / "step_0000002"
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    keys = set(state["optimizer"]["state"])
    assert keys and all("lora_" in k for k in keys)
    _rl_two_resumed(tmp_path, sets)
    assert _max_diff(_adapter(tmp_path / "one" / "final"), _adapter(tmp_path / "two" / "final")) <= 1e-5


# ---------------------------------------------------------------------------- in one process
@pytest.fixture
def clean_env(monkeypatch):
    for k in [k for k in os.environ if k.startswith(("ACCELERATE_USE_", "FSDP_"))]:
        monkeypatch.delenv(k)
    return monkeypatch


def test_fsdp_environment_selects_the_sharded_path(clean_env):
    from rewardlab.training.distributed import Dist, fsdp_options
    clean_env.setenv("ACCELERATE_USE_FSDP", "true")
    clean_env.setenv("FSDP_VERSION", "2")
    clean_env.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    clean_env.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaDecoderLayer, Foo")
    d = Dist()
    assert d.backend == "fsdp" and d.sharded
    assert d.fsdp == {"reshard_after_forward": False, "offload_params": False,
                      "layer_cls": ["LlamaDecoderLayer", "Foo"]}
    clean_env.delenv("FSDP_RESHARD_AFTER_FORWARD")
    assert fsdp_options()["reshard_after_forward"] is True   # accelerate's default: full shard
    m = __import__("torch").nn.Linear(2, 2)
    assert d.wrap(m) is m            # no process group (not launched): nothing to shard
    assert d.full_state_dict(m) is None


def test_a_trainer_not_ported_to_fsdp_is_refused(tmp_path, clean_env):
    from rewardlab.training.engine import Engine
    clean_env.setenv("ACCELERATE_USE_FSDP", "true")
    clean_env.setenv("FSDP_VERSION", "2")
    # every shipped trainer shards its model now; a new one that forgets Engine.prepare is refused
    eng = Engine(tmp_path, "mytrainer", progress=False, tensorboard=False)
    with pytest.raises(ValueError, match="mytrainer: this trainer does not run under FSDP yet"):
        eng.restore()
    eng = Engine(tmp_path, "sft", progress=False, tensorboard=False)
    eng.prepare(__import__("torch").nn.Linear(2, 2))
    assert eng.restore() == {}
    eng.close()


_DS = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}


@pytest.mark.parametrize("env, match", [
    ({**_DS, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}, "zero_stage 1 is not supported"),
    ({**_DS, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "offload_optimizer_device 'cpu'"),
    ({**_DS, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu"},
     "offload_param_device 'cpu'"),
    ({**_DS, "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}, "zero3_init_flag"),
    ({**_DS, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, "gradient_accumulation_steps 4"),
    ({**_DS, "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, "deepspeed_config_file"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP2 only"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"},
     "activation_checkpointing"),
])
def test_launches_rewardlab_cannot_run_are_refused_before_any_work(clean_env, env, match):
    from rewardlab.training.distributed import Dist
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        Dist()


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"),
                                        ("deepspeed_zero2", "DEEPSPEED"),
                                        ("deepspeed_zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig
    cfg = ClusterConfig.from_yaml_file(str(CONFIGS / f"{name}.yaml"))
    assert cfg.distributed_type == kind and cfg.mixed_precision == "no"
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2
        assert cfg.fsdp_config["fsdp_activation_checkpointing"] is False
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])


def test_rl_lora_under_fsdp_refuses_generate_sampling_before_any_work(tmp_path, clean_env, tiny_policy,
                                                                     rl_probs):
    """A LoRA policy under FSDP samples and evaluates on its merged view (the fast engine):
    ``generate`` on the sharded PeftModel enters FSDP's blocks without the root. So
    sampling.engine=hf is refused before any work (LoRA, prime and vine themselves run: the
    2-process tests above)."""
    pytest.importorskip("peft")
    from rewardlab.rl.config import RLConfig
    from rewardlab.rl.trainer import RLTrainer
    clean_env.setenv("ACCELERATE_USE_FSDP", "true")
    clean_env.setenv("FSDP_VERSION", "2")
    cfg = load_config(RLConfig, None, [f"model.name_or_path={tiny_policy}", "model.device=cpu",
                                       f"data.train_path={rl_probs / 'train.jsonl'}",
                                       f"data.test_path={rl_probs / 'test.jsonl'}",
                                       f"out={tmp_path / 'run'}", "progress=false", "algo=grpo",
                                       "model.lora.r=4", "sampling.engine=hf"])
    with pytest.raises(ValueError, match="LoRA policy under FSDP.*sampling.engine=hf"):
        RLTrainer(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_deepspeed_config_sizes_the_batch_for_the_world_and_clips_at_grad_clip():
    from rewardlab.training.distributed import deepspeed_config
    cfg = deepspeed_config(3, 4, 0.5)
    # DeepSpeed's check: train_batch_size = micro-batch · gradient_accumulation_steps · world
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * \
        cfg["gradient_accumulation_steps"] * 4 == 4
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["gradient_clipping"] == 0.5
    assert cfg["managed_gradient_accumulation"] is False   # step() is the boundary
    assert "fp16" not in cfg and "bf16" not in cfg
    assert deepspeed_config(2, 2, float("inf"))["gradient_clipping"] == 0.0   # measure only
    assert deepspeed_config(2, 2, 0.0)["gradient_clipping"] == 0.0


def test_gathered_and_clip_grad_norm_without_fsdp_are_the_plain_ones():
    import torch
    from rewardlab.training.distributed import Dist, clip_grad_norm
    m = torch.nn.Linear(3, 2)
    with Dist().gathered(m) as got:   # nothing sharded: the model as it is
        assert got is m
    with Dist().gathered(None) as got:
        assert got is None
    m.weight.grad = torch.full_like(m.weight, 2.0)
    m.bias.grad = torch.full_like(m.bias, 2.0)
    norm = clip_grad_norm(m.parameters(), 1.0)
    assert norm == pytest.approx(2.0 * 8 ** 0.5)
    total = torch.cat([m.weight.grad.flatten(), m.bias.grad]).norm().item()
    assert total == pytest.approx(1.0, abs=1e-5)

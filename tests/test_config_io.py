import json

import pytest

from rewardlab.config import ConfigError, load_config
from rewardlab.io import DataError, read_jsonl, write_jsonl
from rewardlab.rl.config import RLConfig


def test_yaml_and_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algo: ppo\nreward:\n  prm:\n    path: x\n    eta: 0.5\n")
    cfg = load_config(RLConfig, p, ["reward.prm.refine=clip_delta", "reward.prm.eta=0.7", "seed=3",
                                    "sampling.n=8", "kl.in_reward=false"])
    assert cfg.reward.prm.refine == "clip_delta" and cfg.reward.prm.eta == 0.7
    assert cfg.reward.prm.path == "x" and cfg.seed == 3 and cfg.sampling.n == 8
    assert cfg.kl.in_reward is False
    assert cfg.model.name_or_path == "runs/sft/final"  # defaults kept


@pytest.mark.parametrize("ov,msg", [
    (["reward.prm.eta=abc"], "reward.prm.eta"),
    (["nonsense=1"], "nonsense"),
    (["reward.prm.refine=bogus"], "refine"),
    (["algo=grpo", "sampling.n=1"], "sampling.n"),
    (["seed"], "key.sub=value"),
])
def test_bad_config_fails_loudly(ov, msg):
    with pytest.raises((ConfigError, ValueError), match=msg):
        load_config(RLConfig, None, ov)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(RLConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(RLConfig, bad)


def test_shipped_configs_load():
    from pathlib import Path
    names = sorted(p.name for p in Path("configs").glob("*.yaml"))
    assert {"ppo_success.yaml", "ppo_prm_raw.yaml", "ppo_prm_clip.yaml", "ppo_prm_delta.yaml",
            "ppo_prm_clip_delta.yaml", "ppo_orm.yaml", "grpo_outcome.yaml", "grpo_process.yaml"} <= set(names)
    for n in names:
        cfg = load_config(RLConfig, Path("configs") / n)
        assert cfg.out.endswith(n[:-5])


def test_jsonl_errors_name_file_line_field(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"question": "a", "answer": "1"}\n{"question": "b"\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON"):
        read_jsonl(p)
    p.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: field 'answer': missing"):
        read_jsonl(p, required=["question", "answer"])
    p.write_text('{"question": 5, "answer": "1"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'question': expected string"):
        read_jsonl(p, types={"question": str})
    p.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_jsonl(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="JSON object"):
        read_jsonl(p)
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "o.jsonl"
    write_jsonl(out, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(out, rows())
    assert [json.loads(x) for x in out.read_text().splitlines()] == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]


def test_describe_config_round_trips_with_field_help(tmp_path):
    from rewardlab.config import describe_config, field_docs
    from rewardlab.sft.trainer import SFTConfig
    assert field_docs(RLConfig)["lr"].startswith("Policy learning rate")
    cfg = load_config(RLConfig, "configs/gsm8k_grpo_chat.yaml",
                      ["seed=7", "reward.prm.refine=clip", 'data.system_prompt="a: b # c"'])
    text = describe_config(cfg)
    assert "# Policy learning rate" in text and "  # With ``chat``: a system message" in text
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert load_config(RLConfig, p) == cfg
    sft = load_config(SFTConfig, None, ["max_len=333", "data.style=math"])
    p.write_text(describe_config(sft))
    assert load_config(SFTConfig, p) == sft


def test_print_config_prints_and_trains_nothing(tmp_path, capsys):
    from rewardlab.cli.main import main
    out = tmp_path / "never"
    assert main(["rl", "--config", "configs/grpo_outcome.yaml", "--set", f"out={out}",
                 "--set", "kl.coef=0.3", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "algo: grpo" in text and "coef: 0.3" in text and "# Policy learning rate" in text
    assert not out.exists()
    assert main(["sft", "--out", str(out), "--print-config"]) == 0
    assert f"out: {out}" in capsys.readouterr().out and not out.exists()


@pytest.mark.parametrize("ov,field,choices", [
    (["advantage=grpo"], "advantage", "gae | grpo_outcome | grpo_process | dr_grpo | rloo"),
    (["loss_agg=mean"], "loss_agg", "token-mean | seq-mean-token-sum | seq-mean-token-mean | "
                                    "seq-mean-token-sum-norm"),
    (["ratio=seq"], "ratio", "token | sequence"),
    (["kl.estimator=k4"], "kl.estimator", "k1 | k2 | k3"),
])
def test_unknown_names_fail_at_load_naming_field_and_choices(tmp_path, ov, field, choices):
    with pytest.raises(ValueError) as e:
        load_config(RLConfig, None, ov)
    assert f"{field}=" in str(e.value) and choices in str(e.value)
    key, value = ov[0].split("=")                                    # the same from a YAML file
    p = tmp_path / "c.yaml"
    p.write_text(f"kl:\n  estimator: {value}\n" if key == "kl.estimator" else f"{key}: {value}\n")
    with pytest.raises(ValueError, match=field):
        load_config(RLConfig, p)


@pytest.mark.parametrize("ov,want", [
    ([], "token-mean"),
    (["algo=grpo"], "token-mean"),
    (["algo=grpo", "advantage=dr_grpo"], "seq-mean-token-sum-norm"),
    (["algo=grpo", "ratio=sequence"], "seq-mean-token-mean"),
    (["algo=grpo", "advantage=dr_grpo", "ratio=sequence"], "seq-mean-token-sum-norm"),
    (["algo=grpo", "advantage=dr_grpo", "loss_agg=token-mean"], "token-mean"),
    (["algo=grpo", "ratio=sequence", "loss_agg=seq-mean-token-sum"], "seq-mean-token-sum"),
])
def test_loss_agg_follows_the_papers_unless_set(ov, want):
    assert load_config(RLConfig, None, ov).loss_agg_name() == want


def test_convention_fields_load_and_print():
    from rewardlab.config import describe_config
    cfg = load_config(RLConfig, None, ["clip_eps_high=0.28", "kl.clamp=10", "norm_eps=1e-4",
                                       "loss_agg=seq-mean-token-mean"])
    assert (cfg.clip_eps_high, cfg.kl.clamp, cfg.norm_eps) == (0.28, 10.0, 1e-4)
    default = load_config(RLConfig)
    assert default.clip_eps_high is None and default.kl.clamp is None and default.norm_eps == 1e-6
    text = describe_config(default)
    for line in ("loss_agg: null", "clip_eps_high: null", "norm_eps: 1.0e-06", "  clamp: null"):
        assert line in text, line
    for bad in ("clip_eps_high=-0.1", "kl.clamp=0", "norm_eps=-1"):
        with pytest.raises(ValueError, match=bad.split("=")[0].split(".")[-1]):
            load_config(RLConfig, None, [bad])

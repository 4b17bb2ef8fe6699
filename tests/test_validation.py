"""Every number of every config is checked when it is loaded: finite, and in range where a range
means something; the error names the dotted field, and the CLI exits 2 without a traceback."""

import math

import pytest

from rewardlab.config import check_number, ConfigError, interval, load_config
from rewardlab.demo import budget_with, DemoConfig
from rewardlab.reward_models.train import RMTrainConfig
from rewardlab.rl.config import RLConfig
from rewardlab.sft.trainer import SFTConfig

CLASSES = {"sft": SFTConfig, "rm": RMTrainConfig, "rl": RLConfig}

# (config, override, the field the message must name)
BAD = [
    # SFT
    ("sft", "lr=nan", "lr"),
    ("sft", "lr=0", "lr"),
    ("sft", "lr=-1e-3", "lr"),
    ("sft", "lr=.inf", "lr"),
    ("sft", "weight_decay=-0.1", "weight_decay"),
    ("sft", "weight_decay=nan", "weight_decay"),
    ("sft", "grad_clip=-1", "grad_clip"),
    ("sft", "grad_clip=nan", "grad_clip"),
    ("sft", "min_lr_ratio=1.5", "min_lr_ratio"),
    ("sft", "min_lr_ratio=-.inf", "min_lr_ratio"),
    ("sft", "warmup_steps=-1", "warmup_steps"),
    ("sft", "steps=0", "steps"),
    ("sft", "batch_size=0", "batch_size"),
    ("sft", "max_len=1", "max_len"),
    ("sft", "data.testbed.unnecessary_rate=2", "data.testbed.unnecessary_rate"),
    ("sft", "data.testbed.unnecessary_rate=nan", "data.testbed.unnecessary_rate"),
    ("sft", "data.n_test=-5", "data.n_test"),
    # reward-model training
    ("rm", "lr=nan", "lr"),
    ("rm", "lr=inf", "lr"),
    ("rm", "centering=-0.01", "centering"),
    ("rm", "centering=nan", "centering"),
    ("rm", "margin=-1", "margin"),
    ("rm", "margin=inf", "margin"),
    ("rm", "eval_split=1.0", "eval_split"),
    ("rm", "eval_split=nan", "eval_split"),
    ("rm", "warmup_ratio=1", "warmup_ratio"),
    ("rm", "min_lr_ratio=2", "min_lr_ratio"),
    ("rm", "epochs=0", "epochs"),
    ("rm", "epochs=inf", "epochs"),
    ("rm", "grad_clip=-.inf", "grad_clip"),
    ("rm", "weight_decay=-1", "weight_decay"),
    ("rm", "eval_batch_size=0", "eval_batch_size"),
    # RL
    ("rl", "lr=nan", "lr"),
    ("rl", "lr=0", "lr"),
    ("rl", "gamma=1.01", "gamma"),
    ("rl", "gamma=nan", "gamma"),
    ("rl", "lam=-0.1", "lam"),
    ("rl", "clip_eps=0", "clip_eps"),
    ("rl", "clip_eps=inf", "clip_eps"),
    ("rl", "clip_eps_high=nan", "clip_eps_high"),
    ("rl", "kl.coef=-0.1", "kl.coef"),
    ("rl", "kl.coef=nan", "kl.coef"),
    ("rl", "kl.target=0", "kl.target"),
    ("rl", "kl.horizon=0", "kl.horizon"),
    ("rl", "kl.clamp=inf", "kl.clamp"),
    ("rl", "reward.prm.eta=1.5", "reward.prm.eta"),
    ("rl", "reward.prm.eta=nan", "reward.prm.eta"),
    ("rl", "reward.prm.alpha=inf", "reward.prm.alpha"),
    ("rl", "reward.orm.beta=nan", "reward.orm.beta"),
    ("rl", "reward.correct_reward=inf", "reward.correct_reward"),
    ("rl", "reward.incorrect_reward=-.inf", "reward.incorrect_reward"),
    ("rl", "sampling.temperature=-1", "sampling.temperature"),
    ("rl", "sampling.temperature=inf", "sampling.temperature"),
    ("rl", "sampling.top_p=0", "sampling.top_p"),
    ("rl", "sampling.top_p=1.5", "sampling.top_p"),
    ("rl", "sampling.top_p=nan", "sampling.top_p"),
    ("rl", "ppo_epochs=0", "ppo_epochs"),
    ("rl", "entropy_coef=nan", "entropy_coef"),
    ("rl", "norm_eps=-1e-6", "norm_eps"),
    ("rl", "value.lr=0", "value.lr"),
    ("rl", "value.clip_eps=nan", "value.clip_eps"),
    ("rl", "value.coef=-1", "value.coef"),
    ("rl", "grad_clip=nan", "grad_clip"),
]


@pytest.mark.parametrize("which,override,field", BAD)
def test_bad_number_is_refused_naming_the_field(which, override, field):
    with pytest.raises(ConfigError) as e:
        load_config(CLASSES[which], None, [override])
    msg = str(e.value)
    assert msg.startswith(field + " = ") and ("out of range" in msg or "not a finite" in msg), msg
    assert "allowed" in msg, msg


@pytest.mark.parametrize("which,field,value", [
    ("sft", "lr", "nan"), ("rm", "centering", "-1.0"), ("rl", "sampling.top_p", "2.0"),
])
def test_bad_number_in_a_yaml_file_too(tmp_path, which, field, value):
    path = tmp_path / "c.yaml"
    keys = field.split(".")
    text = "".join("  " * i + k + ":\n" for i, k in enumerate(keys[:-1]))
    path.write_text(text + "  " * (len(keys) - 1) + f"{keys[-1]}: {value}\n")
    with pytest.raises(ConfigError, match=field):
        load_config(CLASSES[which], path)


@pytest.mark.parametrize("argv,field", [
    (["sft", "--set", "lr=nan"], "lr"),
    (["sft", "--set", "min_lr_ratio=-1"], "min_lr_ratio"),
    (["train-rm", "--set", "centering=-1", "--data", "x.jsonl"], "centering"),
    (["train-rm", "--set", "lr=inf", "--data", "x.jsonl"], "lr"),
    (["rl", "--set", "kl.coef=nan"], "kl.coef"),
    (["rl", "--set", "reward.prm.eta=2"], "reward.prm.eta"),
    (["demo", "--alpha", "inf"], "prm_alpha"),
    (["demo", "--alpha", "nan"], "prm_alpha"),
    (["demo", "--eta", "nan"], "prm_eta"),
    (["demo", "--eta", "1.5"], "prm_eta"),
    (["demo", "--budget", "rm_lr=nan"], "budget.rm_lr"),
    (["demo", "--budget", "rm_lr=inf"], "budget.rm_lr"),
    (["demo", "--rl-set", "gamma=nan"], "gamma"),
])
def test_cli_exits_2_naming_the_field_before_any_work(tmp_path, capsys, argv, field):
    from rewardlab.cli.main import main
    out = tmp_path / "run"
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err, err
    assert not out.exists()        # nothing was started


def test_demo_config_checked_in_the_library_too(tmp_path):
    from rewardlab.demo import run_demo
    with pytest.raises(ConfigError, match="prm_eta = nan"):
        run_demo(DemoConfig(out=str(tmp_path / "d"), prm_eta=math.nan))
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match="budget.rl_n = 0"):
        budget_with(True, ["rl_n=0"])


def test_directly_built_configs_are_checked_by_validate():
    with pytest.raises(ConfigError, match="lr = nan"):
        SFTConfig(lr=math.nan).validate()
    cfg = RLConfig()
    cfg.kl.coef = math.inf
    with pytest.raises(ConfigError, match="kl.coef = inf"):
        cfg.validate()
    with pytest.raises(ConfigError, match="centering = -1"):
        RMTrainConfig(centering=-1.0, data=["x"]).validate()


def test_good_edge_values_pass():
    rl = load_config(RLConfig, None, ["gamma=0", "lam=1", "kl.coef=0", "grad_clip=.inf",
                                      "sampling.temperature=0", "sampling.top_p=1", "entropy_coef=-0.01",
                                      "reward.prm.eta=0", "reward.prm.alpha=-2", "clip_eps=1"])
    assert rl.grad_clip == math.inf and rl.sampling.temperature == 0
    assert load_config(RMTrainConfig, None, ["grad_clip=0", "centering=0.01"]).grad_clip == 0
    assert load_config(SFTConfig, None, ["min_lr_ratio=1", "weight_decay=0"]).min_lr_ratio == 1


def test_interval_and_check_number():
    iv = interval("(0, 1]")
    assert 1 in iv and 0.5 in iv and 0 not in iv and not iv.allows_inf
    assert interval("[0, inf]").allows_inf and not interval("[0, inf)").allows_inf
    check_number(math.inf, "x", "[0, inf]")
    with pytest.raises(ConfigError, match=r"x = -inf is not a finite number \(allowed: \[0, inf\]\)"):
        check_number(-math.inf, "x", "[0, inf]")
    with pytest.raises(ConfigError, match="y = nan"):
        check_number(math.nan, "y")
    check_number(True, "flag", "[0, 0]")   # booleans are not numbers here
    with pytest.raises(ValueError, match="not an interval"):
        interval("0..1")

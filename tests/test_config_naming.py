"""One naming in the configs (issue 19): the renamed keys (``steps``, ``model``, ``min_ops`` /
``max_ops``) and their deprecated old names, which load from one table in rewardlab.config."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rewardlab.config import (ConfigError, ConfigKeyDeprecationWarning, from_dict, load_config,
                              RENAMED_KEYS)
from rewardlab.data.testbed import TestbedConfig
from rewardlab.preference.iterative import IterativePOConfig
from rewardlab.preference.trainer import POConfig
from rewardlab.reward_models.train import RMTrainConfig
from rewardlab.rl.config import RLConfig
from rewardlab.sft.trainer import SFTConfig
from rewardlab.training.rundir import prepare_run_dir

CLASSES = {c.__name__: c for c in (SFTConfig, POConfig, RMTrainConfig, RLConfig, TestbedConfig)}

# (config class, overrides with the old keys, the same with the new keys)
CASES = [
    (SFTConfig, ["max_steps=7", "data.testbed.max_steps=3", "data.testbed.min_steps=3"],
     ["steps=7", "data.testbed.max_ops=3", "data.testbed.min_ops=3"]),
    (POConfig, ["max_steps=5"], ["steps=5"]),
    (RMTrainConfig, ["base=some/model", "max_steps=9"], ["model=some/model", "steps=9"]),
    (RLConfig, ["policy.name_or_path=runs/x", "policy.lora.r=4", "value.kind=shared"],
     ["model.name_or_path=runs/x", "model.lora.r=4", "value.kind=shared"]),
    (IterativePOConfig, ["po.max_steps=6", "po.data.testbed.max_steps=2"],
     ["po.steps=6", "po.data.testbed.max_ops=2"]),
]


def test_table_names_real_fields():
    """Every entry renames a key that is no longer a field to one that is."""
    for name, renames in RENAMED_KEYS.items():
        fields = {f.name for f in dataclasses.fields(CLASSES[name])}
        for old, new in renames.items():
            assert old not in fields and new in fields, (name, old, new)


@pytest.mark.parametrize("cls,old,new", CASES, ids=[c[0].__name__ for c in CASES])
def test_old_override_keys_load_as_the_new_with_a_warning(cls, old, new):
    with pytest.warns(ConfigKeyDeprecationWarning) as rec:
        cfg_old = load_config(cls, None, old)
    assert cfg_old == load_config(cls, None, new)
    assert cfg_old != cls()   # the overrides took effect
    messages = [str(w.message) for w in rec]
    assert len(messages) == len(set(messages))   # once per old key
    for o, n in zip(old, new):
        po, pn = o.split("=")[0].split("."), n.split("=")[0].split(".")
        i = next((i for i, (a, b) in enumerate(zip(po, pn)) if a != b), None)
        if i is not None:   # the warning names the renamed key by its dotted path
            ko, kn = ".".join(po[:i + 1]), ".".join(pn[:i + 1])
            assert any(f"config key {ko} is deprecated, use {kn} " in m for m in messages), messages


def test_old_yaml_keys_load_as_the_new_with_a_warning(tmp_path):
    old = {"policy": {"name_or_path": "runs/x", "dtype": "float32"}, "steps": 3,
           "data": {"testbed": {"max_steps": 2}}}
    new = {"model": {"name_or_path": "runs/x", "dtype": "float32"}, "steps": 3,
           "data": {"testbed": {"max_ops": 2}}}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(new))
    with pytest.warns(ConfigKeyDeprecationWarning) as rec:
        cfg = load_config(RLConfig, tmp_path / "old.yaml")
    assert cfg == load_config(RLConfig, tmp_path / "new.yaml")
    assert cfg.model.name_or_path == "runs/x" and cfg.data.testbed.max_ops == 2
    messages = " | ".join(str(w.message) for w in rec)
    assert f"{tmp_path / 'old.yaml'}: config key policy is deprecated, use model" in messages
    assert "config key data.testbed.max_steps is deprecated, use data.testbed.max_ops" in messages
    # a --set with the new key still overrides the file's old one
    with pytest.warns(ConfigKeyDeprecationWarning):
        assert load_config(RLConfig, tmp_path / "old.yaml",
                           ["model.name_or_path=runs/y"]).model.name_or_path == "runs/y"


def test_from_dict_takes_old_keys():
    with pytest.warns(ConfigKeyDeprecationWarning, match="max_steps is deprecated, use steps"):
        cfg = from_dict(RMTrainConfig, {"max_steps": 4, "base": "m"})
    assert (cfg.steps, cfg.model) == (4, "m")


def test_old_and_new_key_together_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="max_steps=... and steps=... set the same config key"):
        load_config(SFTConfig, None, ["max_steps=4", "steps=5"])
    with pytest.raises(ConfigError, match="policy.name_or_path=... set the same config key: model.name_or_path"):
        load_config(RLConfig, None, ["model.name_or_path=a", "policy.name_or_path=b"])
    (tmp_path / "both.yaml").write_text("base: a\nmodel: b\n")
    with pytest.raises(ConfigError, match=r"both\.yaml: config keys base and model are both given"):
        load_config(RMTrainConfig, tmp_path / "both.yaml")
    (tmp_path / "nested.yaml").write_text("data:\n  testbed:\n    max_steps: 2\n    max_ops: 3\n")
    with pytest.raises(ConfigError, match="data.testbed.max_steps and data.testbed.max_ops"):
        load_config(SFTConfig, tmp_path / "nested.yaml")


def test_run_recorded_under_old_keys_compares_under_the_new(tmp_path):
    """A run dir whose config.yaml predates the rename: the same settings resume, a changed
    renamed field is refused by its new name."""
    out = tmp_path / "run"
    out.mkdir()
    saved = dataclasses.asdict(SFTConfig(out=str(out), steps=2))
    saved["max_steps"] = saved.pop("steps")
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    (out / "metrics.jsonl").write_text("")
    prepare_run_dir(out, SFTConfig(out=str(out), steps=2), "sft", write=False)   # same run
    with pytest.raises(ConfigError, match=r"steps: 2 → 3"):
        prepare_run_dir(out, SFTConfig(out=str(out), steps=3), "sft", write=False)


def test_cli_set_old_key_warns_on_one_line():
    """The real command: ``--set max_steps=4`` works, says so on stderr, prints steps: 4; both
    spellings exit 2 with one line."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-c", "import sys; from rewardlab.cli.main import main; "
           "sys.exit(main(sys.argv[1:]))", "sft", "--set", "max_steps=4", "--print-config"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "\nsteps: 4\n" in p.stdout
    assert ("warning: --set: config key max_steps is deprecated, use steps (the old key will be "
            "removed in the next release)") in p.stderr
    p = subprocess.run(cmd[:-1] + ["--steps", "5", "--print-config"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "set the same config key: steps" in p.stderr

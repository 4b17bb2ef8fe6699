"""Output directories: a run with another config is refused (unless --overwrite), the same config
resumes, config.yaml is written only after the checks, and an unwritable --out is one line of
error before any work."""

import os

import pytest
import yaml

from rewardlab.cli.main import main
from rewardlab.config import ConfigError
from rewardlab.rl.config import RLConfig
from rewardlab.sft.trainer import SFTConfig
from rewardlab.training.rundir import config_diff, prepare_run_dir

SFT = ["--set", "steps=2", "--set", "batch_size=4", "--set", "model.size=tiny",
       "--set", "data.n_train=16", "--set", "data.n_test=0", "--set", "progress=false",
       "--set", "eval_every=0", "--set", "save_every=1", "--set", "log_every=1"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_sft_refuses_another_config_resumes_the_same_and_overwrites_on_request(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sft", "--out", str(out), *SFT]) == 0
    saved = (out / "config.yaml").read_text()
    steps = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    capsys.readouterr()
    # another config: refused before any work, naming each differing field, old → new
    assert main(["sft", "--out", str(out), *SFT, "--set", "lr=0.01", "--set", "seed=3"]) == 2
    err = _one_line_error(capsys)
    assert "different config" in err and "lr: 0.003 → 0.01" in err and "seed: 0 → 3" in err
    assert "--overwrite" in err
    assert (out / "config.yaml").read_text() == saved                      # not rewritten
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == steps
    # the same config (other stop/progress settings are not part of it) resumes: nothing to do
    mtime = os.stat(out / "final" / "config.json").st_mtime_ns
    assert main(["sft", "--out", str(out), *SFT, "--set", "stop_at=0"]) == 0
    rows = [r for r in map(yaml.safe_load, (out / "metrics.jsonl").read_text().splitlines())
            if "sft/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]                           # not trained again
    assert os.stat(out / "final" / "config.json").st_mtime_ns >= mtime
    # --overwrite: the old run is deleted and a fresh one of the new config is trained
    assert main(["sft", "--out", str(out), *SFT, "--set", "lr=0.01", "--overwrite"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["lr"] == 0.01 and cfg["overwrite"] is False
    rows = [r for r in map(yaml.safe_load, (out / "metrics.jsonl").read_text().splitlines())
            if "sft/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]                           # one run, not two


def test_rl_and_train_rm_refuse_another_config(tmp_path, capsys):
    rl = tmp_path / "rl"
    prepare_run_dir(rl, RLConfig(out=str(rl)), "ppo")
    (rl / "metrics.jsonl").write_text('{"step": 1}\n')       # a run was made there
    assert main(["rl", "--out", str(rl), "--set", "kl.coef=0.5"]) == 2
    err = _one_line_error(capsys)
    assert "kl.coef: 0.1 → 0.5" in err
    rm = tmp_path / "rm"
    (rm).mkdir()
    (rm / "config.yaml").write_text("kind: orm\nlr: 0.0001\n")
    (rm / "checkpoints").mkdir()
    assert main(["train-rm", "--out", str(rm), "--kind", "prm", "--data", "x.jsonl"]) == 2
    err = _one_line_error(capsys)
    assert "kind: orm → prm" in err
    assert (rm / "config.yaml").read_text() == "kind: orm\nlr: 0.0001\n"


def test_resume_false_over_a_run_needs_overwrite(tmp_path):
    out = tmp_path / "r"
    cfg = SFTConfig(out=str(out))
    prepare_run_dir(out, cfg, "sft")
    (out / "checkpoints").mkdir()
    cfg.resume = False
    with pytest.raises(ConfigError, match="resume=false would start afresh"):
        prepare_run_dir(out, cfg, "sft", resume=False)
    prepare_run_dir(out, cfg, "sft", resume=False, overwrite=True)
    assert not (out / "checkpoints").exists() and (out / "config.yaml").exists()


def test_overwrite_deletes_only_what_a_run_writes(tmp_path):
    out = tmp_path / "r"
    prepare_run_dir(out, SFTConfig(out=str(out)), "sft")
    for d in ("checkpoints/step_0000001", "final", "tb"):
        (out / d).mkdir(parents=True)
    for f in ("metrics.jsonl", "sft_summary.json", "notes.txt"):
        (out / f).write_text("x")
    prepare_run_dir(out, SFTConfig(out=str(out), lr=1.0), "sft", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt"]


@pytest.mark.parametrize("cmd", [["sft"], ["rl"], ["train-rm", "--data", "x.jsonl"]])
def test_out_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys, cmd):
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert main(cmd + ["--out", str(f)]) == 2
    err = _one_line_error(capsys)
    assert "is a file, not a directory" in err and str(f) in err
    assert f.read_text() == "keep me"
    assert main(cmd + ["--out", str(f / "run")]) == 2                   # a file on the way
    assert "cannot create the directory" in _one_line_error(capsys)


@pytest.mark.parametrize("cmd", [["sft"], ["rl"], ["train-rm", "--data", "x.jsonl"]])
def test_read_only_out_is_one_line_before_any_work(tmp_path, capsys, cmd, read_only_dir):
    d = read_only_dir
    assert main(cmd + ["--out", str(d)]) == 2
    err = _one_line_error(capsys)
    assert "cannot write there" in err and str(d) in err
    assert not os.path.exists(os.path.join(d, "config.yaml"))


def test_config_diff_ignores_run_control_fields():
    old = {"lr": 1e-3, "out": "a", "stop_at": 3, "model": {"size": "tiny", "dtype": "auto"}}
    new = {"lr": 1e-3, "out": "b", "stop_at": 0, "model": {"size": "small", "dtype": "auto"},
           "max_bad_steps": 3}
    assert config_diff(old, new) == [("model.size", "tiny", "small")]

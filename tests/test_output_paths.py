"""Output paths are checked before any work, in every command: a read-only --out, an --out that is
a file, an output that is also an input, two outputs on one path → one line, exit 2, nothing
written (issue 21)."""

import os

import pytest
import yaml

from rewardlab.cli.main import main
from rewardlab.config import ConfigError
from rewardlab.io import check_output_dir, check_output_path, check_outputs, DataError
from rewardlab.sft.trainer import SFTConfig
from rewardlab.training.rundir import check_run_out, prepare_run_dir


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return " ".join(err.split())


def test_helpers_refuse_and_create_nothing(tmp_path, read_only_dir):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "afile")
    with pytest.raises(NotADirectoryError):
        check_output_dir(tmp_path / "afile" / "sub")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_output_path(tmp_path / "new2" / "x.jsonl") == tmp_path / "new2" / "x.jsonl"
    ro = read_only_dir
    with pytest.raises(PermissionError) as e:
        check_output_path(os.path.join(ro, "x.jsonl"))
    assert e.value.filename == os.path.join(ro, "x.jsonl")        # the path the user gave
    with pytest.raises(PermissionError):
        check_output_dir(os.path.join(ro, "run"))
    with pytest.raises(ConfigError, match="cannot write there"):
        check_run_out(os.path.join(ro, "run"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ro"]   # nothing created


def test_same_paths_are_found_through_links_and_dots(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(src)
    with pytest.raises(DataError, match=r"the output \(--out\) is also an input \(--input\)"):
        check_outputs(files=[("--out", tmp_path / "sub" / ".." / "in.jsonl")],
                      inputs=[("--input", src)])
    with pytest.raises(DataError, match="is also an input"):
        check_outputs(files=[("--out", tmp_path / "link.jsonl")], inputs=[("--input", src)])
    with pytest.raises(DataError, match="--out and --pairs name the same output file"):
        check_outputs(files=[("--out", tmp_path / "a.jsonl"), ("--pairs", tmp_path / "./a.jsonl")])
    check_outputs(files=[("--out", tmp_path / "a.jsonl"), ("--pairs", tmp_path / "b.jsonl"),
                         ("--x", None)], inputs=[("--input", src), ("--dataset", "gsm8k")])


# commands whose --out is a folder; "MISSING" stands for a model/data that does not exist, so a
# command that did any work before checking --out would fail on it instead
DIR_OUT = {
    "eval": ["eval", "--model", "MISSING"],
    "bon": ["bon", "--model", "MISSING"],
    "eval-prm": ["eval-prm", "--model", "MISSING", "--data", "MISSING.jsonl"],
    "sft": ["sft", "--model", "MISSING"],
    "rl": ["rl", "--model", "MISSING"],
    "train-rm": ["train-rm", "--data", "MISSING.jsonl"],
    "po": ["po", "--pairs", "MISSING.jsonl"],
    "po-iterative": ["po-iterative", "--set", "po.model.name_or_path=MISSING"],
    "demo": ["demo", "--quick"],
}
FILE_OUT = {
    "data testbed": ["data", "testbed"],
    "sample": ["sample", "--model", "MISSING"],
    "label": ["label", "--input", "MISSING.jsonl"],
    "score": ["score", "--model", "MISSING", "--input", "MISSING.jsonl"],
    "pairs": ["pairs", "--input", "MISSING.jsonl"],
}


@pytest.mark.parametrize("cmd", list(DIR_OUT))
def test_folder_out_that_is_a_file_or_read_only(tmp_path, capsys, cmd, read_only_dir):
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert main(DIR_OUT[cmd] + ["--out", str(f)]) == 2
    err = _one_line(capsys)
    assert "is a file, not a directory" in err and str(f) in err
    assert f.read_text() == "keep me"
    ro = read_only_dir
    assert main(DIR_OUT[cmd] + ["--out", os.path.join(ro, "run")]) == 2
    err = _one_line(capsys)
    assert os.path.join(ro, "run") in err and ("cannot write" in err or "no permission" in err)
    assert not os.path.exists(os.path.join(ro, "run"))


@pytest.mark.parametrize("cmd", list(FILE_OUT))
def test_file_out_that_is_a_folder_or_read_only(tmp_path, capsys, cmd, read_only_dir):
    (tmp_path / "adir").mkdir()
    assert main(FILE_OUT[cmd] + ["--out", str(tmp_path / "adir")]) == 2
    assert "it is a directory" in _one_line(capsys)
    ro = read_only_dir
    assert main(FILE_OUT[cmd] + ["--out", os.path.join(ro, "x.jsonl")]) == 2
    assert f"cannot use {os.path.join(ro, 'x.jsonl')}: no permission" in _one_line(capsys)


def test_output_equal_to_an_input_or_to_another_output(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "q", "steps": ["a"], "outcome": 1}\n')
    before = rows.read_text()
    for argv, words in [
        (["pairs", "--input", str(rows), "--out", str(rows)], "also an input (--input)"),
        (["label", "--input", str(rows), "--out", str(rows)], "also an input (--input)"),
        (["score", "--model", "MISSING", "--input", str(rows), "--out", str(rows)],
         "also an input (--input)"),
        (["grade", "--predictions", str(rows), "--out", str(rows)], "also an input (--predictions)"),
        (["label", "--input", str(rows), "--out", str(tmp_path / "o.jsonl"), "--pairs",
          str(tmp_path / "o.jsonl")], "--out and --pairs name the same output file"),
    ]:
        assert main(argv) == 2, argv
        assert words in _one_line(capsys), argv
    assert rows.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_config_yaml_alone_is_not_a_run(tmp_path):
    out = tmp_path / "r"
    prepare_run_dir(out, SFTConfig(out=str(out), lr=1e-3), "sft")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    prepare_run_dir(out, SFTConfig(out=str(out), lr=5e-3), "sft")     # nothing to resume: fine
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 5e-3
    (out / "round_0").mkdir()                                       # po-iterative's rounds count
    with pytest.raises(ConfigError, match="lr: 0.005 → 0.001"):
        prepare_run_dir(out, SFTConfig(out=str(out), lr=1e-3), "sft")
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 5e-3   # not rewritten


def test_a_run_input_inside_what_the_run_writes_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    rows = '{"question": "q", "steps": ["a"], "step_labels": [1], "outcome": 1}\n'
    (out / "metrics.jsonl").write_text(rows)
    (out / "final" / "pairs.jsonl").write_text('{"question": "q", "chosen": "a", "rejected": "b"}\n')
    (out / "train.jsonl").write_text(rows)   # not a file a run writes over: allowed
    for argv, words in [
        (["train-rm", "--data", str(out / "metrics.jsonl"), "--out", str(out)],
         "metrics.jsonl): the run writes there"),
        (["po", "--pairs", str(out / "final" / "pairs.jsonl"), "--out", str(out), "--overwrite"],
         "(final): --overwrite would delete it"),
        (["sft", "--out", str(out), "--set", f"data.train_path={out / 'metrics.jsonl'}"],
         "lies in the run in out"),
    ]:
        assert main(argv) == 2, argv
        assert words in _one_line(capsys), argv
    assert sorted(p.name for p in out.iterdir()) == ["final", "metrics.jsonl", "train.jsonl"]
    from rewardlab.training.rundir import check_run_inputs
    check_run_inputs(out, [out / "train.jsonl", None, tmp_path / "missing.jsonl"], overwrite=True)


def test_run_inputs_are_every_path_a_config_names(tmp_path, capsys):
    from rewardlab.config import load_config
    from rewardlab.preference.iterative import IterativePOConfig
    from rewardlab.reward_models.train import RMTrainConfig
    from rewardlab.rl.config import RLConfig
    from rewardlab.training.rundir import run_inputs

    rl = dict(run_inputs(load_config(RLConfig, None, [
        "model.name_or_path=p", "value.init=v", "reward.prm.path=prm", "reward.orm.path=orm",
        "data.train_path=t.jsonl", "data.test_path=e.jsonl"])))
    assert {k: rl[k] for k in ("model.name_or_path", "value.init", "reward.prm.path",
                               "reward.orm.path", "data.train_path", "data.test_path")} == {
        "model.name_or_path": "p", "value.init": "v", "reward.prm.path": "prm",
        "reward.orm.path": "orm", "data.train_path": "t.jsonl", "data.test_path": "e.jsonl"}
    rm = run_inputs(RMTrainConfig(model="b", data=["a.jsonl", "b.jsonl"], eval_data=["c.jsonl"]))
    assert ("data", "b.jsonl") in rm and ("eval_data", "c.jsonl") in rm and ("model", "b") in rm
    it = dict(run_inputs(load_config(IterativePOConfig, None, ["po.model.name_or_path=m",
                                                               "po.ref_model=r"])))
    assert it["po.model.name_or_path"] == "m" and it["po.ref_model"] == "r"
    # sft --dataset names a file the run writes: refused before any work, the file kept
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    assert main(["sft", "--dataset", str(out / "metrics.jsonl"), "--out", str(out)]) == 2
    assert "(data.dataset) lies in the run" in _one_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]
    # a rule-free call: a hub id or testbed is not on disk, so never refused
    from rewardlab.training.rundir import check_run_inputs
    check_run_inputs(out, [("model.name_or_path", "Qwen/Qwen2.5-0.5B"), ("x", "testbed")], True)

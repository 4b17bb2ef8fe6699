"""Experiment trackers (``report_to``, through accelerate) and ``--push-to-hub``.

TensorBoard runs for real; wandb/trackio/mlflow are not installed here, so their missing-package
path is real and their dispatch is shown with fake :class:`accelerate.tracking.GeneralTracker`
subclasses put in accelerate's tracker table (what ``register_tracker_class`` does). The hub is a
fake ``HfApi``: nothing goes over the network.
"""

from __future__ import annotations

import json
import sys

import pytest

from rewardlab.cli.main import main
from rewardlab.config import ConfigError
from rewardlab.training import trackers as T
from rewardlab.training.metrics import MetricsLogger, read_metrics


# ------------------------------------------------------------------------------ fakes

def _fake_tracker(name: str, logdir: bool = False):
    """A GeneralTracker subclass named ``name`` that records what it is given."""
    from accelerate.tracking import GeneralTracker

    class Fake(GeneralTracker):
        requires_logging_directory = logdir
        instances: list = []

        def __init__(self, run_name, *args, **kwargs):
            super().__init__()
            self.run_name, self.args, self.kwargs = run_name, args, kwargs
            self.started = self.finished = False
            self.config, self.rows = None, []
            Fake.instances.append(self)

        @property
        def tracker(self):
            return self

        def start(self):
            self.started = True

        def store_init_configuration(self, values):
            self.config = dict(values)

        def log(self, values, step=None, **kwargs):
            self.rows.append((step, dict(values)))

        def finish(self):
            self.finished = True

    Fake.name = name
    return Fake


@pytest.fixture
def fake(monkeypatch):
    """Tracker ``fake`` registered in accelerate's table (undone after the test)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    cls = _fake_tracker("fake")
    monkeypatch.setitem(LOGGER_TYPE_TO_CLASS, "fake", cls)
    return cls


@pytest.fixture
def fake_wandb(monkeypatch):
    """accelerate's ``wandb`` tracker replaced by a recorder, its package reported installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    cls = _fake_tracker("wandb")
    monkeypatch.setitem(LOGGER_TYPE_TO_CLASS, "wandb", cls)
    real = T.installed
    monkeypatch.setattr(T, "installed", lambda name: name == "wandb" or real(name))
    return cls


class _FakeHub:
    """Records what would go over the network."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw["repo_id"], kw))


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub
    fake_hub = _FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: fake_hub)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    return fake_hub


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An HfApi that fails the test if it is ever built, and no token anywhere."""
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi",
                        lambda token=None: pytest.fail("the hub was contacted"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def _missing(monkeypatch, *names):
    """Make ``names`` not importable (as when they are not installed)."""
    for n in names:
        monkeypatch.setitem(sys.modules, n, None)


SFT = ["sft", "--steps", "2", "--set", "model.size=tiny", "--set", "data.n_train=8",
       "--set", "data.n_test=0", "--set", "log_every=1", "--set", "save_every=0",
       "--set", "progress=false"]


def _rows_without_time(path):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(path)]


# ------------------------------------------------------------------------------ report_to

def test_parse_report_to_comma_lists_none_and_unknown_names():
    assert T.parse_report_to("wandb, TensorBoard,wandb") == ["wandb", "tensorboard"]
    assert T.parse_report_to(["mlflow", "trackio"]) == ["mlflow", "trackio"]
    assert T.parse_report_to("none") == [] and T.parse_report_to("") == []
    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbord'.*valid: none, .*tensorboard"):
        T.parse_report_to("tensorbord")


@pytest.mark.parametrize("name", ["wandb", "trackio", "mlflow"])
def test_a_tracker_not_installed_is_refused_naming_its_pip_install(monkeypatch, name):
    _missing(monkeypatch, name)
    assert not T.installed(name)
    with pytest.raises(ConfigError) as e:
        T.check_report_to(f"tensorboard,{name}")
    msg = str(e.value)
    assert f"needs the {name} package" in msg and f"pip install 'rewardlab[{name}]'" in msg
    assert "\n" not in msg
    assert T.check_report_to("tensorboard") == ["tensorboard"]   # tensorboard is a core dependency


def test_the_logger_sends_metrics_jsonl_rows_to_every_tracker(tmp_path, fake):
    log = MetricsLogger(tmp_path, report_to="tensorboard,fake", run_name="r1", config=None)
    log.log(1, {"loss": 2.5, "n": 3, "flag": True, "bad": float("nan")})
    log.log(2, {"loss": 1.5, "n": 4})
    log.close()
    [t] = fake.instances
    assert t.started and t.finished and t.run_name == T.PROJECT
    # the same numbers as metrics.jsonl, at the same steps; nan and bools stay out
    assert t.rows == [(1, {"loss": 2.5, "n": 3.0}), (2, {"loss": 1.5, "n": 4.0})]
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 2.5), (2, 1.5)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("loss")] == [(1, 2.5), (2, 1.5)]
    assert "bad" not in ea.Tags()["scalars"]


def test_report_to_none_writes_metrics_jsonl_only(tmp_path, fake):
    log = MetricsLogger(tmp_path, report_to="none")
    log.log(1, {"loss": 1.0})
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["loss"] == 1.0
    assert not (tmp_path / "tb").exists() and log.trackers is None and fake.instances == []
    MetricsLogger(tmp_path / "b", tensorboard=False).close()       # the old flag: no TensorBoard
    assert not (tmp_path / "b" / "tb").exists()


def test_tensorboard_false_drops_tensorboard_only(fake):
    from rewardlab.reward_models.train import RMTrainConfig
    assert T.report_to_of(RMTrainConfig()) == ["tensorboard"]
    assert T.report_to_of(RMTrainConfig(report_to="fake,tensorboard", tensorboard=False)) == ["fake"]
    assert T.report_to_of(RMTrainConfig(report_to="fake,tensorboard"), tensorboard=False) == ["fake"]
    assert T.report_to_of(None) == ["tensorboard"]


def test_sft_by_default_writes_tensorboard_with_the_metrics_jsonl_values(tmp_path):
    out = tmp_path / "s"
    assert main(SFT + ["--out", str(out)]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("sft/loss")] == \
        [(r["step"], pytest.approx(r["sft/loss"])) for r in rows]
    assert len(rows) == 2


def test_sft_report_to_wandb_goes_through_accelerate_with_run_name_and_config(tmp_path, fake_wandb):
    out = tmp_path / "w"
    assert main(SFT + ["--out", str(out), "--report-to", "wandb"]) == 0
    [t] = fake_wandb.instances
    assert t.started and t.finished
    assert t.run_name == "rewardlab" and t.kwargs == {"name": "sft-w", "dir": str(out)}
    assert t.config["steps"] == 2 and t.config["model.size"] == "tiny"
    assert t.config["report_to"] == "wandb"
    # every metrics.jsonl row reached the tracker, value for value
    rows = _rows_without_time(out / "metrics.jsonl")
    assert [(s, v) for s, v in t.rows] == [(r.pop("step"), r) for r in rows]
    assert not (out / "tb").exists()                 # wandb only: TensorBoard left out


# ------------------------------------------------------------------------------ real trackers
#
# With the tracker's package installed (``pip install 'rewardlab[wandb]'``, ``[mlflow]``,
# ``[trackio]``), a run logs to its offline store, and the values read back from that store are
# metrics.jsonl's. Without the package the test is skipped.

def _wandb_history(out) -> dict[int, dict]:
    """step → the values an offline wandb run in ``out/wandb`` recorded, read from its
    transaction log (``run-*.wandb``: LevelDB log records of ``wandb_internal_pb2.Record``)."""
    import struct
    from wandb.proto import wandb_internal_pb2

    [path] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, part, block, hist = 7, b"", 32768, {}
    while pos + 7 <= len(raw):
        if block - pos % block < 7:            # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 0:
            break
        part = data if kind in (1, 2) else part + data      # full, first | middle, last
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(part)
            if rec.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                       for i in rec.history.item}                  # "sft/loss": nested_key
                hist.setdefault(rec.history.step.num, {}).update(
                    {k: v for k, v in row.items() if not k.startswith("_")})
    return hist


def _mlflow_history(out) -> dict[int, dict]:
    """step → the metrics of the one run in the MLflow store at ``MLFLOW_TRACKING_URI``."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient()
    [exp] = [e for e in client.search_experiments() if e.name == T.PROJECT]
    [run] = client.search_runs([exp.experiment_id])
    assert run.data.tags["mlflow.runName"].endswith(f"-{out.name}")   # <trainer>-<out dir>
    hist: dict[int, dict] = {}
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            hist.setdefault(m.step, {})[key] = m.value
    return hist


def _trackio_history(out) -> dict[int, dict]:
    """step → the values of the local trackio run (its SQLite store under ``TRACKIO_DIR``)."""
    from trackio.sqlite_storage import SQLiteStorage
    [run] = SQLiteStorage.get_runs(T.PROJECT)
    hist: dict[int, dict] = {}
    for row in SQLiteStorage.get_logs(T.PROJECT, run):
        step = row.get("step")
        hist.setdefault(step, {}).update({k: v for k, v in row.items()
                                          if k not in ("step", "timestamp") and not k.startswith("_")})
    return hist


def _offline(name: str, tmp_path, monkeypatch):
    """Point tracker ``name`` at a store under ``tmp_path``, fully offline; returns its reader."""
    pytest.importorskip(name)
    if name == "wandb":
        for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-dir"),
                           "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                           "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        return _wandb_history
    if name == "mlflow":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        return _mlflow_history
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.delenv("TRACKIO_SPACE_ID", raising=False)
    for mod in [m for n, m in sys.modules.items() if n.split(".")[0] == "trackio"]:
        if hasattr(mod, "TRACKIO_DIR"):   # read from the environment once, at import
            monkeypatch.setattr(mod, "TRACKIO_DIR", tmp_path / "trackio")
    return _trackio_history


def _assert_same_metrics(hist: dict[int, dict], out) -> None:
    """Every metrics.jsonl row's finite numbers are in the tracker's history at its step."""
    rows = _rows_without_time(out / "metrics.jsonl")
    assert rows
    for r in rows:
        step = r.pop("step")
        want = {k: float(v) for k, v in r.items() if isinstance(v, (int, float))}
        assert {k: hist.get(step, {}).get(k) for k in want} == pytest.approx(want), step


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio"])
def test_sft_logs_its_metrics_to_the_real_tracker_offline(tmp_path, monkeypatch, name):
    history = _offline(name, tmp_path, monkeypatch)
    out = tmp_path / "s"
    assert main(SFT + ["--out", str(out), "--report-to", name]) == 0
    _assert_same_metrics(history(out), out)


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio"])
def test_rl_logs_its_metrics_to_the_real_tracker_offline(tiny_policy, problems_dir, tmp_path,
                                                         monkeypatch, name):
    history = _offline(name, tmp_path, monkeypatch)
    out = tmp_path / "rl"
    assert main(["rl", "--model", str(tiny_policy), "--out", str(out), "--steps", "2",
                 "--report-to", name, "--set", "algo=grpo",
                 "--set", f"data.train_path={problems_dir / 'train.jsonl'}",
                 "--set", f"data.test_path={problems_dir / 'test.jsonl'}",
                 "--set", "prompts_per_step=2", "--set", "sampling.n=2",
                 "--set", "sampling.max_new_tokens=8", "--set", "minibatch_size=4",
                 "--set", "eval_every=0", "--set", "eval_k=0", "--set", "save_every=0",
                 "--set", "progress=false", "--set", "data.n_test=2"]) == 0
    hist = history(out)
    _assert_same_metrics(hist, out)
    assert all("reward/total" in hist[s] for s in (1, 2)), hist   # both steps arrived


def test_report_to_is_not_part_of_a_runs_identity():
    from rewardlab.training.rundir import config_diff
    old = {"report_to": "tensorboard", "push_to_hub": None, "lr": 1.0}
    assert config_diff(old, {"report_to": "wandb", "push_to_hub": "me/x", "lr": 1.0}) == []
    assert config_diff(old, {**old, "lr": 2.0}) == [("lr", 1.0, 2.0)]


def test_only_the_main_process_logs_and_pushes(tmp_path, fake, hub, monkeypatch):
    import rewardlab.training.engine as E

    class Worker(E.Dist):
        def __init__(self):
            super().__init__()
            self.is_main = False

    from rewardlab.sft.trainer import SFTConfig
    cfg = SFTConfig(out=str(tmp_path / "r"), report_to="fake", push_to_hub="me/x")
    monkeypatch.setattr(E, "Dist", Worker)
    eng = E.Engine(tmp_path / "r", "sft", progress=False, config=cfg)
    eng.restore()
    eng.log(1, {"loss": 1.0})
    (tmp_path / "r" / "final").mkdir()
    (tmp_path / "r" / "final" / "config.json").write_text("{}")
    eng.summary("sft_summary.json", {"loss": 1.0})
    eng.close()
    assert fake.instances == [] and hub.calls == []
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.parametrize("cmd", ["sft", "train-rm", "rl", "po", "po-iterative"])
def test_every_trainer_refuses_a_missing_tracker_package_before_any_work(tmp_path, monkeypatch,
                                                                         capsys, cmd):
    _missing(monkeypatch, "mlflow")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"question": "1 + 1 ?", "chosen": "2", "rejected": "3"}) + "\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "q", "steps": ["a"], "outcome": 1}) + "\n")
    out = tmp_path / "run"
    extra = {"sft": [], "train-rm": ["--data", str(rows), "--model", "testbed"], "rl": [],
             "po": ["--pairs", str(pairs)], "po-iterative": []}[cmd]
    assert main([cmd, "--out", str(out), "--report-to", "tensorboard,mlflow", *extra]) == 2
    err = capsys.readouterr().err
    assert "mlflow package" in err and "pip install 'rewardlab[mlflow]'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()   # nothing written


# ------------------------------------------------------------------------------ push to hub

@pytest.mark.parametrize("repo", ["a/b/c", "bad id", "-x/y", "me//x"])
def test_a_malformed_repo_id_is_refused_before_any_training(tmp_path, no_hub, monkeypatch, capsys,
                                                            repo):
    monkeypatch.setenv("HF_TOKEN", "hf_test")   # a token is there: the id alone is at fault
    assert main(SFT + ["--out", str(tmp_path / "s"), "--push-to-hub", repo]) == 2
    err = capsys.readouterr().err
    assert "is not a hub repo id" in err and not (tmp_path / "s").exists()


def test_a_push_without_a_token_is_refused_before_any_training(tmp_path, no_hub, capsys):
    assert main(SFT + ["--out", str(tmp_path / "s"), "--push-to-hub", "me/tiny-sft"]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "HF_TOKEN" in err and not (tmp_path / "s").exists()


def test_sft_push_to_hub_uploads_the_final_folder(tmp_path, hub, capsys):
    out = tmp_path / "s"
    assert main(SFT + ["--out", str(out), "--push-to-hub", "me/tiny-sft"]) == 0
    [(c1, repo1, kw1), (c2, repo2, kw2)] = hub.calls
    assert (c1, repo1, kw1["repo_type"], kw1["exist_ok"]) == ("create_repo", "me/tiny-sft", "model", True)
    assert (c2, repo2, kw2["folder_path"]) == ("upload_folder", "me/tiny-sft", str(out / "final"))
    assert (out / "final" / "README.md").exists() and "trainer_state.pt" in kw2["ignore_patterns"]
    assert "pushed" in capsys.readouterr().err


def test_po_push_to_hub_uploads_the_final_folder(tmp_path, hub):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"question": f"{i} + 1 ?", "chosen": f"{i + 1}",
                                         "rejected": f"{i + 2}"}) + "\n" for i in range(4)))
    out = tmp_path / "p"
    assert main(["po", "--pairs", str(pairs), "--out", str(out), "--steps", "2",
                 "--push-to-hub", "me/tiny-po", "--report-to", "none",
                 "--set", "model.size=tiny", "--set", "batch_size=2", "--set", "progress=false",
                 "--set", "save_every=0", "--set", "eval_every=0", "--set", "max_len=32"]) == 0
    [(_, repo, _), (_, repo2, kw)] = hub.calls
    assert repo == repo2 == "me/tiny-po" and kw["folder_path"] == str(out / "final")
    assert not (out / "tb").exists()


def test_rl_push_to_hub_uploads_the_final_folder(tiny_policy, problems_dir, tmp_path, hub, fake):
    out = tmp_path / "rl"
    assert main(["rl", "--model", str(tiny_policy), "--out", str(out), "--steps", "1",
                 "--push-to-hub", "me/tiny-rl", "--report-to", "fake",
                 "--set", f"data.train_path={problems_dir / 'train.jsonl'}",
                 "--set", f"data.test_path={problems_dir / 'test.jsonl'}",
                 "--set", "prompts_per_step=2", "--set", "sampling.n=2",
                 "--set", "sampling.max_new_tokens=8", "--set", "minibatch_size=4",
                 "--set", "ppo_epochs=1", "--set", "eval_every=0", "--set", "eval_k=0",
                 "--set", "save_every=0", "--set", "progress=false", "--set", "data.n_test=2"]) == 0
    [(_, repo, _), (_, repo2, kw)] = hub.calls
    assert repo == repo2 == "me/tiny-rl" and kw["folder_path"] == str(out / "final")
    [t] = fake.instances
    assert [s for s, _ in t.rows] == [r["step"] for r in read_metrics(out / "metrics.jsonl")]


def test_train_rm_push_to_hub_flag_uploads_the_final_folder(tiny_policy, tmp_path, hub):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"question": f"{i} + 1 ?", "steps": [f"{i} + 1 = {i + 1}"],
                                        "outcome": i % 2}) + "\n" for i in range(4)))
    out = tmp_path / "rm"
    assert main(["train-rm", "--kind", "orm", "--data", str(rows), "--model", str(tiny_policy),
                 "--out", str(out), "--steps", "1", "--push-to-hub", "me/tiny-orm",
                 "--set", "batch_size=4", "--set", "eval_split=0.0", "--set", "progress=false",
                 "--set", "device=cpu"]) == 0
    [(_, repo, _), (_, repo2, kw)] = hub.calls
    assert repo == repo2 == "me/tiny-orm" and kw["folder_path"] == str(out / "final")
    assert (out / "tb").is_dir()                      # the default tracker


def _fake_sampler(model, tok, problems, n, sampling=None, seed=0, style="gsm8k", prompt_fn=None,
                  step_split="lines"):
    """Stands in for the policy: per problem, its right solution and n-1 wrong answers."""
    return [{"id": p.id, "sample": j, "question": p.question, "gold": p.answer,
             "response": p.solution if j == 0 else "the answer is 12345", "answer": None,
             "steps": list(p.steps) if j == 0 else ["the answer is 12345"], "outcome": int(j == 0)}
            for p in problems for j in range(n)]


def test_po_iterative_logs_round_rows_to_its_trackers_and_pushes_the_last_policy(
        tmp_path, monkeypatch, hub, fake):
    import rewardlab.preference.iterative as it
    monkeypatch.setattr(it, "sample_responses", _fake_sampler)
    out = tmp_path / "it"
    assert main(["po-iterative", "--design", "dpo", "--out", str(out), "--report-to", "fake",
                 "--push-to-hub", "me/tiny-iter",
                 "--set", "rounds=2", "--set", "problems_per_round=3", "--set", "sampling.n=2",
                 "--set", "eval_rounds=false", "--set", "po.model.size=tiny",
                 "--set", "po.model.device=cpu", "--set", "po.data.n_train=8",
                 "--set", "po.data.n_test=0", "--set", "po.data.testbed.max_ops=2",
                 "--set", "po.batch_size=2", "--set", "po.max_len=48", "--set", "po.save_every=0",
                 "--set", "po.eval_every=0", "--set", "po.progress=false",
                 "--set", "po.report_to=none"]) == 0
    # the iterative run's tracker got one row per round (its metrics.jsonl rows); the rounds'
    # trainers logged to po.report_to (none) and did not push
    [t] = fake.instances
    rows = read_metrics(out / "metrics.jsonl")
    assert [s for s, _ in t.rows] == [r["step"] for r in rows] and len(rows) == 2
    assert [v["round/n_pairs"] for _, v in t.rows] == [r["round/n_pairs"] for r in rows]
    assert t.finished and not (out / "round_0" / "tb").exists()
    [(_, repo, _), (_, repo2, kw)] = hub.calls
    assert repo == repo2 == "me/tiny-iter" and kw["folder_path"] == str(out / "round_1" / "final")

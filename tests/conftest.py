import os

# Idle OpenMP threads spin by default; on a busy 2-core machine that slows tiny models 5-10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models run fastest on one thread, and never stall a busy machine


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """A random-initialised tiny testbed policy saved in HF format (path)."""
    from rewardlab.models.loading import make_testbed_policy
    return make_testbed_policy(tmp_path_factory.mktemp("tiny_policy"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def problems_dir(tmp_path_factory):
    """Testbed train.jsonl / test.jsonl (40 + 6 problems of at most 2 steps) for short RL runs."""
    from rewardlab.data.testbed import TestbedConfig, make_splits
    from rewardlab.io import write_jsonl
    d = tmp_path_factory.mktemp("rlprobs")
    train, test = make_splits(TestbedConfig(max_ops=2), 40, 6, seed=0)
    write_jsonl(d / "train.jsonl", [p.to_dict() for p in train])
    write_jsonl(d / "test.jsonl", [p.to_dict() for p in test])
    return d


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write to: one without write bits, or (as root, who
    ignores them) sysfs; the test is skipped when there is none."""
    import stat
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR)
    for cand in (str(d), "/sys/kernel"):
        try:
            open(os.path.join(cand, ".rewardlab-probe"), "w").close()
        except OSError:
            return cand
        os.unlink(os.path.join(cand, ".rewardlab-probe"))
    pytest.skip("no read-only directory available")

import os

import pytest
import torch

torch.set_num_threads(2)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """A random-initialised tiny testbed policy saved in HF format (path)."""
    from rewardlab.models.loading import make_testbed_policy
    return make_testbed_policy(tmp_path_factory.mktemp("tiny_policy"), size="tiny", seed=0)

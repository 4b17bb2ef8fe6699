"""rewardlab: training-time reward design for LLM reasoning.

The main entry points, importable from the package itself::

    from rewardlab import RLConfig, load_config, train_rl, refine

Packages, bottom layer first (each imports only from layers below it; docs/architecture.md):
``io``/``config``/``registry``/``stats`` → ``data`` → ``grading`` → ``models`` → ``rewards``
(pure shaping math) and ``training`` (the engine) → ``reward_models`` → ``eval`` → ``sft``,
``rl``, ``preference`` → ``demo`` → ``cli``.

The names below load on first use, so ``import rewardlab`` (and the CLI's start) stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # configs
    "load_config": "rewardlab.config", "ConfigError": "rewardlab.config",
    "DataError": "rewardlab.io",
    "DataConfig": "rewardlab.data.config", "ModelConfig": "rewardlab.models.loading",
    "SamplingConfig": "rewardlab.models.sampling", "RLConfig": "rewardlab.rl.config",
    "SFTConfig": "rewardlab.sft.trainer", "RMTrainConfig": "rewardlab.reward_models.train",
    "DemoConfig": "rewardlab.demo", "TestbedConfig": "rewardlab.data.testbed",
    # trainers
    "train_rl": "rewardlab.rl.trainer", "train_sft": "rewardlab.sft.trainer",
    "train_reward_model": "rewardlab.reward_models.train", "run_demo": "rewardlab.demo",
    # reward models
    "load_reward_model": "rewardlab.reward_models.models",
    "build_reward_model": "rewardlab.reward_models.models", "RMSpec": "rewardlab.reward_models.models",
    # reward shaping
    "refine": "rewardlab.rewards.refine", "clip": "rewardlab.rewards.refine",
    "delta": "rewardlab.rewards.refine", "clip_delta": "rewardlab.rewards.refine",
    "min_form": "rewardlab.rewards.refine",
    "normed": "rewardlab.rewards.refine", "build_token_rewards": "rewardlab.rewards.compose",
    # data, grading, evaluation
    "load_dataset_by_name": "rewardlab.data.datasets", "Problem": "rewardlab.data.problem",
    "grade": "rewardlab.grading.answers", "extract_answer": "rewardlab.grading.answers",
    "is_equiv": "rewardlab.grading.answers", "evaluate_policy": "rewardlab.eval.evaluate",
    "load_model_and_tokenizer": "rewardlab.models.loading",
    # registries
    "REFINERS": "rewardlab.rewards.refine", "ADVANTAGES": "rewardlab.rl.advantages",
    "LOSS_AGGREGATIONS": "rewardlab.rl.losses", "RATIOS": "rewardlab.rl.losses", "KL_ESTIMATORS": "rewardlab.rewards.compose",
    "PREFERENCE_LOSSES": "rewardlab.preference.losses", "LABELERS": "rewardlab.reward_models.labeling",
    "OBJECTIVES": "rewardlab.reward_models.train",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rewardlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

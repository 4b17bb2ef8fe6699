"""rewardlab: training-time reward design for LLM reasoning.

The main entry points, importable from the package itself (docs/python_api.md, run as a test)::

    from rewardlab import RLConfig, load_config, train_rl, refine, load_reward_model

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
    "load_config": "rewardlab.config", "save_config": "rewardlab.config",
    "ConfigError": "rewardlab.config", "DataError": "rewardlab.io",
    "DataConfig": "rewardlab.data.config", "ModelConfig": "rewardlab.models.loading",
    "LoRAConfig": "rewardlab.models.loading",
    "SamplingConfig": "rewardlab.models.sampling", "RLConfig": "rewardlab.rl.config",
    "SFTConfig": "rewardlab.sft.trainer", "RMTrainConfig": "rewardlab.reward_models.train",
    "DemoConfig": "rewardlab.demo", "DemoBudget": "rewardlab.demo",
    "TestbedConfig": "rewardlab.data.testbed",
    "PreferenceLossConfig": "rewardlab.preference.losses",
    # trainers and pipelines
    "train_rl": "rewardlab.rl.trainer", "train_sft": "rewardlab.sft.trainer",
    "train_reward_model": "rewardlab.reward_models.train", "run_demo": "rewardlab.demo",
    "evaluate_reward_model": "rewardlab.reward_models.train",
    "sample_responses": "rewardlab.reward_models.pipeline",
    "label_rows": "rewardlab.reward_models.pipeline",
    "make_pairs": "rewardlab.reward_models.pipeline",
    "make_step_pairs": "rewardlab.reward_models.pipeline",
    "get_labeler": "rewardlab.reward_models.labeling",
    # reward models
    "load_reward_model": "rewardlab.reward_models.models",
    "save_ensemble": "rewardlab.reward_models.models",
    "EnsembleRM": "rewardlab.reward_models.models",
    "build_reward_model": "rewardlab.reward_models.models", "RMSpec": "rewardlab.reward_models.models",
    "RewardModel": "rewardlab.reward_models.models", "ScoreResult": "rewardlab.reward_models.models",
    "score_file": "rewardlab.reward_models.scoring",
    # reward shaping (the refinements)
    "refine": "rewardlab.rewards.refine", "clip": "rewardlab.rewards.refine",
    "delta": "rewardlab.rewards.refine", "clip_delta": "rewardlab.rewards.refine",
    "min_form": "rewardlab.rewards.refine",
    "normed": "rewardlab.rewards.refine", "build_token_rewards": "rewardlab.rewards.compose",
    # data, formats, grading, evaluation
    "load_dataset_by_name": "rewardlab.data.datasets", "Problem": "rewardlab.data.problem",
    "generate_problems": "rewardlab.data.testbed",
    "read_records": "rewardlab.data.formats", "read_rm_rows": "rewardlab.reward_models.data",
    "to_trl_stepwise": "rewardlab.data.formats", "to_trl_preference": "rewardlab.data.formats",
    "grade": "rewardlab.grading.answers", "extract_answer": "rewardlab.grading.answers",
    "is_equiv": "rewardlab.grading.answers", "evaluate_policy": "rewardlab.eval.evaluate",
    "run_bon": "rewardlab.eval.bon", "evaluate_prm_on_rows": "rewardlab.eval.prm_eval",
    "load_model_and_tokenizer": "rewardlab.models.loading",
    # registries (name -> implementation; add your own with .register(name))
    "Registry": "rewardlab.registry",
    "REFINERS": "rewardlab.rewards.refine", "GROUP_REFINERS": "rewardlab.rewards.compose",
    "ADVANTAGES": "rewardlab.rl.advantages",
    "LOSS_AGGREGATIONS": "rewardlab.rl.losses", "RATIOS": "rewardlab.rl.losses",
    "KL_ESTIMATORS": "rewardlab.rewards.compose",
    "PREFERENCE_LOSSES": "rewardlab.preference.losses", "LABELERS": "rewardlab.reward_models.labeling",
    "OBJECTIVES": "rewardlab.reward_models.train", "FORMATS": "rewardlab.data.formats",
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

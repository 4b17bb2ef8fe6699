"""rewardlab: training-time reward design for LLM reasoning.

Stages of the data flow, one sub-package each:
``data`` (datasets, the arithmetic testbed) → ``grading`` → ``models`` (policy, value,
reward-model wrappers) → ``rewards`` (ORM/PRM/BT, refinements, composition) → ``rl``
(rollouts, advantages, losses, trainers) → ``preference`` → ``eval`` → ``cli``.
"""

__version__ = "0.1.0"

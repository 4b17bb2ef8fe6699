"""``DataConfig``: which problems a run trains and evaluates on, and how it prompts them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar
from pathlib import Path

from rewardlab.data.datasets import load_dataset_by_name
from rewardlab.data.problem import Problem
from rewardlab.data.prompts import (adds_bos, chat_prompt_fn, check_prompt_settings,
                                    default_prompt, template_prompt_fn)
from rewardlab.data.testbed import make_splits, TestbedConfig
from rewardlab.io import write_jsonl


@dataclass
class DataConfig:
    """Which problems to train and evaluate on."""

    RANGES: ClassVar[dict[str, str]] = {"n_train": "[0, inf)", "n_test": "[0, inf)"}

    dataset: str = "testbed"
    """testbed | gsm8k | math500 | path/to/problems.jsonl"""
    train_path: str | None = None
    """Optional JSONL of problems (Problem rows) for training; overrides ``dataset``."""
    test_path: str | None = None
    """Optional JSONL of held-out problems."""
    n_train: int = 4000
    """Testbed: number of training problems to generate."""
    n_test: int = 200
    """Testbed: number of held-out problems; other datasets: evaluation limit."""
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    """Testbed difficulty knobs."""
    prompt_template: str | None = None
    """The policy's prompt, with ``{question}`` where the question goes (e.g.
    ``"Question: {question}\\nAnswer:"``); None: ``question + "\\n"``."""
    chat: bool = False
    """Wrap each question in the tokenizer's chat template (HF chat models), ending with the
    assistant turn's generation prompt."""
    system_prompt: str | None = None
    """With ``chat``: a system message before the question."""
    style: str | None = None
    """How responses are graded and split into steps: gsm8k (the answer after ``####``, else the
    last number; one step per line) | math (the last ``\\boxed{}``; steps are blank-line
    paragraphs). None: math for math500, else gsm8k."""

    def validate(self) -> None:
        check_prompt_settings(self.prompt_template, self.chat, self.system_prompt)
        if self.style not in (None, "gsm8k", "math"):
            raise ValueError(f"data.style must be gsm8k or math, got {self.style!r}")

    def answer_style(self) -> str:
        """``style``, or the dataset's: math for math500, gsm8k otherwise."""
        return self.style or ("math" if self.dataset == "math500" else "gsm8k")


def save_splits(data: DataConfig, train: list[Problem], test: list[Problem],
                out_dir: Path | None) -> None:
    """Record generated testbed splits under ``out_dir`` as train.jsonl / test.jsonl (nothing
    for a file or hub dataset, or without ``out_dir``)."""
    if out_dir is None or data.train_path or data.dataset != "testbed":
        return
    write_jsonl(Path(out_dir) / "train.jsonl", [p.to_dict() for p in train])
    write_jsonl(Path(out_dir) / "test.jsonl", [p.to_dict() for p in test])


def load_problems(data: DataConfig, seed: int, out_dir: Path | None = None) -> tuple[list[Problem], list[Problem]]:
    """Train and held-out problems for a run; testbed problems are generated (and saved under
    ``out_dir`` as train.jsonl / test.jsonl) from the seed."""

    if data.train_path:
        train = load_dataset_by_name(data.train_path, "train")
        test = load_dataset_by_name(data.test_path, "test", limit=data.n_test) if data.test_path else []
        return train, test
    if data.dataset == "testbed":
        train, test = make_splits(data.testbed, data.n_train, data.n_test, seed=seed)
        save_splits(data, train, test, out_dir)
        return train, test
    train = load_dataset_by_name(data.dataset, "train") if data.dataset != "math500" else []
    test = load_dataset_by_name(data.dataset, "test", limit=data.n_test)
    return train, test


def make_prompt_fn(data: DataConfig, tokenizer) -> Callable[[Problem], str]:
    """The policy's prompt function for a run: the tokenizer's chat template when ``data.chat``
    (with ``data.system_prompt``), ``data.prompt_template`` when set, else :func:`default_prompt`.
    SFT, RL rollouts and their held-out evaluations all use it, so a policy is trained and
    evaluated on the prompts it will be sampled with.

    rewardlab tokenizes prompts without adding special tokens (a chat template writes its own),
    so for a tokenizer that :func:`adds_bos` the plain and template prompts start with the BOS
    token's text, as the model saw in pre-training."""

    if data.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat prompts need a tokenizer with a chat template, and this one has "
                             "none (use a prompt template instead)")
        return chat_prompt_fn(tokenizer, data.system_prompt)
    fn = template_prompt_fn(data.prompt_template) if data.prompt_template is not None else default_prompt
    if adds_bos(tokenizer):
        bos = tokenizer.bos_token
        return lambda p: bos + fn(p)
    return fn

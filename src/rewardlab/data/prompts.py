"""Prompts: how a problem becomes the text a policy is sampled (and trained) on.

One place for every prompt format: rewardlab's default (``question + "\\n"``), a template holding
``{question}``, and a tokenizer's chat template. SFT examples, RL rollouts, reward-model
labelling and held-out evaluation all build their prompts here.
"""

from __future__ import annotations

from typing import Callable

from rewardlab.data.problem import Problem


def default_prompt(problem: Problem) -> str:
    """rewardlab's prompt format: ``question + "\\n"``."""
    return problem.question + "\n"


def template_prompt_fn(template: str) -> Callable[[Problem], str]:
    """A prompt function from a template holding ``{question}`` (plain replacement, so braces
    elsewhere in the template or the question are left alone)."""
    if "{question}" not in template:
        raise ValueError("prompt template must contain {question}")
    return lambda p: template.replace("{question}", p.question)


def chat_prompt_fn(tokenizer, system: str | None = None) -> Callable[[Problem], str]:
    """A prompt function that wraps the question in the tokenizer's chat template (HF chat
    models), ending with the generation prompt of the assistant turn."""
    def fn(p: Problem) -> str:
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": p.question}]
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return fn


def check_prompt_settings(template: str | None, chat: bool, system: str | None,
                          names=("data.prompt_template", "data.chat=true", "data.system_prompt")) -> None:
    """Raise ValueError, naming the settings by ``names`` (template, chat, system), for a template
    without ``{question}``, a template together with chat, or a system prompt without chat."""
    t, c, sys_ = names
    if template is not None and "{question}" not in template:
        raise ValueError(f"{t} must contain {{question}}")
    if chat and template is not None:
        raise ValueError(f"set {c} or {t}, not both")
    if system is not None and not chat:
        raise ValueError(f"{sys_} needs {c}")


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` puts its BOS token before a text by default (Llama and Mistral
    tokenizers do; Qwen's and the testbed's do not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return False
    ids = tokenizer("1", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos



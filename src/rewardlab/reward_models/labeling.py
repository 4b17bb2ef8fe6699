"""Step labels for process reward models: oracle, Monte-Carlo estimation, LLM judge.

Every labeller has one interface, ``label_steps(question, steps, gold) -> list[float]`` (one
label in [0, 1] per step; the last step holds the final answer), and a batched
``label_batch(items)`` over ``(question, steps, gold)`` triples. They are built by name through
one registry: ``get_labeler("oracle" | "mc" | "judge", **kwargs)``.

- **oracle** (testbed only): the exact verdict of :func:`rewardlab.data.testbed.oracle_label`.
- **mc** (Math-Shepherd, Wang et al. 2024, arXiv 2312.08935): from every step prefix, N
  completions are sampled; the soft label is the fraction whose final answer is correct, the hard
  label is 1 when any is correct.
- **judge**: an LLM reads the question, the earlier steps and the step, and the label is
  P(" Yes") / (P(" Yes") + P(" No")) from its next-token logits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from rewardlab.data.problem import Problem
from rewardlab.data.testbed import oracle_label
from rewardlab.grading.grader import Grader
from rewardlab.models.sampling import generate_rollouts, SamplingConfig


Item = tuple[str, Sequence[str], str]  # (question, steps, gold)

LABELERS: dict[str, Callable[..., "Labeler"]] = {}


def register_labeler(name: str):
    """Class decorator: make a labeller constructible by ``get_labeler(name, ...)``."""
    def deco(cls):
        if name in LABELERS:
            raise ValueError(f"labeller {name!r} is already registered")
        LABELERS[name] = cls
        cls.name = name
        return cls
    return deco


def get_labeler(name: str, **kwargs) -> "Labeler":
    """Build the labeller registered as ``name`` (oracle | mc | judge)."""
    if name not in LABELERS:
        raise ValueError(f"unknown labeller {name!r}; use one of {sorted(LABELERS)}")
    return LABELERS[name](**kwargs)


class Labeler:
    """Base class: ``label_batch`` defaults to ``label_steps`` on every item."""

    name = "base"

    def label_steps(self, question: str, steps: Sequence[str], gold: str) -> list[float]:
        return self.label_batch([(question, steps, gold)])[0]

    def label_batch(self, items: Sequence[Item]) -> list[list[float]]:
        return [self.label_steps(q, s, g) for q, s, g in items]


@register_labeler("oracle")
class OracleLabeler(Labeler):
    """Testbed oracle: 1.0 for a step whose arithmetic is right and whose operands are known,
    0.0 otherwise; the final ``####`` step is 1.0 when its answer equals ``gold``."""

    def label_steps(self, question: str, steps: Sequence[str], gold: str) -> list[float]:

        if any("\n" in s or not s.strip() for s in steps):
            raise ValueError("oracle labeller: every step must be one non-empty line")
        labels = oracle_label(question, "\n".join(steps), gold).labels
        return [float(x) for x in labels]


def prefix_prompt(question: str, steps: Sequence[str], k: int, prompt: str | None = None) -> str:
    """The prompt that continues a solution after its first ``k`` steps: the policy's
    ``prompt`` for the question (default ``question + "\\n"``) + ``"\\n".join(steps[:k]) + "\\n"``."""
    return (question + "\n" if prompt is None else prompt) + "\n".join(steps[:k]) + "\n"


@register_labeler("mc")
class MCLabeler(Labeler):
    """Monte-Carlo step labels (Math-Shepherd).

    For step k of a solution with K steps, N completions are sampled from the prefix s_1..s_k;
    completion j is correct when the final answer of ``s_1..s_k + completion_j`` equals gold:

        soft_k = (1/N) Σ_j correct_j,      hard_k = 1[∃ j: correct_j] = 1[soft_k > 0]

    The last step (k = K) holds the final answer, so its label is the solution's own outcome
    (no sampling). All prefixes of all items go into ONE ``generate_rollouts`` call (n = N).
    """

    def __init__(self, model, tokenizer, n: int = 8, max_new_tokens: int = 48,
                 temperature: float = 1.0, top_p: float = 1.0, soft: bool = False,
                 style: str = "gsm8k", batch_size: int = 256, seed: int = 0,
                 prompt_fn: Callable[[Problem], str] | None = None):
        if n < 1:
            raise ValueError("mc labeller: n must be >= 1")
        if temperature <= 0:
            raise ValueError("mc labeller: temperature must be > 0 (greedy completions are all alike)")
        self.model, self.tokenizer = model, tokenizer
        self.n, self.max_new_tokens, self.temperature, self.top_p = n, max_new_tokens, temperature, top_p
        self.soft, self.style, self.batch_size, self.seed = soft, style, batch_size, seed
        self.prompt_fn = prompt_fn  # the policy's prompt (e.g. its chat template); None: question + "\n"

    def estimates(self, items: Sequence[Item]) -> list[list[float]]:
        """Soft labels (fraction of correct completions) of every step of every item."""

        grader = Grader(self.style)
        prompts, where = [], []  # where[r] = (item, step) of prompt r
        for i, (q, steps, gold) in enumerate(items):
            head = None if self.prompt_fn is None else self.prompt_fn(
                Problem(id="", question=q, solution="", answer=gold, source=""))
            for k in range(1, len(steps)):  # the last step is graded directly
                prompts.append(prefix_prompt(q, steps, k, head))
                where.append((i, k - 1))
        out = [[0.0] * len(steps) for _, steps, _ in items]
        for i, (_, steps, gold) in enumerate(items):
            if steps:
                out[i][-1] = float(grader("\n".join(steps), gold)[1])
        if not prompts:
            return out
        cfg = SamplingConfig(n=self.n, temperature=self.temperature, top_p=self.top_p,
                             max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        batch = generate_rollouts(self.model, self.tokenizer, prompts, cfg, seed=self.seed,
                                  compute_logprobs=False)
        for r, (i, k) in enumerate(where):
            q, steps, gold = items[i]
            prefix = "\n".join(steps[:k + 1])
            completions = batch.texts[r * self.n:(r + 1) * self.n]  # prompt-major rows
            n_ok = sum(grader(prefix + "\n" + c, gold)[1] for c in completions)
            out[i][k] = n_ok / self.n
        return out

    def label_batch(self, items: Sequence[Item]) -> list[list[float]]:
        soft = self.estimates(items)
        return soft if self.soft else [[float(x > 0) for x in row] for row in soft]


DEFAULT_TEMPLATE = (
    "Question: {question}\n"
    "Previous steps:\n{previous}\n"
    "Step: {step}\n"
    "Is this step correct? Answer Yes or No.\n"
    "Answer:"
)


@register_labeler("judge")
class JudgeLabeler(Labeler):
    """LLM-as-judge step labels from next-token logits.

    For step k the prompt is ``template`` filled with the question, the earlier steps (one per
    line, ``(none)`` for the first step) and step k; the label is

        p_k = softmax(z[yes], z[no])[0]

    over the logits z of the judge's next token. ``yes_token``/``no_token`` default to
    ``" Yes"``/``" No"`` (use ``"+"``/``"-"`` for a Math-Shepherd-style judge); each must encode
    to one token, else its first token is used. ``chat=True`` wraps the prompt in the
    tokenizer's chat template. All prompts go through one batched forward pass (chunks of
    ``batch_size``).
    """

    def __init__(self, model, tokenizer, template: str = DEFAULT_TEMPLATE,
                 yes_token: str = " Yes", no_token: str = " No", chat: bool = False,
                 batch_size: int = 64):
        for field in ("{question}", "{previous}", "{step}"):
            if field not in template:
                raise ValueError(f"judge template must contain {field}")
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.chat, self.batch_size = chat, batch_size
        self.yes_id = self._token_id(yes_token)
        self.no_id = self._token_id(no_token)
        if self.yes_id == self.no_id:
            raise ValueError(f"judge: {yes_token!r} and {no_token!r} encode to the same token "
                             f"(id {self.yes_id}); choose verdict tokens the tokenizer knows, "
                             "e.g. yes_token='+', no_token='-'")

    def _token_id(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError(f"judge: verdict token {text!r} encodes to nothing")
        return ids[0]

    def prompt(self, question: str, steps: Sequence[str], k: int) -> str:
        """The judge prompt for step ``k`` (0-based) of ``steps``."""
        previous = "\n".join(steps[:k]) if k else "(none)"
        text = (self.template.replace("{question}", question).replace("{previous}", previous)
                .replace("{step}", steps[k]))
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                      tokenize=False, add_generation_prompt=True)
        return text

    @torch.no_grad()
    def verdicts(self, prompts: Sequence[str]) -> list[float]:
        """P(yes) among {yes, no} at the next token of every prompt."""
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # the verdict is read at the last position
        out: list[float] = []
        try:
            for s in range(0, len(prompts), self.batch_size):
                enc = self.tokenizer(list(prompts[s:s + self.batch_size]), return_tensors="pt",
                                     padding=True, add_special_tokens=False).to(device)
                mask = enc["attention_mask"]
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(input_ids=enc["input_ids"], attention_mask=mask,
                                    position_ids=position_ids).logits[:, -1, :]  # (B, V)
                pair = logits[:, [self.yes_id, self.no_id]].float()            # (B, 2)
                out += torch.softmax(pair, dim=-1)[:, 0].tolist()
        finally:
            self.tokenizer.padding_side = side
            if was_training:
                self.model.train()
        return out

    def label_batch(self, items: Sequence[Item]) -> list[list[float]]:
        prompts = [self.prompt(q, steps, k) for q, steps, _ in items for k in range(len(steps))]
        flat = self.verdicts(prompts) if prompts else []
        out, pos = [], 0
        for _, steps, _ in items:
            out.append(flat[pos:pos + len(steps)])
            pos += len(steps)
        return out


__all__ = ["LABELERS", "register_labeler", "get_labeler", "Labeler", "OracleLabeler", "MCLabeler",
           "JudgeLabeler", "DEFAULT_TEMPLATE", "prefix_prompt"]

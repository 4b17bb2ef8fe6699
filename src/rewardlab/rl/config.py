"""Typed configuration of an RL run (PPO or GRPO). Loaded from YAML with dotted overrides:

    rewardlab rl --config configs/ppo_prm_clip.yaml --set reward.prm.eta=0.7 --set seed=1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rewardlab.config import check_numbers
from rewardlab.data.config import DataConfig
from rewardlab.models.loading import ModelConfig
from rewardlab.models.sampling import check_engine, SamplingConfig
from rewardlab.reward_models.models import lm_prm_spec
from rewardlab.rewards.compose import KL_ESTIMATORS
from rewardlab.rl.advantages import ADVANTAGES
from rewardlab.rl.losses import LOSS_AGGREGATIONS, RATIOS


@dataclass
class PRMRewardConfig:
    """The process reward: α · refine(PRM step scores) at each step's last token."""

    RANGES: ClassVar[dict[str, str]] = {"eta": "[0, 1]"}   # alpha: any finite number

    path: str | None = None
    """Directory of a PRM saved by ``rewardlab train-rm --kind prm`` (or, with ``tag``, any causal
    LM: directory or hub id); None switches it off."""
    tag: str | None = None
    """Set to use a plain causal LM as an LM-head PRM: ``tag`` goes after every step and the step
    score is P(good_token) against P(bad_token) at the tag (Math-Shepherd: tag ' ки', '+' / '-')."""
    good_token: str = "+"
    """With ``tag``: the label token of a good step."""
    bad_token: str = "-"
    """With ``tag``: the label token of a bad step."""
    alpha: float = 1.0
    """Weight α of the PRM term."""
    refine: str = "none"
    """none | clip | delta | clip_delta | min_form | normed."""
    eta: float = 0.8
    """Clip threshold η: c_k = min(r_k − η, 0)."""
    exclude_last: bool = True
    """Delta: leave the final (answer) step out; the success reward judges it."""
    temperature: float = 0.1
    """min_form: the softmin temperature T of w_k = softmax(−r/T)_k (PURE, arXiv 2504.15275)."""
    signed: bool = False
    """min_form: refine PURE's signed step scores s_k = 2 r_k − 1 instead of r_k."""

    def refine_options(self) -> dict:
        """The extra settings of ``refine`` ({} for the refinements that take only η)."""
        if self.refine == "min_form":
            return {"temperature": self.temperature, "signed": self.signed}
        return {}

    def spec(self):
        """The :class:`RMSpec` of an LM-head PRM built from ``tag`` (None without a tag: the
        spec saved with the PRM is used). Raises ValueError for an empty tag or equal tokens."""
        if self.tag is None:
            return None
        return lm_prm_spec(self.tag, self.good_token, self.bad_token)


@dataclass
class ORMRewardConfig:
    """The outcome reward model term β · ORM(solution) on the last response token."""

    path: str | None = None
    """Directory of an ORM saved by ``rewardlab train-rm --kind orm``; None switches it off."""
    beta: float = 1.0
    """Weight β of the ORM term."""


@dataclass
class RewardConfig:
    """success + α·PRM + β·ORM; any subset can be switched on."""

    success: bool = True
    """Use the verifier's success reward."""
    correct_reward: float = 1.0
    incorrect_reward: float = 0.0
    prm: PRMRewardConfig = field(default_factory=PRMRewardConfig)
    orm: ORMRewardConfig = field(default_factory=ORMRewardConfig)


@dataclass
class KLConfig:
    """KL regularisation to the frozen reference policy."""

    RANGES: ClassVar[dict[str, str]] = {"coef": "[0, inf)", "clamp": "(0, inf)", "target": "(0, inf)",
                                        "horizon": "[1, inf)"}

    coef: float = 0.1
    """kl_coef (seed default 0.1). 0 (with ``adaptive`` off) drops the KL term: the reference
    model is not loaded and its log-prob pass is skipped."""
    in_reward: bool = True
    """True: −coef·KL_t is added to every token's reward (PPO); False: coef·KL in the loss (GRPO)."""
    estimator: str = "k1"
    """k1 | k2 | k3 (SPEC, KL estimators per token)."""
    clamp: float | None = None
    """Clamp each token's KL estimate to [−clamp, clamp] (in the reward and in the loss); null:
    no clamp (rewardlab's default). verl clamps k3 ("low_var_kl") at 10."""
    adaptive: bool = False
    """Adapt coef towards ``target`` (Ziegler et al. 2019)."""
    target: float = 0.05
    horizon: int = 10000


@dataclass
class ValueConfig:
    """The critic (PPO only)."""

    RANGES: ClassVar[dict[str, str]] = {"lr": "(0, inf)", "coef": "[0, inf)", "clip_eps": "(0, inf)"}

    kind: str = "separate"
    """separate (its own backbone, initialised from ``init``) | shared (a head on the policy)."""
    init: str | None = None
    """Checkpoint that initialises a separate critic (default: the policy)."""
    lr: float = 1e-3
    coef: float = 0.5
    """Weight of the value loss."""
    clip_eps: float = 0.2
    """Value clipping range."""


@dataclass
class PrimeConfig:
    """PRIME (``advantage=prime``; Cui et al., arXiv 2502.01456): an implicit PRM π_φ, initialised
    from the SFT policy (``model.name_or_path``) and trained online on outcome labels, gives
    token rewards β·log π_φ(y_t)/π_ref(y_t) (Yuan et al., arXiv 2412.01981)."""

    beta: float = 0.05
    """β of the implicit reward and of the PRM's outcome logit β·Σ_t log π_φ/π_ref (PRIME: 0.05)."""
    lr: float = 2e-5
    """Learning rate of π_φ (AdamW, one step per RL step; the paper's 7B runs: 1e-6)."""
    whiten: bool = True
    """Whiten the summed advantages over the batch's response tokens (PRIME's verl recipe)."""


@dataclass
class VineConfig:
    """VinePPO (``advantage=vine``; Kazemnejad et al., arXiv 2410.01679): Monte-Carlo values of
    every step boundary from ``k`` fresh rollouts each."""

    k: int = 4
    """Rollouts per step boundary (the paper: 9 on MATH)."""


@dataclass
class RLConfig:
    """A PPO or GRPO run."""

    RANGES: ClassVar[dict[str, str]] = {
        "steps": "[1, inf)", "prompts_per_step": "[1, inf)", "ppo_epochs": "[1, inf)",
        "minibatch_size": "[1, inf)", "micro_batch_size": "[1, inf)", "lr": "(0, inf)",
        "clip_eps": "(0, 1]", "clip_eps_high": "[0, inf)", "norm_eps": "[0, inf)", "gamma": "[0, 1]",
        "lam": "[0, 1]", "grad_clip": "[0, inf]", "eval_every": "[0, inf)", "eval_k": "[0, inf)",
        "save_every": "[0, inf)", "stop_at": "[0, inf)", "max_bad_steps": "[1, inf)"}

    out: str = "runs/rl"
    """Run directory."""
    seed: int = 0
    algo: str = "ppo"
    """ppo (critic + GAE by default) | grpo (no critic)."""
    advantage: str | None = None
    """gae | grpo_outcome | grpo_process | dr_grpo | rloo | prime | vine; None: gae for ppo,
    grpo_outcome for grpo. prime and vine use no critic, whatever ``algo`` says."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name_or_path="runs/sft/final"))
    """The policy to train (``--model``: ``model.name_or_path``) and how to load it."""
    data: DataConfig = field(default_factory=lambda: DataConfig(
        train_path="runs/sft/train.jsonl", test_path="runs/sft/test.jsonl"))
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=4, temperature=1.0,
                                                                           max_new_tokens=48))
    reward: RewardConfig = field(default_factory=RewardConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    prime: PrimeConfig = field(default_factory=PrimeConfig)
    """advantage=prime only."""
    vine: VineConfig = field(default_factory=VineConfig)
    """advantage=vine only."""
    steps: int = 60
    """RL steps (one rollout batch + its updates each)."""
    prompts_per_step: int = 32
    """Prompts per rollout batch; B = prompts_per_step × sampling.n responses."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    minibatch_size: int = 128
    """Responses per optimizer step (128 = the whole default batch: one on-policy update)."""
    micro_batch_size: int | None = None
    """Responses per forward/backward pass (gradients accumulate over the passes of a minibatch,
    each weighted by its share of the minibatch's tokens, so the update is the minibatch's), and
    per reference / value pass. None: the whole minibatch. Set it on a GPU when B × T × vocab
    logits do not fit (e.g. 8 for a 150k-token vocabulary and 512-token answers)."""
    lr: float = 2e-5
    """Policy learning rate (testbed: 2e-5 improves held-out accuracy steadily; 1e-4 and above
    overfits each batch and lowers it)."""
    clip_eps: float = 0.2
    """PPO clip ε: ρ is clipped to [1 − clip_eps, 1 + clip_eps_high]."""
    clip_eps_high: float | None = None
    """Upper clip ε_high (DAPO's clip-higher, e.g. 0.28); null: the same as clip_eps."""
    ratio: str = "token"
    """token (PPO/GRPO) | sequence (GSPO: length-normalised sequence ratio)."""
    loss_agg: str | None = None
    """How the per-token policy loss (and the KL loss and entropy bonus) becomes one number:
    token-mean (Σ over all response tokens / their count; DAPO) | seq-mean-token-mean (mean over
    responses of their token mean; GRPO paper, GSPO) | seq-mean-token-sum | seq-mean-token-sum-norm
    (Σ over all tokens / (B · sampling.max_new_tokens); Dr. GRPO). null: auto —
    seq-mean-token-sum-norm for advantage dr_grpo, seq-mean-token-mean for ratio sequence,
    token-mean otherwise (see loss_agg_name()). The value loss is always a token mean."""
    norm_eps: float = 1e-6
    """ε in (R − mean)/(std + ε) of the grpo_outcome and grpo_process advantages (verl: 1e-6,
    TRL: 1e-4). reward.prm.refine=normed always uses 1e-6."""
    engine: str = "auto"
    """Teacher-forced log-prob passes (reference model, policy update): ``fast`` runs Llama,
    Mistral and Qwen2 models through :func:`rewardlab.models.fast.response_logits` (each distinct
    prompt once per batch, its keys/values shared by the n samples of its group) | ``hf``
    (``model(...)``) | ``auto`` (fast where supported). Same numbers either way."""
    old_logprobs: str = "recompute"
    """Where log π_old (PPO's ratio denominator, the KL in the reward) comes from when the update
    cannot use its own: ``recompute`` (a teacher-forced pass after sampling, as verl and TRL do) |
    ``sampler`` (the fast sampler's own log-probs of the tokens it drew: no extra pass; they equal
    the recomputed ones up to float rounding, ~1e-6 in float32; where the fast engine did not
    sample, the pass runs anyway). Use ``recompute`` with bfloat16, where the rounding is larger."""
    gamma: float = 1.0
    lam: float = 0.95
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (any finite number; negative penalises entropy)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 or inf: no clipping, the norm is only logged)."""
    whiten_advantages: bool = True
    """PPO: whiten GAE advantages over the batch."""
    eval_every: int = 20
    """Greedy accuracy on the held-out set every N steps (0: only at the end)."""
    eval_at_start: bool = True
    """With ``eval_every``, also evaluate the starting policy (step 0); off when that number is
    known already (the demo takes it from the SFT evaluation that every RL run starts from)."""
    eval_k: int = 4
    """maj@k / pass@k samples at the final evaluation (0: greedy only)."""
    save_every: int = 20
    resume: bool = True
    """Continue from the latest checkpoint in ``out`` when there is one."""
    progress: bool = True
    stop_at: int = 0
    """Stop after this step as if interrupted, leaving a checkpoint (0: never)."""
    max_bad_steps: int = 3
    """A policy update (one minibatch) whose loss or gradient norm is nan/inf is skipped (its gradients dropped,
    counted in ``train/skipped_steps``); this many skips in a row stop the run with an error."""
    report_to: str = "tensorboard"
    """Experiment trackers of the metrics log (metrics.jsonl is always written): tensorboard
    (``<out>/tb``) | wandb | trackio | mlflow | none, or a comma list, e.g. ``wandb,tensorboard``;
    through accelerate's trackers (the non-default ones are extras: ``pip install
    'rewardlab[wandb]'``). See rewardlab.training.trackers."""
    push_to_hub: str | None = None
    """Upload the final model (with its card) to this Hugging Face Hub repo (``owner/name``)
    when the run finishes; the token is huggingface_hub's (``HF_TOKEN`` or a login)."""
    overwrite: bool = False
    """Start afresh in ``out``, deleting the run there (checkpoints, metrics, final model).
    Without it, an ``out`` holding a run made with a different config is refused (the error lists
    the fields that differ) and one with the same config is resumed."""

    def validate(self) -> None:
        check_numbers(self)
        if self.algo not in ("ppo", "grpo"):
            raise ValueError(f"rl: algo must be ppo or grpo, got {self.algo!r}")
        if self.algo == "grpo" and self.sampling.n < 2:
            raise ValueError("rl: grpo needs sampling.n >= 2 responses per prompt (set sampling.n=4)")
        if self.reward.prm.refine not in ("none", "clip", "delta", "clip_delta", "min_form", "normed"):
            raise ValueError(f"rl: reward.prm.refine={self.reward.prm.refine!r}; use none | clip | "
                             "delta | clip_delta | min_form | normed")
        if self.reward.prm.refine == "min_form" and not self.reward.prm.temperature > 0:
            raise ValueError(f"rl: reward.prm.temperature must be > 0, got {self.reward.prm.temperature}")
        if self.reward.prm.tag is not None:
            try:   # a non-empty tag, two different label tokens
                self.reward.prm.spec()
            except ValueError as e:
                raise ValueError(f"rl: reward.prm: {e}") from None
        if not (self.reward.success or self.reward.prm.path or self.reward.orm.path):
            raise ValueError("rl: no reward is on; set reward.success=true or a PRM/ORM path")
        for name, value, registry in (("advantage", self.advantage, ADVANTAGES),
                                      ("loss_agg", self.loss_agg, LOSS_AGGREGATIONS),
                                      ("ratio", self.ratio, RATIOS),
                                      ("kl.estimator", self.kl.estimator, KL_ESTIMATORS)):
            if value is not None and value not in registry:
                raise ValueError(f"rl: {name}={value!r} is not one of "
                                 f"{' | '.join(registry.names())}")
        if self.advantage_name() == "grpo_process" and not self.reward.prm.path:
            raise ValueError("rl: advantage grpo_process needs reward.prm.path")
        if self.advantage_name() in ("prime", "vine"):
            name = self.advantage_name()
            if not self.reward.success:
                raise ValueError(f"rl: advantage {name} needs reward.success=true (its outcome label)")
            if self.kl.in_reward and (self.kl.coef != 0 or self.kl.adaptive):
                raise ValueError(f"rl: advantage {name} does not read token rewards, so a KL in the "
                                 "reward would be ignored; set kl.in_reward=false (KL in the loss)")
        if self.advantage_name() == "prime" and self.sampling.n < 2:
            raise ValueError("rl: advantage prime needs sampling.n >= 2 (its baselines are leave-one-out)")
        if self.advantage_name() == "prime" and not (self.prime.beta > 0 and self.prime.lr > 0):
            raise ValueError(f"rl: prime.beta and prime.lr must be > 0, got {self.prime.beta}, "
                             f"{self.prime.lr}")
        if self.advantage_name() == "vine" and self.vine.k < 1:
            raise ValueError(f"rl: vine.k must be >= 1, got {self.vine.k}")
        if self.old_logprobs not in ("recompute", "sampler"):
            raise ValueError(f"rl: old_logprobs={self.old_logprobs!r}; use recompute | sampler")
        if self.value.kind not in ("separate", "shared"):
            raise ValueError("rl: value.kind must be separate or shared")
        try:
            self.model.lora.validate()
        except ValueError as e:
            raise ValueError(f"rl: model.{e}") from None
        if self.model.lora.enabled:
            if self.uses_critic and self.value.kind != "shared":
                raise ValueError("rl: model.lora.r > 0 with a critic (advantage gae) needs "
                                 "value.kind=shared (a value head on the LoRA policy's hidden "
                                 f"states), got value.kind={self.value.kind}")
            for name, eng in (("engine", self.engine), ("sampling.engine", self.sampling.engine)):
                if eng == "fast":
                    raise ValueError(f"rl: {name}=fast cannot run a LoRA policy (model.lora.r > 0); "
                                     "use auto or hf")
        if self.clip_eps_high is not None and self.clip_eps_high < 0:
            raise ValueError(f"rl: clip_eps_high must be >= 0 (or null: clip_eps), got {self.clip_eps_high}")
        if self.kl.clamp is not None and self.kl.clamp <= 0:
            raise ValueError(f"rl: kl.clamp must be > 0 (or null: no clamp), got {self.kl.clamp}")
        if self.norm_eps < 0:
            raise ValueError(f"rl: norm_eps must be >= 0, got {self.norm_eps}")
        check_engine(self.engine, "rl: engine")
        if self.steps < 1 or self.prompts_per_step < 1 or self.minibatch_size < 1:
            raise ValueError("rl: steps, prompts_per_step and minibatch_size must be >= 1")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError("rl: micro_batch_size must be >= 1 (or null: the whole minibatch)")
        self.data.validate()

    def advantage_name(self) -> str:
        return self.advantage or ("gae" if self.algo == "ppo" else "grpo_outcome")

    def loss_agg_name(self) -> str:
        """``loss_agg``, or when null the paper's aggregation for this run: Dr. GRPO's
        seq-mean-token-sum-norm for advantage dr_grpo, GSPO's seq-mean-token-mean for
        ratio=sequence (dr_grpo wins when both are set), else token-mean."""
        if self.loss_agg is not None:
            return self.loss_agg
        if self.advantage_name() == "dr_grpo":
            return "seq-mean-token-sum-norm"
        if self.ratio == "sequence":
            return "seq-mean-token-mean"
        return "token-mean"

    @property
    def uses_critic(self) -> bool:
        return self.advantage_name() == "gae"

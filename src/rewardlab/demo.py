"""The paper in miniature: SFT → reward models → RL with every reward design → report.

Reproduces the experiment of "On Designing Effective RL Reward at Training Time for LLM
Reasoning" (Gao et al., arXiv 2410.15115) on the arithmetic testbed. Every stage caches its
output under the run directory, so a second run (or a run after a crash) continues where the
first stopped::

    <out>/sft/            policy after SFT (final/), train.jsonl, test.jsonl
    <out>/rm/             backbone/ (the RMs' starting point: the SFT recipe run longer),
                          samples.jsonl / eval_samples.jsonl (policy samples on training /
                          held-out problems, oracle step labels), orm/, prm/
    <out>/bon/            best-of-N table and plot
    <out>/rl/<design>/s<seed>/   one RL run per reward design and seed
    <out>/report.md, results.json, *.png, stage_s.json (seconds each stage took when it ran)

RL and reward-model jobs run in worker processes; the parent shows their progress
(``rewardlab.training.progress.JobBoard``: a live panel on a terminal, a line per job every 10
steps otherwise).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from rewardlab.config import apply_overrides, check_numbers, ConfigError, from_dict, load_config
from rewardlab.data.datasets import load_dataset_by_name
from rewardlab.data.testbed import minimal_pairs
from rewardlab.eval.bon import run_bon
from rewardlab.eval.prm_eval import minimal_pair_metrics, prm_label_metrics
from rewardlab.eval.evaluate import evaluate_policy
from rewardlab.eval.report import STAGES, write_report
from rewardlab.io import read_jsonl, write_json, write_jsonl
from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.models.sampling import SamplingConfig
from rewardlab.reward_models.labeling import get_labeler
from rewardlab.reward_models.data import read_rm_rows
from rewardlab.reward_models.models import ENSEMBLE_FILE, load_reward_model, save_ensemble
from rewardlab.reward_models.pipeline import augment_rows, sample_and_label
from rewardlab.reward_models.train import evaluate_reward_model, RMTrainConfig, train_reward_model
from rewardlab.preference.iterative import IterativePOConfig, po_design_config, train_po_iterative
from rewardlab.rl.config import RLConfig
from rewardlab.rl.trainer import train_rl
from rewardlab.sft.trainer import SFTConfig, train_sft
from rewardlab.training.engine import quiet_transformers
from rewardlab.training.progress import JobBoard, queue_reporter
from rewardlab.training.rundir import check_run_inputs, INPUT_FIELDS


# name -> (description, dotted overrides on RLConfig)
DESIGNS: dict[str, tuple[str, list[str]]] = {
    "success": ("PPO, success reward only", ["algo=ppo"]),
    "prm_raw": ("PPO, success + PRM (raw shaping)", ["algo=ppo", "reward.prm.refine=none"]),
    "prm_clip": ("PPO, success + PRM-Clip", ["algo=ppo", "reward.prm.refine=clip"]),
    "prm_delta": ("PPO, success + PRM-Delta", ["algo=ppo", "reward.prm.refine=delta"]),
    "prm_clip_delta": ("PPO, success + PRM-Clip-Delta", ["algo=ppo", "reward.prm.refine=clip_delta"]),
    "orm": ("PPO, success + ORM", ["algo=ppo"]),
    "grpo_process": ("GRPO, process supervision (PRM)", ["algo=grpo", "advantage=grpo_process",
                                                          "kl.in_reward=false", "kl.estimator=k3"]),
    "prm_min_form": ("PPO, success + PRM min-form (PURE)", ["algo=ppo", "reward.prm.refine=min_form"]),
    "prime": ("PRIME: RLOO on success + online implicit PRM", ["algo=ppo", "advantage=prime",
                                                              "kl.in_reward=false", "kl.estimator=k3"]),
    "vine": ("VinePPO: Monte-Carlo step values", ["algo=ppo", "advantage=vine", "kl.in_reward=false",
                                                  "kl.estimator=k3"]),
    # preference optimisation, iterative (sample → oracle label → pair → train, 3 rounds) on the
    # RL runs' budget of sampled solutions (rewardlab.preference.iterative)
    "dpo": ("Iterative DPO (outcome pairs)", []),
    "kto": ("Iterative KTO (unpaired outcome labels)", []),
    "step_dpo": ("Iterative Step-DPO (first-error step pairs)", []),
}
PO_DESIGN_NAMES = {"dpo", "kto", "step_dpo"}
# the designs a plain `rewardlab demo` runs: the paper's seven (the later designs are opt-in with
# --designs, so the default stays within the demo's time budget)
DEFAULT_DESIGNS = ["success", "prm_raw", "prm_clip", "prm_delta", "prm_clip_delta", "orm", "grpo_process"]
# The PRM step tag is a special token added to the vocabulary (the seed blog convention): the
# policy cannot produce it, so no sampled step can contain it.
PRM_TAG = "<|prm_label|>"
USES_PRM = {"prm_raw", "prm_clip", "prm_delta", "prm_clip_delta", "grpo_process", "prm_min_form"}


@dataclass
class DemoBudget:
    """Sizes of every stage (the defaults fit ~15 minutes on 2 CPU cores)."""

    # every size in 1..10_000_000 (eval_every and rm_backbone_steps may be 0); rm_lr in (0, 1]; the RM
    # data's temperature and copies per sample (issue 15) as below
    RANGES: ClassVar[dict[str, str]] = {
        **{k: "[1, 10000000]" for k in ("n_train", "n_test", "sft_steps", "rm_problems", "rm_samples",
                                        "rm_eval_problems", "rm_steps", "prm_steps", "bon_problems",
                                        "bon_max_n", "rl_steps", "rl_prompts", "rl_n", "eval_k")},
        "eval_every": "[0, 10000000]", "rm_backbone_steps": "[0, 10000000]", "rm_lr": "(0, 1]",
        "rl_lr": "(0, 1]",
        "rm_temperature": "(0, 5]", "rm_corrupt": "[0, 10]", "rm_truncate": "[0, 10]",
        "rm_repair": "[0, 1]", "unnecessary_rate": "[0, 1]",
        "prm_members": "[1, 16]", "orm_members": "[1, 16]"}

    n_train: int = 3000
    unnecessary_rate: float = 0.3
    """Fraction of the testbed's reference solutions that carry one correct-but-unnecessary step
    (``TestbedConfig.unnecessary_rate``): how often the SFT policy (and the reward models'
    backbone) learns to pad, i.e. how far the behaviour a PRM can pay for lies in its support."""
    n_test: int = 200
    sft_steps: int = 300
    rm_problems: int = 3000
    """Training problems sampled for the reward-model data."""
    rm_samples: int = 4
    """Policy samples per problem for the reward-model data."""
    rm_temperature: float = 1.0
    """Sampling temperature of the reward-model training data (the evaluation rows are
    sampled at 1.0, as the policy samples in RL and best-of-N)."""
    rm_corrupt: float = 0.0
    """Corrupted copies per training sample (one equation broken, relabelled by the oracle:
    hard negatives next to their right twins); fractions draw."""
    rm_truncate: float = 0.0
    """Truncated copies per training sample (cut mid-text, relabelled: the malformed tail
    that large N surfaces)."""
    rm_repair: float = 0.0
    """Repaired copies per training sample (first wrong equation given its right result,
    relabelled: positives where the policy is mostly wrong, such as subtractions with a borrow);
    at most 1. With 1 the PRM scores ``13 - 8 = 5`` above 0.5 and ``13 - 8 = 6`` near 0, but a
    single PRM's best-of-N fell below random pick at N = 64 in ``make demo``, so it is off by
    default (docs/reward_models_testbed.md)."""
    rm_eval_problems: int = 100
    """Held-out (test) problems sampled for the reward models' evaluation rows."""
    rm_backbone_steps: int = 1200
    """SFT steps of the reward models' backbone: the policy's SFT recipe run longer, so that it
    checks the arithmetic better (docs/reward_models_testbed.md); <= ``sft_steps``: the reward
    models start from the SFT policy (``--budget rm_backbone_steps=0``: faster, but a weaker PRM
    blurs the demo's result: docs/demo_sweep.md)."""
    orm_from_backbone: bool = False
    """Whether the ORM, too, starts from the RM backbone. Off: the ORM starts from the SFT policy
    and trains while the backbone does (its outcome AUROC is a little lower; the ORM design's
    result does not change: the README), which keeps ``make demo`` within 15 minutes; the PRM
    always gets the backbone, since checking a step needs it."""
    rm_steps: int = 500
    """The ORM's optimizer steps (batch 32), each member's."""
    prm_steps: int = 2000
    """The PRM's optimizer steps (batch 32): with the 1,200-step backbone, what keeps its
    best-of-N at or above random pick up to N = 64 (docs/reward_models_testbed.md; 500 steps
    fall below it from N = 16)."""
    prm_members: int = 1
    """PRMs trained (seeds 0, 1, ...; in parallel on the two workers) and scored as one
    ensemble, the mean of their step scores (rewardlab.reward_models.models.EnsembleRM); 1: a
    single PRM. Two with repaired rows (``--budget prm_members=2 --budget rm_repair=1``) lift
    step AUROC from 0.946 to 0.953 but take ``make demo`` from ~13 to ~16 minutes
    (docs/reward_models_testbed.md)."""
    prm_forms: str = "lm,head"
    """The PRM members' forms, comma-separated and cycled over the members (``lm,head``: member
    0 LM-head, member 1 a 2-class head: two forms disagree more than two seeds, which is what
    an ensemble gains from)."""
    orm_members: int = 1
    """ORMs trained (seeds 0, 1, ...) and scored as one ensemble, the mean of their scores."""
    rm_lr: float = 5e-4
    bon_problems: int = 100
    bon_max_n: int = 64
    rl_steps: int = 30
    rl_lr: float = 5e-5
    """The policy's RL learning rate (``RLConfig.lr``)."""
    rl_prompts: int = 16
    rl_n: int = 4
    eval_every: int = 15
    eval_k: int = 4

    def validate(self) -> None:
        check_numbers(self, "budget.")
        forms = self.prm_form_list()
        if not forms or set(forms) - {"lm", "head"}:
            raise ConfigError(f"budget.prm_forms: a comma-separated list of lm and head, got "
                              f"{self.prm_forms!r}")

    def prm_form_list(self) -> list[str]:
        return [f.strip() for f in str(self.prm_forms).split(",") if f.strip()]


QUICK = DemoBudget(n_train=400, n_test=40, sft_steps=40, rm_problems=60, rm_eval_problems=10,
                   rm_samples=2, rm_backbone_steps=60, rm_steps=20, prm_steps=20, bon_problems=10,
                   bon_max_n=4, rl_steps=2, rl_prompts=8, rl_n=2, eval_every=0, eval_k=2)


def budget_with(quick: bool, overrides: list[str]) -> DemoBudget:
    """The default (or ``--quick``) budget with ``key=value`` overrides applied and checked;
    ValueError names an unknown key, a value of the wrong type or one out of range."""
    import dataclasses


    data = dataclasses.asdict(QUICK if quick else DemoBudget())
    apply_overrides(data, overrides)
    return from_dict(DemoBudget, data, prefix="budget.")


@dataclass
class DemoConfig:
    """What ``rewardlab demo`` runs: the designs, seeds, reward weights and stage sizes."""

    RANGES: ClassVar[dict[str, str]] = {"seeds": "[1, 20]", "prm_eta": "[0, 1]", "workers": "[1, 64]"}

    out: str = "runs/demo"
    seeds: int = 3
    """RL seeds per design (mean and 95 % t-interval over seeds, and paired differences against
    success-only on the same seeds, in the report)."""
    quick: bool = False
    designs: list[str] = field(default_factory=lambda: list(DEFAULT_DESIGNS))
    budget: DemoBudget = field(default_factory=DemoBudget)
    prm_alpha: float = 2.0
    """PRM weight α (docs/demo_sweep.md: at α = 1 raw shaping drifts too slowly to separate
    from success-only in 30 RL steps)."""
    prm_eta: float = 0.3
    """Clip threshold η (docs/demo_sweep.md: at 0.5–0.8 Clip also penalises many correct steps
    of this PRM, and Clip / Clip-Delta shorten solutions instead of only refusing padding)."""
    orm_beta: float = 1.0
    progress: bool = True
    rl_overrides: list[str] = field(default_factory=list)
    """Dotted RLConfig overrides (``key=value``) applied to every RL run after the design's own,
    e.g. ``lr=5e-5`` (change ``out`` too: a cached run is not re-run)."""
    workers: int = 2
    """RL runs in parallel worker processes (one torch thread each); 1: in this process."""
    progress_every: int = 10
    """Without a terminal, a progress line per RL job every this many steps (and at its end)."""

    def setting(self) -> dict:
        """What the report's captions state: α, η, β, seeds and the RL budget."""
        b = self.budget
        return {"prm_alpha": self.prm_alpha, "prm_eta": self.prm_eta, "orm_beta": self.orm_beta,
                "seeds": self.seeds, "rl_steps": b.rl_steps, "rl_lr": b.rl_lr,
                "unnecessary_rate": b.unnecessary_rate, "rl_prompts": b.rl_prompts,
                "rl_n": b.rl_n, "eval_k": b.eval_k, "rl_overrides": list(self.rl_overrides)}

    def validate(self) -> None:
        """Every number finite and in range (``prm_alpha`` / ``orm_beta``: any finite weight), the
        designs known; raises ConfigError naming the field."""
        check_numbers(self)
        self.budget.validate()
        unknown = set(self.designs) - set(DESIGNS)
        if unknown:
            raise ConfigError(f"demo: unknown design(s) {sorted(unknown)}; valid: {list(DESIGNS)}")


def _done(path: Path) -> bool:
    return path.exists()


def _sft_config(cfg: DemoConfig, out: Path, steps: int) -> SFTConfig:
    """The testbed SFT recipe for ``steps`` steps into ``out``."""
    b = cfg.budget
    sc = SFTConfig(out=str(out), steps=steps, eval_every=0, save_every=100,
                   progress=cfg.progress)
    sc.data.n_train, sc.data.n_test = b.n_train, b.n_test
    sc.data.testbed.unnecessary_rate = b.unnecessary_rate
    return sc


def _sft_cached(out: Path) -> bool:
    return _done(out / "sft_summary.json") and _done(out / "final")


def _log_sft(what: str, res: dict, log) -> None:
    log(f"{what}: greedy accuracy {res.get('eval/accuracy', float('nan')):.3f} in "
        f"{res['sft/wall_s']:.0f}s")


def stage_sft_eval(cfg: DemoConfig, sft_dir: Path, log) -> None:
    """The starting point's row of the table: the SFT policy, evaluated like the RL policies."""

    path = sft_dir / "eval_summary.json"
    if _done(path):
        return
    model, tok = load_model_and_tokenizer(sft_dir / "final")
    test = load_dataset_by_name(str(sft_dir / "test.jsonl"), "test")
    summary, _ = evaluate_policy(model, tok, test, k=cfg.budget.eval_k, temperature=1.0,
                                 max_new_tokens=48, seed=0)
    write_json(path, summary)
    log(f"sft: held-out greedy accuracy {summary['accuracy']:.3f}, maj@{cfg.budget.eval_k} "
        f"{summary.get('maj@k', float('nan')):.3f}")


def stage_rm_data(cfg: DemoConfig, sft_dir: Path, log) -> tuple[Path, Path]:
    """The reward models' rows (cached).

    Training rows: ``rm_samples`` policy samples per training problem at ``rm_temperature``,
    labelled by the oracle, deduplicated, plus ``rm_repair`` repaired, ``rm_corrupt`` corrupted
    and ``rm_truncate`` truncated copies per sample (relabelled exactly; the tail that large N surfaces).
    Evaluation rows: the policy's samples (temperature 1) on held-out problems."""
    b = cfg.budget
    out = Path(cfg.out) / "rm"
    data, eval_data = out / "samples.jsonl", out / "eval_samples.jsonl"
    # training rows: the policy's samples on training problems; evaluation rows: its samples on
    # held-out (test) problems, so no evaluated solution was seen in training
    jobs = [(data, "train.jsonl", "train", slice(-b.rm_problems, None), 1, b.rm_temperature),
            (eval_data, "test.jsonl", "test", slice(b.rm_eval_problems), 2, 1.0)]
    model = tok = None
    for path, fname, split, which, seed, temp in jobs:
        if _done(path):
            continue
        if model is None:
            model, tok = load_model_and_tokenizer(sft_dir / "final")
        problems = load_dataset_by_name(str(sft_dir / fname), split)[which]
        rows = sample_and_label(model, tok, problems, b.rm_samples, get_labeler("oracle"),
                                SamplingConfig(n=b.rm_samples, temperature=temp, max_new_tokens=48,
                                               batch_size=512),
                                seed=seed, style="gsm8k")
        if split == "train":
            n = len(rows)
            rows = augment_rows(rows, get_labeler("oracle"), b.rm_corrupt, b.rm_truncate, seed,
                                repair=b.rm_repair)
            log(f"rm: {n} policy samples, {len(rows)} training rows after deduplication and "
                f"{b.rm_repair:g} repaired / {b.rm_corrupt:g} corrupted / {b.rm_truncate:g} "
                "truncated copies per sample")
        write_jsonl(path, rows)
        pos = sum(r["outcome"] for r in rows) / max(len(rows), 1)
        log(f"rm: {len(rows)} labelled rows on {split} problems ({pos:.2f} correct)")
    return data, eval_data


@dataclass
class RMSet:
    """One of the demo's reward models: ``kind``, its folder ``out`` (``rm/<kind>``) and its
    members' training configs. One member trains into ``out`` itself; several train into
    ``out/m<k>`` (member k with seed k) and ``out`` holds their ensemble's manifest."""

    kind: str
    out: Path
    members: list[RMTrainConfig]

    @property
    def ensemble(self) -> bool:
        return len(self.members) > 1


def rm_sets(cfg: DemoConfig, backbone: Path, policy: Path | None = None) -> list[RMSet]:
    """The ORM and the PRM, on the RM data's rows: the PRM's members from ``backbone``, the
    ORM's from the SFT ``policy`` unless ``budget.orm_from_backbone`` (or no ``policy`` is
    given); ``budget.prm_members`` / ``orm_members`` members each."""
    b = cfg.budget
    out = Path(cfg.out) / "rm"
    bases = {"prm": backbone,
             "orm": backbone if b.orm_from_backbone or policy is None else policy}
    sets = []
    for kind, n in (("orm", b.orm_members), ("prm", b.prm_members)):
        forms = b.prm_form_list() if kind == "prm" else ["lm"]
        members = [RMTrainConfig(kind=kind, form=forms[k % len(forms)], model=str(bases[kind]),
                                 data=[str(out / "samples.jsonl")],
                                 eval_data=[str(out / "eval_samples.jsonl")],
                                 out=str(out / kind / f"m{k}" if n > 1 else out / kind), tag=PRM_TAG,
                                 lr=b.rm_lr, batch_size=32, seed=k,
                                 steps=b.prm_steps if kind == "prm" else b.rm_steps,
                                 progress=cfg.progress)
                   for k in range(n)]
        sets.append(RMSet(kind, out / kind, members))
    return sets


def _member_cached(rc: RMTrainConfig) -> bool:
    return _done(Path(rc.out) / "final" / "rewardlab_rm.json")


def _rm_cached(rs: RMSet) -> bool:
    made = _done(rs.out / ENSEMBLE_FILE) if rs.ensemble else _member_cached(rs.members[0])
    return made and _done(rs.out.parent / f"{rs.kind}_metrics.json")


def finish_rm(rs: RMSet, trained: dict | None = None) -> dict:
    """Write ``rm/<kind>_metrics.json`` for a trained reward model: the training run's final
    metrics (``trained``) or, for an ensemble, its manifest and the ensemble's own held-out
    metrics; the PRM's add earliest-error identification (threshold chosen on half of the
    held-out problems, reported on the other half), its score bias (by step count, by
    correctness) and its minimal pairs (each reference step of the held-out problems against
    the same step off by one)."""
    eval_path = rs.members[0].eval_data[0]
    res = dict(trained or {})
    if rs.ensemble:
        save_ensemble(rs.out, [m.out for m in rs.members], "mean")
    rm = load_reward_model(rs.out, device="cpu")
    if rs.ensemble:
        res = evaluate_reward_model(rm, read_rm_rows([eval_path], rs.kind, False, "auto"))
        runs = [json.loads((Path(m.out) / "rm_summary.json").read_text()) for m in rs.members]
        res.update({"rm/members": float(len(rs.members)), "rm/n_train": runs[0].get("rm/n_train"),
                    "rm/wall_s": float(sum(r.get("rm/wall_s", 0.0) for r in runs))})
    if rs.kind == "prm":
        rows = read_jsonl(eval_path)
        pairs = minimal_pairs(list(dict.fromkeys(r["question"] for r in rows)))
        res.update({**prm_label_metrics(rm, rows), **minimal_pair_metrics(rm, pairs)})
    del rm
    write_json(rs.out.parent / f"{rs.kind}_metrics.json", res)
    return res


def train_rm_set(rs: RMSet) -> dict:
    """Train the members that are not cached, then :func:`finish_rm`."""
    trained = None
    for rc in rs.members:
        if not (rs.ensemble and _member_cached(rc)):
            trained = train_reward_model(rc)
    return finish_rm(rs, None if rs.ensemble else trained)


def _log_rm(kind: str, res: dict, log) -> None:
    log(f"rm: {kind} " + ", ".join(f"{k}={v:.3f}" for k, v in res.items()
                                   if isinstance(v, float) and ("auroc" in k or "ece" in k
                                                                or k.endswith("error_f1"))))


def stage_rm(cfg: DemoConfig, sft_dir: Path, log, backbone: Path | None = None) -> Path:
    """The RM data (:func:`stage_rm_data`), then the ORM and PRM (:func:`train_rm_set`), in this
    process (cached)."""
    stage_rm_data(cfg, sft_dir, log)
    for rs in rm_sets(cfg, backbone or sft_dir / "final", sft_dir / "final"):
        if _rm_cached(rs):
            log(f"rm: {rs.kind} cached")
        else:
            _log_rm(rs.kind, train_rm_set(rs), log)
    return Path(cfg.out) / "rm"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def stage_bon(cfg: DemoConfig, sft_dir: Path, rm_dir: Path, log) -> Path:

    out = Path(cfg.out) / "bon"
    if _done(out / "bon.json"):
        log("bon: cached")
        return out
    b = cfg.budget
    problems = load_dataset_by_name(str(sft_dir / "test.jsonl"), "test")[:b.bon_problems]
    run_bon(str(sft_dir / "final"), problems, {"orm": str(rm_dir / "orm"), "prm": str(rm_dir / "prm")},
            max_n=b.bon_max_n, out=str(out))
    log("bon: done")
    return out


def rl_config(cfg: DemoConfig, design: str, seed: int, sft_dir: Path, rm_dir: Path) -> RLConfig:

    b = cfg.budget
    ov = list(DESIGNS[design][1]) + [
        f"out={Path(cfg.out) / 'rl' / design / f's{seed}'}", f"seed={seed}",
        f"model.name_or_path={sft_dir / 'final'}", f"data.train_path={sft_dir / 'train.jsonl'}",
        f"data.test_path={sft_dir / 'test.jsonl'}", f"steps={b.rl_steps}", f"lr={b.rl_lr}",
        f"prompts_per_step={b.rl_prompts}", f"sampling.n={b.rl_n}", f"eval_every={b.eval_every}",
        f"eval_k={b.eval_k}", f"save_every={max(b.rl_steps // 4, 1)}", f"progress={cfg.progress}",
        # step 0 is the SFT policy, evaluated once by the SFT-eval job (the report's curves take it
        # from there); π_old from the sampler saves a pass per step (float32 on the CPU)
        "eval_at_start=false", "old_logprobs=sampler"]
    if design in USES_PRM:
        ov += [f"reward.prm.path={rm_dir / 'prm'}", f"reward.prm.alpha={cfg.prm_alpha}",
               f"reward.prm.eta={cfg.prm_eta}"]
    if design == "orm":
        ov += [f"reward.orm.path={rm_dir / 'orm'}", f"reward.orm.beta={cfg.orm_beta}"]
    return load_config(RLConfig, None, ov + list(cfg.rl_overrides))


_ACTIVE = None   # worker processes: shared count of jobs running now
_CORES = 1
_QUEUE = None    # worker processes: where job progress messages go (training.progress)


def _init_rl_worker(active, cores: int, q=None) -> None:
    global _ACTIVE, _CORES, _QUEUE
    _ACTIVE, _CORES, _QUEUE = active, cores, q


def job_name(rc: RLConfig) -> str:
    """``<design>/s<seed>`` of an RL run (the last two parts of its directory)."""
    return "/".join(Path(rc.out).parts[-2:])


def job_threads(cores: int, active: int) -> int:
    """Torch threads for one of ``active`` parallel jobs on ``cores`` cores: cores // active, at
    least 1 (when the last job runs alone it gets every core instead of one)."""
    return max(1, cores // max(active, 1))


# --------------------------------------------------------------------------------------------
# The job graph: every stage's work as jobs with dependencies, packed onto the worker processes


@dataclass
class Job:
    """One unit of demo work. ``fn(arg, on_step)`` is a module-level function (it runs in a
    spawned worker process), ``deps`` the jobs whose outputs it reads, ``stage`` the report's
    stage it counts towards, ``steps`` its step count for the progress board (None: unknown)."""

    name: str
    stage: str
    fn: Callable
    arg: object
    deps: tuple[str, ...] = ()
    steps: int | None = None


def _job_sft(sc: SFTConfig, on_step) -> dict:
    return train_sft(sc)


def _job_sft_eval(cfg: DemoConfig, on_step) -> list[str]:
    lines: list[str] = []
    stage_sft_eval(cfg, Path(cfg.out) / "sft", lines.append)
    return lines


def _job_rm_data(cfg: DemoConfig, on_step) -> list[str]:
    lines: list[str] = []
    stage_rm_data(cfg, Path(cfg.out) / "sft", lines.append)
    return lines


def _job_rm(rs: RMSet, on_step) -> dict:
    """A single reward model: trained and measured; an ensemble: measured (its members are
    jobs of their own)."""
    return finish_rm(rs) if rs.ensemble else train_rm_set(rs)


def _job_rm_member(rc: RMTrainConfig, on_step) -> dict:
    return train_reward_model(rc)


def _job_bon(cfg: DemoConfig, on_step) -> None:
    stage_bon(cfg, Path(cfg.out) / "sft", Path(cfg.out) / "rm", lambda s: None)


def _job_rl(rc: RLConfig, on_step) -> dict:
    return train_rl(rc, on_step=on_step)


def _job_po(pc: IterativePOConfig, on_step) -> dict:
    return train_po_iterative(pc, on_round=lambda r, m: on_step(r, m))


def po_config(cfg: DemoConfig, design: str, seed: int, sft_dir: Path) -> IterativePOConfig:
    """A preference design's run on the RL runs' budget: as many sampled solutions in all as an
    RL run (steps × prompts × samples), in 3 rounds, evaluated like the RL runs."""
    b = cfg.budget
    return po_design_config(design, out=str(Path(cfg.out) / "rl" / design / f"s{seed}"), seed=seed,
                            policy=str(sft_dir / "final"), train_path=str(sft_dir / "train.jsonl"),
                            test_path=str(sft_dir / "test.jsonl"),
                            n_samples=b.rl_steps * b.rl_prompts * b.rl_n, eval_k=b.eval_k,
                            n_test=b.n_test)


def _run_job(payload) -> object:
    """Worker: one job, with ``cores // jobs running`` torch threads (re-tuned after every step,
    so that the last jobs take the cores the finished ones left) and progress on ``_QUEUE``."""
    import torch

    name, fn, arg, steps = payload
    quiet_transformers()
    with _ACTIVE.get_lock():
        _ACTIVE.value += 1
    report = queue_reporter(_QUEUE, name) if _QUEUE is not None else None

    def retune() -> None:
        n = job_threads(_CORES, _ACTIVE.value)
        if n != torch.get_num_threads():
            torch.set_num_threads(n)

    def on_step(step: int, metrics: dict | None = None) -> None:
        retune()
        if report:
            report("step", step)

    retune()
    if report:
        report("start", steps)
    try:
        return fn(arg, on_step)
    finally:
        if report:
            report("end")
        with _ACTIVE.get_lock():
            _ACTIVE.value -= 1


def run_jobs(jobs: list[Job], workers: int, board: JobBoard,
             on_done: Callable[[Job, object], None]) -> dict[str, float]:
    """Run ``jobs`` (listed by priority) as their dependencies allow, at most ``workers`` at a
    time: a free worker takes the first job whose dependencies are done. ``on_done(job, result)``
    runs in this process as each job finishes. Returns each job's seconds. With ``workers`` = 1
    every job runs in this process, in an order that respects the dependencies."""
    names = {j.name for j in jobs}
    for j in jobs:
        missing = [d for d in j.deps if d not in names]
        if missing:
            raise ValueError(f"demo: job {j.name} depends on unknown job(s) {missing}")
    took: dict[str, float] = {}
    done: set[str] = set()
    pending = list(jobs)

    def take() -> Job | None:
        for j in pending:
            if all(d in done for d in j.deps):
                pending.remove(j)
                return j
        return None

    if workers <= 1:
        while pending:
            j = take()
            if j is None:
                raise ValueError(f"demo: jobs {[p.name for p in pending]} wait on each other")
            t0 = time.time()
            board.handle("start", j.name, j.steps)
            res = j.fn(j.arg, lambda step, m=None, name=j.name: board.handle("step", name, step))
            board.handle("end", j.name)
            took[j.name] = time.time() - t0
            done.add(j.name)
            on_done(j, res)
        return took
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    active, q = ctx.Value("i", 0), ctx.Queue()
    running: dict = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_rl_worker,
                             initargs=(active, max(workers, _cores()), q)) as pool:
        while pending or running:
            while len(running) < workers:
                j = take()
                if j is None:
                    break
                running[pool.submit(_run_job, (j.name, j.fn, j.arg, j.steps))] = (j, time.time())
            if not running:
                raise ValueError(f"demo: jobs {[p.name for p in pending]} wait on each other")
            finished, _ = wait(set(running), timeout=0.5, return_when=FIRST_COMPLETED)
            board.drain(q)
            for fut in finished:
                j, t0 = running.pop(fut)
                res = fut.result()   # a failed job stops the demo here, with its error
                board.handle("end", j.name)
                took[j.name] = time.time() - t0
                done.add(j.name)
                on_done(j, res)
        board.drain(q)
    return took


class StageClock:
    """Seconds of work each demo stage took (the sum of its jobs' seconds; stages overlap on the
    workers, so the sum exceeds the wall time), kept in ``<out>/stage_s.json``: a stage whose
    jobs were all cached keeps the time recorded by the run that made them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.times: dict[str, float] = {}
        if self.path.exists():
            try:
                self.times = {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError, TypeError):
                self.times = {}
        self._fresh: set[str] = set()

    def add(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` towards ``stage`` (replacing a cached run's record at the first)."""
        if stage not in self._fresh:
            self._fresh.add(stage)
            self.times[stage] = 0.0
        self.times[stage] = round(self.times[stage] + seconds, 1)
        write_json(self.path, self.times)

    def ordered(self, names: list[str]) -> dict[str, float]:
        return {n: self.times[n] for n in names if n in self.times}


SETTINGS_FILE = "demo_settings.json"
# stage -> the budget fields its outputs depend on (besides those of the stages before it)
_STAGE_KEYS = {
    "sft": ("n_train", "n_test", "unnecessary_rate", "sft_steps", "rm_backbone_steps"),
    "rm": ("rm_problems", "rm_samples", "rm_temperature", "rm_corrupt", "rm_truncate", "rm_repair",
           "rm_eval_problems", "rm_steps", "prm_steps", "rm_lr", "orm_from_backbone", "prm_members",
           "prm_forms", "orm_members"),
    "bon": ("bon_problems", "bon_max_n"),
    "rl": ("rl_steps", "rl_lr", "rl_prompts", "rl_n", "eval_every", "eval_k"),
}


def stage_settings(cfg: DemoConfig) -> dict[str, dict]:
    """What each stage's cached outputs were made with: its own budget fields plus those of the
    stages it builds on (RL also α, η, β and the RL overrides)."""
    import dataclasses

    b = dataclasses.asdict(cfg.budget)
    own = {stage: {k: b[k] for k in keys} for stage, keys in _STAGE_KEYS.items()}
    own["rl"].update(prm_alpha=cfg.prm_alpha, prm_eta=cfg.prm_eta, orm_beta=cfg.orm_beta,
                     rl_overrides=list(cfg.rl_overrides))
    upstream = {"sft": [], "rm": ["sft"], "bon": ["sft", "rm"], "rl": ["sft", "rm"]}
    return {stage: {k: v for s in [*upstream[stage], stage] for k, v in own[s].items()}
            for stage in own}


# what the demo writes under its ``out``: the stages' folders and the report's files
DEMO_WRITES = ("sft", "rm", "bon", "rl", "report.md", "results.json", "*.png", "stage_s.json",
               SETTINGS_FILE)


def demo_inputs(cfg: DemoConfig) -> list[tuple[str, str]]:
    """``(option, path)`` for every input the user names (the ``--rl-set`` overrides of an input
    field: a policy, data, a reward model; the demo's own stages feed the rest)."""
    found = []
    for o in cfg.rl_overrides:
        key, sep, val = o.partition("=")
        if sep and key.strip().split(".")[-1] in INPUT_FIELDS and val.strip():
            found.append((f"--rl-set {key.strip()}", val.strip()))
    return found


def check_demo_out(cfg: DemoConfig) -> None:
    """Before any stage: ConfigError (one line) when an input the user names lies in what the
    demo writes in ``out`` (:data:`DEMO_WRITES`), which a stage or the report would overwrite."""
    check_run_inputs(cfg.out, demo_inputs(cfg), written=DEMO_WRITES, what="the demo")


def check_cached_settings(cfg: DemoConfig, outputs: dict[str, list[Path]]) -> None:
    """Refuse to reuse a stage's cached outputs made with other settings: ConfigError naming the
    stage, each setting that differs and the fix. Records the settings of this run (in
    ``<out>/demo_settings.json``) otherwise. A stage with no record (outputs copied or linked in
    from another run) is trusted."""
    path = Path(cfg.out) / SETTINGS_FILE
    now = stage_settings(cfg)
    recorded: dict = {}
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"{path}: not valid JSON ({e}); delete it to trust the cached stages")
    for stage, settings in now.items():
        old = recorded.get(stage)
        if not isinstance(old, dict) or not any(_done(p) for p in outputs.get(stage, [])):
            continue
        diff = [f"{k}: cached {old.get(k)!r}, now {v!r}" for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise ConfigError(f"demo: the {stage} stage cached in {cfg.out} was made with other "
                              f"settings ({'; '.join(diff)}); use a new --out (or delete "
                              f"{Path(cfg.out) / stage})")
    write_json(path, {**recorded, **now})


def plan_jobs(cfg: DemoConfig) -> tuple[list[Job], dict[str, list[Path]], list[str]]:
    """The demo's jobs that are not cached yet, by priority (the critical path first: SFT, the
    RM backbone, RM data and training; then the RL runs that need the reward models, best-of-N,
    and the success-only runs, which need only the SFT policy and so fill the gaps before the
    reward models are ready), every RL run's directory by design, and the names of the jobs
    whose outputs are already there (cached: not re-run)."""
    b = cfg.budget
    out = Path(cfg.out)
    sft_dir, rm_dir = out / "sft", out / "rm"
    jobs: list[Job] = []
    cached: list[str] = []

    def want(job: Job, done: bool) -> None:
        (cached.append(job.name) if done else jobs.append(job))

    want(Job("sft", "sft", _job_sft, _sft_config(cfg, sft_dir, b.sft_steps)), _sft_cached(sft_dir))
    backbone = sft_dir
    if b.rm_backbone_steps > b.sft_steps:
        backbone = rm_dir / "backbone"
        want(Job("rm backbone", "rm backbone", _job_sft, _sft_config(cfg, backbone, b.rm_backbone_steps)),
             _sft_cached(backbone))
    want(Job("sft eval", "sft eval", _job_sft_eval, cfg, ("sft",)), _done(sft_dir / "eval_summary.json"))
    want(Job("rm data", "rm data", _job_rm_data, cfg, ("sft",)),
         _done(rm_dir / "samples.jsonl") and _done(rm_dir / "eval_samples.jsonl"))
    for rs in rm_sets(cfg, backbone / "final", sft_dir / "final"):
        deps = ("rm data",) + (("rm backbone",) if rs.members[0].model == str(backbone / "final")
                               else ())
        if rs.ensemble:
            for k, rc in enumerate(rs.members):
                want(Job(f"rm {rs.kind} m{k}", "rm training", _job_rm_member, rc, deps, rc.steps),
                     _member_cached(rc))
            deps = tuple(f"rm {rs.kind} m{k}" for k in range(len(rs.members)))
        want(Job(f"rm {rs.kind}", "rm training", _job_rm, rs, deps), _rm_cached(rs))
    runs: dict[str, list[Path]] = {}
    rl_jobs: list[Job] = []
    for seed in range(cfg.seeds):
        for design in cfg.designs:
            if design in PO_DESIGN_NAMES:
                pc = po_config(cfg, design, seed, sft_dir)
                runs.setdefault(design, []).append(Path(pc.out))
                name = f"{design}/s{seed}"
                if _done(Path(pc.out) / "po_summary.json"):
                    cached.append(name)
                else:
                    rl_jobs.append(Job(name, "rl", _job_po, pc, ("sft",), pc.rounds))
                continue
            rc = rl_config(cfg, design, seed, sft_dir, rm_dir)
            rc.progress = False   # the job board shows every job's progress instead
            runs.setdefault(design, []).append(Path(rc.out))
            if _done(Path(rc.out) / "rl_summary.json"):
                cached.append(job_name(rc))
                continue
            deps = ("sft",) + (("rm prm",) if design in USES_PRM else ()) + (("rm orm",) if design == "orm" else ())
            rl_jobs.append(Job(job_name(rc), "rl", _job_rl, rc, deps, rc.steps))
    # longest first, so that the short runs fill the end: GRPO (no critic) after the PPO runs
    success = [j for j in rl_jobs if j.name.startswith("success/")]
    jobs += sorted((j for j in rl_jobs if j not in success), key=lambda j: j.name.startswith("grpo"))
    want(Job("bon", "bon", _job_bon, cfg, ("sft", "rm orm", "rm prm")), _done(out / "bon" / "bon.json"))
    jobs += success
    known = {j.name for j in jobs}   # a cached job's dependents need not wait for it
    for j in jobs:
        j.deps = tuple(d for d in j.deps if d in known)
    return jobs, {d: runs[d] for d in cfg.designs}, cached


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Run (or continue) every stage; returns the results dict written to results.json.

    Every stage's work is a job (:func:`plan_jobs`); ``cfg.workers`` worker processes take them
    as their dependencies allow (:func:`run_jobs`), so the RM backbone trains while the policy's
    SFT and the RM data run, and success-only RL runs while the reward models train."""

    quiet_transformers()
    if cfg.quick:
        cfg.budget = QUICK
    cfg.validate()
    check_demo_out(cfg)
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(out / "stage_s.json")
    sft_dir, rm_dir = out / "sft", out / "rm"
    check_cached_settings(cfg, {"sft": [sft_dir], "rm": [rm_dir / "samples.jsonl", rm_dir / "orm",
                                                         rm_dir / "prm"],
                                "bon": [out / "bon"], "rl": [out / "rl"]})
    jobs, runs, cached = plan_jobs(cfg)
    if cached:
        log(f"cached (not re-run): {', '.join(cached)}")
    t_rl = time.time()

    def on_done(job: Job, res) -> None:
        clock.add(job.stage, board.elapsed(job.name))
        if job.fn is _job_sft:
            _log_sft(job.name, res, log)
        elif job.fn in (_job_sft_eval, _job_rm_data):   # their stages' own log lines
            for line in res:
                log(line)
        elif job.fn is _job_rm:
            _log_rm(job.arg.kind, res, log)
        elif job.fn is _job_rm_member:
            log(f"rm: {job.name} trained")
        elif job.fn is _job_bon:
            log("bon: done")
        else:
            log(f"rl {job.name}: accuracy {res.get('eval/accuracy', float('nan')):.3f}, "
                f"steps/solution {res.get('eval/mean_steps', float('nan')):.2f}, unnecessary "
                f"{res.get('eval/unnecessary_frac', float('nan')):.3f} (run "
                f"{board.elapsed(job.name):.0f}s, all jobs {time.time() - t_rl:.0f}s)")

    board = JobBoard([j.name for j in jobs], {j.name: j.steps for j in jobs}, live=cfg.progress,
                     log=log, every=cfg.progress_every, end_lines=False)
    with board:
        run_jobs(jobs, min(cfg.workers, max(len(jobs), 1)), board, on_done)
    results = write_report(out, sft_dir, rm_dir, out / "bon", runs,
                           {d: DESIGNS[d][0] for d in runs}, wall_s=time.time() - t0,
                           setting=cfg.setting(), stage_s=clock.ordered(STAGES))
    return results

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
    <out>/report.md, results.json, *.png
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rewardlab.config import apply_overrides, from_dict, load_config
from rewardlab.data.datasets import load_dataset_by_name
from rewardlab.eval.bon import run_bon
from rewardlab.eval.prm_eval import prm_label_metrics
from rewardlab.eval.evaluate import evaluate_policy
from rewardlab.eval.report import write_report
from rewardlab.io import read_jsonl, write_json, write_jsonl
from rewardlab.models.loading import load_model_and_tokenizer
from rewardlab.models.sampling import SamplingConfig
from rewardlab.reward_models.labeling import get_labeler
from rewardlab.reward_models.models import load_reward_model
from rewardlab.reward_models.pipeline import augment_rows, sample_and_label
from rewardlab.reward_models.train import RMTrainConfig, train_reward_model
from rewardlab.rl.config import RLConfig
from rewardlab.rl.trainer import train_rl
from rewardlab.sft.trainer import SFTConfig, train_sft
from rewardlab.training.engine import quiet_transformers


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
}
# The PRM step tag is a special token added to the vocabulary (the seed blog convention): the
# policy cannot produce it, so no sampled step can contain it.
PRM_TAG = "<|prm_label|>"
USES_PRM = {"prm_raw", "prm_clip", "prm_delta", "prm_clip_delta", "grpo_process"}


@dataclass
class DemoBudget:
    """Sizes of every stage (the defaults fit ~15 minutes on 2 CPU cores)."""

    n_train: int = 3000
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
    relabelled: positives where the policy is mostly wrong); at most 1."""
    rm_eval_problems: int = 100
    """Held-out (test) problems sampled for the reward models' evaluation rows."""
    rm_backbone_steps: int = 800
    """SFT steps of the reward models' backbone (the policy's SFT recipe run longer, so that it
    can check the arithmetic; the policy itself gets ``sft_steps``); <= ``sft_steps``: the reward
    models start from the SFT policy."""
    rm_steps: int = 500
    rm_lr: float = 5e-4
    bon_problems: int = 100
    bon_max_n: int = 64
    rl_steps: int = 30
    rl_prompts: int = 32
    rl_n: int = 4
    eval_every: int = 10
    eval_k: int = 4

    def validate(self) -> None:
        import dataclasses
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("rm_lr", "rm_temperature", "rm_corrupt", "rm_truncate", "rm_repair"):
                continue
            low = 0 if f.name in ("eval_every", "rm_backbone_steps") else 1
            if not low <= v <= 10_000_000:
                raise ValueError(f"budget.{f.name} = {v} is out of range ({low}..10000000)")
        if not 0 < self.rm_lr <= 1.0:
            raise ValueError(f"budget.rm_lr = {self.rm_lr} is out of range (0..1]")
        if not 0 < self.rm_temperature <= 5.0:
            raise ValueError(f"budget.rm_temperature = {self.rm_temperature} is out of range (0..5]")
        for name in ("rm_corrupt", "rm_truncate", "rm_repair"):
            if not 0 <= getattr(self, name) <= 10:
                raise ValueError(f"budget.{name} = {getattr(self, name)} is out of range [0..10]")


QUICK = DemoBudget(n_train=400, n_test=40, sft_steps=40, rm_problems=60, rm_eval_problems=10,
                   rm_samples=2, rm_backbone_steps=60, rm_steps=20, bon_problems=10, bon_max_n=4,
                   rl_steps=2, rl_prompts=8, rl_n=2, eval_every=0, eval_k=2)


def budget_with(quick: bool, overrides: list[str]) -> DemoBudget:
    """The default (or ``--quick``) budget with ``key=value`` overrides applied and checked;
    ValueError names an unknown key, a value of the wrong type or one out of range."""
    import dataclasses


    data = dataclasses.asdict(QUICK if quick else DemoBudget())
    apply_overrides(data, overrides)
    return from_dict(DemoBudget, data)


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seeds: int = 1
    """RL seeds per design (mean ± std in the report when > 1)."""
    quick: bool = False
    designs: list[str] = field(default_factory=lambda: list(DESIGNS))
    budget: DemoBudget = field(default_factory=DemoBudget)
    prm_alpha: float = 1.0
    prm_eta: float = 0.8
    orm_beta: float = 1.0
    progress: bool = True
    rl_overrides: list[str] = field(default_factory=list)
    """Dotted RLConfig overrides (``key=value``) applied to every RL run after the design's own,
    e.g. ``lr=5e-5`` (change ``out`` too: a cached run is not re-run)."""
    workers: int = 2
    """RL runs in parallel worker processes (one torch thread each); 1: in this process."""


def _done(path: Path) -> bool:
    return path.exists()


def _sft_run(cfg: DemoConfig, out: Path, steps: int, what: str, log) -> Path:
    """The testbed SFT recipe for ``steps`` steps into ``out`` (cached)."""

    if _done(out / "sft_summary.json") and _done(out / "final"):
        log(f"{what}: cached")
        return out
    b = cfg.budget
    sc = SFTConfig(out=str(out), max_steps=steps, eval_every=0, save_every=100,
                   progress=cfg.progress)
    sc.data.n_train, sc.data.n_test = b.n_train, b.n_test
    res = train_sft(sc)
    log(f"{what}: greedy accuracy {res.get('eval/accuracy', float('nan')):.3f} in {res['sft/wall_s']:.0f}s")
    return out


def stage_sft(cfg: DemoConfig, log) -> Path:
    return _sft_run(cfg, Path(cfg.out) / "sft", cfg.budget.sft_steps, "sft", log)


def stage_rm_backbone(cfg: DemoConfig, sft_dir: Path, log) -> Path:
    """The reward models' starting point: the policy's SFT recipe run for ``rm_backbone_steps``
    (a model that computes the testbed's arithmetic well enough to check it), or the SFT policy
    itself when that is 0 or not more than the policy's own SFT steps."""
    b = cfg.budget
    if b.rm_backbone_steps <= b.sft_steps:
        return sft_dir / "final"
    return _sft_run(cfg, Path(cfg.out) / "rm" / "backbone", b.rm_backbone_steps, "rm backbone",
                    log) / "final"


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


def stage_rm(cfg: DemoConfig, sft_dir: Path, log, backbone: Path | None = None) -> Path:
    """Reward-model data and the ORM and PRM.

    Training rows: ``rm_samples`` policy samples per training problem at ``rm_temperature``,
    labelled by the oracle, deduplicated, plus ``rm_repair`` repaired, ``rm_corrupt`` corrupted
    and ``rm_truncate`` truncated copies per sample (relabelled exactly; the tail that large N surfaces).
    Evaluation rows: the policy's samples (temperature 1) on held-out problems. The PRM's
    metrics add earliest-error identification (threshold chosen on half of the held-out
    problems, reported on the other half) and its score bias (by step count, by correctness)."""
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
    metrics, todo = {}, []
    for kind in ("orm", "prm"):
        rm_dir = out / kind
        if _done(rm_dir / "final" / "rewardlab_rm.json") and _done(out / f"{kind}_metrics.json"):
            metrics[kind] = json.loads((out / f"{kind}_metrics.json").read_text())
            log(f"rm: {kind} cached")
            continue
        todo.append(RMTrainConfig(kind=kind, base=str(backbone or sft_dir / "final"),
                                  data=[str(data)], eval_data=[str(eval_data)], out=str(rm_dir), tag=PRM_TAG,
                                  lr=b.rm_lr, batch_size=32, max_steps=b.rm_steps,
                                  progress=cfg.progress))
    for rc, res in zip(todo, _map_jobs(_train_rm_job, todo, cfg.workers)):
        if rc.kind == "prm":
            prm = load_reward_model(Path(rc.out) / "final", device="cpu")
            res = {**res, **prm_label_metrics(prm, read_jsonl(eval_data))}
            del prm
        metrics[rc.kind] = res
        write_json(out / f"{rc.kind}_metrics.json", res)
        log(f"rm: {rc.kind} " + ", ".join(f"{k}={v:.3f}" for k, v in res.items()
                                          if isinstance(v, float) and ("auroc" in k or "ece" in k
                                                                       or k.endswith("error_f1"))))
    return out


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _train_rm_job(rc) -> dict:

    quiet_transformers()
    return train_reward_model(rc)


def _map_jobs(fn, jobs: list, workers: int) -> list:
    """``[fn(j) for j in jobs]``, in ``min(workers, len(jobs))`` spawned processes that split the
    cores evenly (in this process when that is one)."""
    n = min(workers, len(jobs))
    if n <= 1:
        return [fn(j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    for j in jobs:
        j.progress = False
    threads = max(1, _cores() // n)
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"),
                             initializer=_set_threads, initargs=(threads,)) as pool:
        return list(pool.map(fn, jobs))


def _set_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)


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
        f"policy.name_or_path={sft_dir / 'final'}", f"data.train_path={sft_dir / 'train.jsonl'}",
        f"data.test_path={sft_dir / 'test.jsonl'}", f"steps={b.rl_steps}",
        f"prompts_per_step={b.rl_prompts}", f"sampling.n={b.rl_n}", f"eval_every={b.eval_every}",
        f"eval_k={b.eval_k}", f"save_every={max(b.rl_steps // 4, 1)}", f"progress={cfg.progress}"]
    if design in USES_PRM:
        ov += [f"reward.prm.path={rm_dir / 'prm'}", f"reward.prm.alpha={cfg.prm_alpha}",
               f"reward.prm.eta={cfg.prm_eta}"]
    if design == "orm":
        ov += [f"reward.orm.path={rm_dir / 'orm'}", f"reward.orm.beta={cfg.orm_beta}"]
    return load_config(RLConfig, None, ov + list(cfg.rl_overrides))


_ACTIVE = None   # worker processes: shared count of RL jobs running now
_CORES = 1


def _init_rl_worker(active, cores: int) -> None:
    global _ACTIVE, _CORES
    _ACTIVE, _CORES = active, cores


def job_threads(cores: int, active: int) -> int:
    """Torch threads for one of ``active`` parallel jobs on ``cores`` cores: cores // active, at
    least 1 (when the last job runs alone it gets every core instead of one)."""
    return max(1, cores // max(active, 1))


def _run_rl_job(rc: RLConfig) -> tuple[str, dict]:
    """Worker: one RL run. Tiny models scale better across processes than across threads, so
    each job starts with ``cores // jobs running`` threads and takes more after every step once
    other jobs have finished."""
    import torch


    quiet_transformers()
    with _ACTIVE.get_lock():
        _ACTIVE.value += 1

    def retune(step: int, metrics: dict) -> None:
        n = job_threads(_CORES, _ACTIVE.value)
        if n != torch.get_num_threads():
            torch.set_num_threads(n)

    retune(0, {})
    try:
        return rc.out, train_rl(rc, on_step=retune)
    finally:
        with _ACTIVE.get_lock():
            _ACTIVE.value -= 1


def stage_rl(cfg: DemoConfig, sft_dir: Path, rm_dir: Path, log) -> dict[str, list[Path]]:
    """Every design × seed from the same SFT checkpoint; ``cfg.workers`` runs in parallel."""
    runs: dict[str, list[Path]] = {}
    pending: list[RLConfig] = []
    for design in cfg.designs:
        for seed in range(cfg.seeds):
            rc = rl_config(cfg, design, seed, sft_dir, rm_dir)
            runs.setdefault(design, []).append(Path(rc.out))
            if _done(Path(rc.out) / "rl_summary.json"):
                log(f"rl {design} s{seed}: cached")
            else:
                pending.append(rc)

    def report(out: str, res: dict, t0: float) -> None:
        name = "/".join(Path(out).parts[-2:])
        log(f"rl {name}: accuracy {res.get('eval/accuracy', float('nan')):.3f}, steps/solution "
            f"{res.get('eval/mean_steps', float('nan')):.2f}, unnecessary "
            f"{res.get('eval/unnecessary_frac', float('nan')):.3f} ({time.time() - t0:.0f}s)")

    t0 = time.time()
    if cfg.workers <= 1 or len(pending) <= 1:
        for rc in pending:
            report(rc.out, train_rl(rc), t0)
        return runs
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    for rc in pending:
        rc.progress = False
    ctx = mp.get_context("spawn")
    active = ctx.Value("i", 0)
    cores = max(cfg.workers, _cores())
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx, initializer=_init_rl_worker,
                             initargs=(active, cores)) as pool:
        futures = [pool.submit(_run_rl_job, rc) for rc in pending]
        for fut in as_completed(futures):
            out, res = fut.result()
            report(out, res, t0)
    return runs


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Run (or continue) every stage; returns the results dict written to results.json."""

    quiet_transformers()
    if cfg.quick:
        cfg.budget = QUICK
    unknown = set(cfg.designs) - set(DESIGNS)
    if unknown:
        raise ValueError(f"demo: unknown design(s) {sorted(unknown)}; valid: {list(DESIGNS)}")
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sft_dir = stage_sft(cfg, log)
    stage_sft_eval(cfg, sft_dir, log)
    rm_dir = stage_rm(cfg, sft_dir, log, stage_rm_backbone(cfg, sft_dir, log))
    bon_dir = stage_bon(cfg, sft_dir, rm_dir, log)
    runs = stage_rl(cfg, sft_dir, rm_dir, log)
    results = write_report(out, sft_dir, rm_dir, bon_dir, runs,
                           {d: DESIGNS[d][0] for d in runs}, wall_s=time.time() - t0)
    return results

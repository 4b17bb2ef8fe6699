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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from rewardlab.config import apply_overrides, check_numbers, ConfigError, from_dict, load_config
from rewardlab.data.datasets import load_dataset_by_name
from rewardlab.eval.bon import run_bon
from rewardlab.eval.prm_eval import prm_label_metrics
from rewardlab.eval.evaluate import evaluate_policy
from rewardlab.eval.report import STAGES, write_report
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
from rewardlab.training.progress import JobBoard, queue_reporter


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
}
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
                                        "rm_eval_problems", "rm_steps", "bon_problems", "bon_max_n",
                                        "rl_steps", "rl_prompts", "rl_n", "eval_k")},
        "eval_every": "[0, 10000000]", "rm_backbone_steps": "[0, 10000000]", "rm_lr": "(0, 1]",
        "rm_temperature": "(0, 5]", "rm_corrupt": "[0, 10]", "rm_truncate": "[0, 10]",
        "rm_repair": "[0, 1]", "unnecessary_rate": "[0, 1]"}

    n_train: int = 3000
    unnecessary_rate: float = 0.1
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
        check_numbers(self, "budget.")


QUICK = DemoBudget(n_train=400, n_test=40, sft_steps=40, rm_problems=60, rm_eval_problems=10,
                   rm_samples=2, rm_backbone_steps=60, rm_steps=20, bon_problems=10, bon_max_n=4,
                   rl_steps=2, rl_prompts=8, rl_n=2, eval_every=0, eval_k=2)


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
    prm_alpha: float = 1.0
    prm_eta: float = 0.8
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
                "seeds": self.seeds, "rl_steps": b.rl_steps, "rl_prompts": b.rl_prompts,
                "rl_n": b.rl_n, "eval_k": b.eval_k, "rl_overrides": list(self.rl_overrides)}

    def validate(self) -> None:
        """Every number finite and in range (``prm_alpha`` / ``orm_beta``: any finite weight), the
        designs known; raises ConfigError naming the field."""
        check_numbers(self)
        unknown = set(self.designs) - set(DESIGNS)
        if unknown:
            raise ConfigError(f"demo: unknown design(s) {sorted(unknown)}; valid: {list(DESIGNS)}")


def _done(path: Path) -> bool:
    return path.exists()


def _sft_config(cfg: DemoConfig, out: Path, steps: int) -> SFTConfig:
    """The testbed SFT recipe for ``steps`` steps into ``out``."""
    b = cfg.budget
    sc = SFTConfig(out=str(out), max_steps=steps, eval_every=0, save_every=100,
                   progress=cfg.progress)
    sc.data.n_train, sc.data.n_test = b.n_train, b.n_test
    sc.data.testbed.unnecessary_rate = b.unnecessary_rate
    return sc


def _sft_cached(out: Path) -> bool:
    return _done(out / "sft_summary.json") and _done(out / "final")


def _log_sft(what: str, res: dict, log) -> None:
    log(f"{what}: greedy accuracy {res.get('eval/accuracy', float('nan')):.3f} in "
        f"{res['sft/wall_s']:.0f}s")


def _train_sft_job(sc: SFTConfig) -> dict:
    quiet_transformers()
    return train_sft(sc)


def stage_sft(cfg: DemoConfig, log) -> Path:
    """The SFT policy: the testbed recipe for ``sft_steps`` steps (cached)."""
    out = Path(cfg.out) / "sft"
    if _sft_cached(out):
        log("sft: cached")
    else:
        _log_sft("sft", train_sft(_sft_config(cfg, out, cfg.budget.sft_steps)), log)
    return out


def start_rm_backbone(cfg: DemoConfig, sft_dir: Path, log) -> Callable[[], Path]:
    """Start the reward models' backbone; returns a call that waits for it and gives its model
    directory. The backbone is the policy's SFT recipe run for ``rm_backbone_steps`` (a model that
    computes the testbed's arithmetic well enough to check it), or the SFT policy itself when
    that is 0 or not more than the policy's own SFT steps. With ``cfg.workers`` > 1 it trains in a
    worker process on one core while this process goes on (SFT, its evaluation, the RM data)
    on the others."""
    b = cfg.budget
    out = Path(cfg.out) / "rm" / "backbone"
    if b.rm_backbone_steps <= b.sft_steps:
        return lambda: sft_dir / "final"
    if _sft_cached(out):
        log("rm backbone: cached")
        return lambda: out / "final"
    sc = _sft_config(cfg, out, b.rm_backbone_steps)
    if cfg.workers <= 1:
        _log_sft("rm backbone", train_sft(sc), log)
        return lambda: out / "final"
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import torch

    sc.progress = False
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))   # until the backbone is done
    pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                               initializer=_set_threads, initargs=(1,))
    fut = pool.submit(_train_sft_job, sc)
    log(f"rm backbone: {b.rm_backbone_steps} SFT steps started in a worker process")

    def wait() -> Path:
        try:
            _log_sft("rm backbone", fut.result(), log)
        finally:
            pool.shutdown()
            torch.set_num_threads(threads)
        return out / "final"
    return wait


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


def stage_rm(cfg: DemoConfig, sft_dir: Path, log, backbone: Path | None = None) -> Path:
    """The ORM and PRM, trained on :func:`stage_rm_data`'s rows. The PRM's metrics add
    earliest-error identification (threshold chosen on half of the held-out problems, reported
    on the other half) and its score bias (by step count, by correctness)."""
    b = cfg.budget
    out = Path(cfg.out) / "rm"
    data, eval_data = stage_rm_data(cfg, sft_dir, log)
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
    for rc, res in zip(todo, _map_jobs(_train_rm_job, todo, cfg.workers, [f"rm {rc.kind}" for rc in todo],
                                       log if cfg.progress else None)):
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


_QUEUE = None   # worker processes: where job progress messages go (training.progress)


def _train_rm_job(named) -> dict:
    name, rc = named
    quiet_transformers()
    report = queue_reporter(_QUEUE, name) if _QUEUE is not None else None
    if report:
        report("start", None)
    try:
        return train_reward_model(rc)
    finally:
        if report:
            report("end")


def _map_jobs(fn, jobs: list, workers: int, names: list[str] | None = None, log=None) -> list:
    """``[fn(j) for j in jobs]``, in ``min(workers, len(jobs))`` spawned processes that split the
    cores evenly (in this process when that is one). ``fn`` gets ``(name, job)``; in worker
    processes it may report progress on ``_QUEUE``, which the parent shows (:class:`JobBoard`:
    a live panel on a terminal, else lines through ``log``) when ``log`` is given."""
    n = min(workers, len(jobs))
    names = names or [str(i) for i in range(len(jobs))]
    if n <= 1:
        return [fn((name, j)) for name, j in zip(names, jobs)]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    for j in jobs:
        j.progress = False
    threads = max(1, _cores() // n)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_set_threads,
                             initargs=(threads, q)) as pool, \
            JobBoard(names, {}, live=log is not None, log=log or (lambda s: None)) as board:
        futures = [pool.submit(fn, (name, j)) for name, j in zip(names, jobs)]
        _wait_all(futures, board, q)
        return [f.result() for f in futures]


def _set_threads(n: int, q=None) -> None:
    global _QUEUE
    import torch
    torch.set_num_threads(n)
    _QUEUE = q


def _wait_all(futures: list, board: JobBoard, q, poll_s: float = 0.5, on_done=None) -> None:
    """Wait for every future, feeding the queue's progress messages to ``board`` meanwhile;
    ``on_done(future)`` as each finishes (its exception, if any, is raised there or later by
    ``result()``)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
        board.drain(q)
        for fut in [f for f in futures if f in done]:
            if on_done is not None:
                on_done(fut)
    board.drain(q)


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


def _run_rl_job(rc: RLConfig) -> tuple[str, dict]:
    """Worker: one RL run. Tiny models scale better across processes than across threads, so
    each job starts with ``cores // jobs running`` threads and takes more after every step once
    other jobs have finished."""
    import torch


    quiet_transformers()
    with _ACTIVE.get_lock():
        _ACTIVE.value += 1
    report = queue_reporter(_QUEUE, job_name(rc)) if _QUEUE is not None else None

    def retune() -> None:
        n = job_threads(_CORES, _ACTIVE.value)
        if n != torch.get_num_threads():
            torch.set_num_threads(n)

    def on_step(step: int, metrics: dict) -> None:
        retune()
        if report:
            report("step", step)

    retune()
    if report:
        report("start", rc.steps)
    try:
        return rc.out, train_rl(rc, on_step=on_step)
    finally:
        if report:
            report("end")
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
            f"{res.get('eval/unnecessary_frac', float('nan')):.3f} (run {board.elapsed(name):.0f}s, "
            f"stage {time.time() - t0:.0f}s)")

    t0 = time.time()
    for rc in pending:   # the board shows every job's progress instead of each run's own bar
        rc.progress = False
    board = JobBoard([job_name(rc) for rc in pending], {job_name(rc): rc.steps for rc in pending},
                     live=cfg.progress, log=log, every=cfg.progress_every, label="rl ",
                     end_lines=False)
    if cfg.workers <= 1 or len(pending) <= 1:
        with board:
            for rc in pending:
                name = job_name(rc)
                board.handle("start", name, rc.steps)
                res = train_rl(rc, on_step=lambda step, m, name=name: board.handle("step", name, step))
                board.handle("end", name)
                report(rc.out, res, t0)
        return runs
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    active = ctx.Value("i", 0)
    q = ctx.Queue()
    cores = max(cfg.workers, _cores())
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx, initializer=_init_rl_worker,
                             initargs=(active, cores, q)) as pool, board:
        futures = [pool.submit(_run_rl_job, rc) for rc in pending]
        _wait_all(futures, board, q, on_done=lambda fut: report(*fut.result(), t0))
    return runs


class StageClock:
    """Seconds each demo stage took, kept in ``<out>/stage_s.json``: a stage whose outputs were
    all there before it started (cached) keeps the time recorded by the run that made them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.times: dict[str, float] = {}
        if self.path.exists():
            try:
                self.times = {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError):
                self.times = {}

    @contextmanager
    def __call__(self, name: str, outputs: list[Path]):
        cached = bool(outputs) and all(_done(p) for p in outputs)
        t0 = time.time()
        yield
        if not cached:
            self.times[name] = round(time.time() - t0, 1)
            write_json(self.path, self.times)

    def ordered(self, names: list[str]) -> dict[str, float]:
        return {n: self.times[n] for n in names if n in self.times}


SETTINGS_FILE = "demo_settings.json"
# stage -> the budget fields its outputs depend on (besides those of the stages before it)
_STAGE_KEYS = {
    "sft": ("n_train", "n_test", "unnecessary_rate", "sft_steps", "rm_backbone_steps"),
    "rm": ("rm_problems", "rm_samples", "rm_temperature", "rm_corrupt", "rm_truncate", "rm_repair",
           "rm_eval_problems", "rm_steps", "rm_lr"),
    "bon": ("bon_problems", "bon_max_n"),
    "rl": ("rl_steps", "rl_prompts", "rl_n", "eval_every", "eval_k"),
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


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Run (or continue) every stage; returns the results dict written to results.json."""

    quiet_transformers()
    if cfg.quick:
        cfg.budget = QUICK
    cfg.validate()
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(out / "stage_s.json")
    sft, rm = out / "sft", out / "rm"
    check_cached_settings(cfg, {"sft": [sft], "rm": [rm / "samples.jsonl", rm / "orm", rm / "prm"],
                                "bon": [out / "bon"], "rl": [out / "rl"]})
    backbone = rm / "backbone"
    # the backbone trains alongside the policy's SFT, its evaluation and the RM data; its stage
    # time is the wait left after them
    wait_backbone = start_rm_backbone(cfg, sft, log)
    with clock("sft", [sft / "sft_summary.json", sft / "final"]):
        sft_dir = stage_sft(cfg, log)
    with clock("sft eval", [sft / "eval_summary.json"]):
        stage_sft_eval(cfg, sft_dir, log)
    with clock("rm data", [rm / "samples.jsonl", rm / "eval_samples.jsonl"]):
        stage_rm_data(cfg, sft_dir, log)
    with clock("rm backbone", [backbone / "sft_summary.json", backbone / "final"]
               if cfg.budget.rm_backbone_steps > cfg.budget.sft_steps else []):
        backbone = wait_backbone()
    with clock("rm training", [rm / f"{k}_metrics.json" for k in ("orm", "prm")]):
        rm_dir = stage_rm(cfg, sft_dir, log, backbone)
    with clock("bon", [out / "bon" / "bon.json"]):
        bon_dir = stage_bon(cfg, sft_dir, rm_dir, log)
    with clock("rl", [out / "rl" / d / f"s{s}" / "rl_summary.json" for d in cfg.designs
                      for s in range(cfg.seeds)]):
        runs = stage_rl(cfg, sft_dir, rm_dir, log)
    results = write_report(out, sft_dir, rm_dir, bon_dir, runs,
                           {d: DESIGNS[d][0] for d in runs}, wall_s=time.time() - t0,
                           setting=cfg.setting(), stage_s=clock.ordered(STAGES))
    return results

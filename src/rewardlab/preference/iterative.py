"""Iterative (online) preference optimisation: R rounds of sample → label → pair → train.

Round r (``<out>/round_<r>/``) samples ``sampling.n`` responses to ``problems_per_round``
training problems from the current policy (the start policy in round 0, round r-1's ``final/``
after), labels them (``labeler``: the verifier's outcome always, step labels from the oracle or
Monte-Carlo completions), builds pairs (``kind``; written to ``pairs.jsonl``) and trains on them
with :func:`~rewardlab.preference.trainer.train_po` for ``po.steps`` steps. The reference model
of round r is the policy it starts from (``ref: previous``, iterative RPO, Pang et al. 2024,
arXiv 2404.19733) or the start policy throughout (``ref: start``).

A finished round is skipped on a rerun (its ``po_summary.json`` exists), a half-finished one
resumes from its checkpoint with the same pairs, so the whole run resumes exactly. The end:
greedy (and maj@k with ``eval_k``) held-out evaluation of the last policy in
``<out>/po_summary.json`` with the RL runs' ``eval/...`` keys, plus ``po/n_samples`` (the
sampled solutions, comparable with an RL run's steps × prompts × n) and ``po/n_pairs``;
``<out>/metrics.jsonl`` holds one row per round.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from rewardlab.config import check_numbers, ConfigError, load_config
from rewardlab.data.config import load_problems, make_prompt_fn, save_splits
from rewardlab.eval.evaluate import evaluate_policy
from rewardlab.io import write_json, write_jsonl
from rewardlab.models.loading import check_model_path, load_model_and_tokenizer, make_testbed_policy
from rewardlab.models.sampling import SamplingConfig
from rewardlab.preference.pairs import build_pairs
from rewardlab.preference.trainer import POConfig, train_po
from rewardlab.reward_models.labeling import get_labeler
from rewardlab.reward_models.pipeline import label_rows, sample_responses
from rewardlab.training.engine import epoch_batch, quiet_transformers
from rewardlab.training.hub import check_push, push_to_hub
from rewardlab.training.rundir import prepare_run_dir, write_run_config
from rewardlab.training.trackers import check_report_to, Trackers


@dataclass
class IterativePOConfig:
    """Iterative preference optimisation on the policy's own samples."""

    RANGES: ClassVar[dict[str, str]] = {"rounds": "[1, inf)", "problems_per_round": "[1, inf)",
                                        "threshold": "[0, 1]", "eval_k": "[0, inf)",
                                        "max_pairs_per_problem": "[0, inf)",
                                        "epochs": "[0, inf)"}

    out: str = "runs/po_iter"
    """Run directory: round_<r>/ (pairs.jsonl and a po run each), metrics.jsonl, po_summary.json."""
    rounds: int = 3
    """Rounds of sample → label → pair → train."""
    problems_per_round: int = 64
    """Training problems sampled each round (a seeded draw, different every round)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=8, temperature=1.0))
    """How responses are sampled (n per problem)."""
    kind: str = "outcome"
    """Pairs: outcome (right vs wrong response; dpo/ipo/kto/orpo/simpo) | step (Step-DPO)."""
    labeler: str = "oracle"
    """Step labels for ``kind: step``: oracle (testbed) | mc (Monte-Carlo completions by the
    current policy). Outcome pairs use the verifier and need no labeller."""
    mc_n: int = 8
    """Monte-Carlo completions per prefix (``labeler: mc``)."""
    threshold: float = 0.5
    """A step is right when its label is > this."""
    max_pairs_per_problem: int = 4
    """At most this many pairs per problem and round (0: all)."""
    epochs: float = 2.0
    """Passes over each round's pairs: po.steps = ⌈epochs · pairs / po.batch_size⌉ per round
    (0: po.steps as set)."""
    ref: str = "previous"
    """Reference model of each round: previous (the policy the round starts from) | start."""
    eval_k: int = 0
    """Samples per held-out problem for maj@k at the end (0: greedy only)."""
    eval_rounds: bool = True
    """Greedy held-out accuracy after every round too (``eval/...`` rows of metrics.jsonl)."""
    report_to: str = "tensorboard"
    """Experiment trackers of the round rows (``<out>/metrics.jsonl`` is always written):
    tensorboard | wandb | trackio | mlflow | none, or a comma list. Each round's trainer logs to
    ``po.report_to`` (in ``round_<r>/``)."""
    push_to_hub: str | None = None
    """Upload the last round's policy (``round_<r>/final``, with its card) to this Hugging Face
    Hub repo (``owner/name``) when the run finishes."""
    overwrite: bool = False
    """Start afresh in ``out``, deleting the run there (rounds included)."""
    po: POConfig = field(default_factory=POConfig)
    """The trainer of each round: loss, hparams, steps per round, the start policy (model),
    ``data`` (training and held-out problems, prompts). Its ``out``/``pairs`` are set per round."""

    def validate(self) -> None:
        check_numbers(self)
        if self.kind not in ("outcome", "step"):
            raise ConfigError(f"kind: {self.kind!r} is not one of outcome, step")
        if (self.kind == "step") != (self.po.loss == "step_dpo"):
            raise ConfigError(f"po.loss={self.po.loss} with kind={self.kind}: step_dpo trains on step "
                              "pairs and the other losses on outcome pairs; set kind=step with "
                              "po.loss=step_dpo, else kind=outcome")
        if self.ref not in ("previous", "start"):
            raise ConfigError(f"ref: {self.ref!r} is not one of previous, start")
        if self.labeler not in ("oracle", "mc"):
            raise ConfigError(f"labeler: {self.labeler!r} is not one of oracle, mc")
        if self.sampling.n < 2:
            raise ConfigError("sampling.n must be >= 2: pairs need two responses to one problem")
        self.po.validate()


def _labeler(cfg: IterativePOConfig, model, tok, prompt_fn, style: str):
    if cfg.labeler == "mc":
        return get_labeler("mc", model=model, tokenizer=tok, n=cfg.mc_n, style=style,
                           max_new_tokens=cfg.sampling.max_new_tokens, seed=cfg.po.seed,
                           prompt_fn=prompt_fn)
    return get_labeler(cfg.labeler)


def sample_round_pairs(cfg: IterativePOConfig, policy_path: str, problems, round_: int) -> tuple[list[dict], dict]:
    """Sample, label and pair one round's problems with the policy at ``policy_path``; returns
    (pairs, round metrics)."""
    model, tok = load_model_and_tokenizer(policy_path, cfg.po.model.dtype, cfg.po.model.device)
    model.eval()
    style = cfg.po.data.answer_style()
    prompt_fn = make_prompt_fn(cfg.po.data, tok)
    seed = cfg.po.seed * 1000 + round_
    rows = sample_responses(model, tok, problems, cfg.sampling.n, cfg.sampling, seed=seed,
                            style=style, prompt_fn=prompt_fn,
                            step_split="blank" if style == "math" else "lines")
    if cfg.kind == "step":
        rows = label_rows(rows, _labeler(cfg, model, tok, prompt_fn, style))
    pairs = build_pairs(rows, cfg.kind, "outcome", "step_labels", cfg.threshold,
                        cfg.max_pairs_per_problem or None, seed)
    acc = sum(r["outcome"] for r in rows) / max(len(rows), 1)
    del model
    return pairs, {"round/sample_accuracy": acc, "round/n_samples": len(problems) * cfg.sampling.n,
                   "round/n_pairs": len(pairs)}


def evaluate_round(cfg: IterativePOConfig, policy_path: str, test, k: int = 0) -> dict:
    """Held-out evaluation of the policy at ``policy_path`` (greedy; maj@k with ``k``), keys
    ``eval/...`` as the RL runs write them."""
    model, tok = load_model_and_tokenizer(policy_path, cfg.po.model.dtype, cfg.po.model.device)
    summary, _ = evaluate_policy(model, tok, test, style=cfg.po.data.answer_style(), greedy=True,
                                 k=k, temperature=cfg.sampling.temperature or 1.0,
                                 max_new_tokens=cfg.sampling.max_new_tokens, seed=cfg.po.seed,
                                 prompt_fn=make_prompt_fn(cfg.po.data, tok))
    return {f"eval/{key}": v for key, v in summary.items() if isinstance(v, (int, float))}


def train_po_iterative(cfg: IterativePOConfig,
                       on_round: Callable[[int, dict], None] | None = None) -> dict:
    """Run ``cfg.rounds`` rounds (module docstring); returns the final metrics, also written to
    ``<out>/po_summary.json``. ``on_round(r, metrics)`` is called after each round."""
    quiet_transformers()
    cfg.validate()
    trackers = check_report_to(cfg.report_to)     # before any work: packages, repo id, token
    check_report_to(cfg.po.report_to)
    check_push(cfg.push_to_hub)
    out = Path(cfg.out)
    # refused (an input in out, another run's config), or, with overwrite, the run there deleted
    # (rounds and testbed start included: rundir.RUN_FILES / RUN_GLOBS)
    prepare_run_dir(out, cfg, "po iterative", overwrite=cfg.overwrite, write=False)
    train, test = load_problems(cfg.po.data, cfg.po.seed)
    if len(train) < 1:
        raise ConfigError("po iterative: no training problems (set po.data.train_path or n_train)")
    if cfg.po.model.name_or_path != "testbed":
        check_model_path(cfg.po.model.name_or_path)
    write_run_config(out, cfg)   # the checks passed: the run is recorded
    save_splits(cfg.po.data, train, test, out)
    tracker = Trackers(trackers, out, f"po-iterative-{out.resolve().name}", cfg) if trackers else None
    try:
        return _run_rounds(cfg, out, train, test, tracker, on_round)
    finally:
        if tracker is not None:
            tracker.close()


def _run_rounds(cfg: IterativePOConfig, out: Path, train, test, tracker,
                on_round: Callable[[int, dict], None] | None) -> dict:
    start = cfg.po.model.name_or_path
    if start == "testbed":        # one random start policy for every round's reference
        start = str(out / "init")
        if not (out / "init" / "config.json").exists():
            make_testbed_policy(start, size=cfg.po.model.size, seed=cfg.po.seed)
    policy, history, n_samples, n_pairs, steps, wall = start, [], 0, 0, 0, 0.0
    for r in range(cfg.rounds):
        rdir = out / f"round_{r}"
        idx = epoch_batch(len(train), min(cfg.problems_per_round, len(train)), r, cfg.po.seed,
                          partial_last=True)
        problems = [train[i] for i in idx]
        pairs_path = rdir / "pairs.jsonl"
        if (rdir / "round.json").exists():
            info = json.loads((rdir / "round.json").read_text())
        else:
            t_sample = time.time()
            pairs, info = sample_round_pairs(cfg, policy, problems, r)
            info["round/sample_s"] = time.time() - t_sample
            if pairs:
                write_jsonl(pairs_path, pairs)
            write_json(rdir / "round.json", info)
        n_samples += int(info["round/n_samples"])
        wall += info.get("round/sample_s", 0.0)
        n_pairs += int(info["round/n_pairs"])
        if not info["round/n_pairs"]:
            warnings.warn(f"po iterative: round {r} gave no pairs (every response to a problem right, "
                          "or every one wrong); the policy carries over", stacklevel=2)
        else:
            rc = copy.deepcopy(cfg.po)
            rc.out, rc.pairs, rc.eval_pairs = str(rdir), str(pairs_path), None
            rc.push_to_hub = None                     # only the last round's policy is pushed
            rc.model.name_or_path = policy
            rc.ref_model = policy if cfg.ref == "previous" else start
            rc.data = dataclasses.replace(rc.data, n_test=0, train_path=None, test_path=None)
            rc.seed = cfg.po.seed * 1000 + r
            if cfg.epochs > 0:
                rc.steps = max(1, math.ceil(cfg.epochs * info["round/n_pairs"] / rc.batch_size))
            done = rdir / "po_summary.json"
            res = json.loads(done.read_text()) if done.exists() else train_po(rc)
            policy = str(rdir / "final")
            steps += rc.steps
            info = {**info, **{k: v for k, v in res.items() if k.startswith("po/")}}
            wall += res.get("po/wall_s", 0.0)
        if test and cfg.eval_rounds:
            cached = rdir / "eval.json"
            if not cached.exists():
                t_eval = time.time()
                write_json(cached, {**evaluate_round(cfg, policy, test), "eval_s": time.time() - t_eval})
            ev = json.loads(cached.read_text())
            wall += ev.pop("eval_s", 0.0)
            info = {**info, **ev}
        history.append({"step": steps, "round": r, **info})
        write_jsonl(out / "metrics.jsonl", history)
        if tracker is not None:
            tracker.log(steps, {k: v for k, v in info.items() if k != "round/sample_s"} | {"round": r})
        if on_round is not None:
            on_round(r, info)
    final: dict = {"po/rounds": cfg.rounds, "po/n_samples": n_samples, "po/n_pairs": n_pairs,
                   "po/steps": steps, "po/final": policy}
    t_eval = time.time()
    if test:
        final.update(evaluate_round(cfg, policy, test, cfg.eval_k))
    # sampling + training + evaluation of every round (cached rounds count their recorded time)
    final["po/wall_s"] = wall + time.time() - t_eval
    write_json(out / "po_summary.json", final)
    if cfg.push_to_hub and (Path(policy) / "config.json").exists():
        print(f"po iterative: pushed {policy} to {push_to_hub(policy, cfg.push_to_hub)}", file=sys.stderr)
    return final


# ---------------------------------------------------------------------------------------------
# The demo's preference designs

PO_TESTBED_LR = 3e-6
"""Learning rate of the demo's preference designs on the testbed policy (docs/preference.md, the
sweep): at POConfig's 1e-4 every design collapsed the SFT policy (DPO 0.49 → 0.30 on seed 0), at
3e-5 they lose 0.07–0.21, at 1e-5 and 3e-6 they stay within noise of it (0.465–0.500)."""

PO_DESIGNS: dict[str, list[str]] = {
    "dpo": ["po.loss=dpo", "kind=outcome", f"po.lr={PO_TESTBED_LR}"],
    "kto": ["po.loss=kto", "kind=outcome", f"po.lr={PO_TESTBED_LR}"],
    "step_dpo": ["po.loss=step_dpo", "kind=step", "labeler=oracle", f"po.lr={PO_TESTBED_LR}"],
    "ipo": ["po.loss=ipo", "kind=outcome"],
    "orpo": ["po.loss=orpo", "kind=outcome"],
    "simpo": ["po.loss=simpo", "kind=outcome"],
}
"""Design name → overrides of :class:`IterativePOConfig` (dpo, kto, step_dpo are the demo's, with
the learning rate tuned on the testbed; β 0.1, 2 epochs per round, ≤ 4 pairs per problem and the
previous round's policy as reference are the defaults, which the sweep did not beat)."""


def po_design_config(design: str, *, out: str, seed: int, policy: str, train_path: str,
                     test_path: str, n_samples: int, n: int = 8, rounds: int = 3,
                     eval_k: int = 0, n_test: int = 200, max_new_tokens: int = 48,
                     progress: bool = False, overrides: list[str] | None = None) -> IterativePOConfig:
    """The iterative config of preference design ``design`` (:data:`PO_DESIGNS`) on the same
    budget as an RL run: ``n_samples`` sampled solutions in all (an RL run's steps × prompts per
    step × n), split into ``rounds`` rounds of ⌈n_samples / (rounds · n)⌉ problems × ``n``
    samples; held-out evaluation on the first ``n_test`` problems of ``test_path``.
    ``overrides``: dotted keys of :class:`IterativePOConfig`, applied last."""
    if design not in PO_DESIGNS:
        raise ConfigError(f"unknown preference design {design!r}; valid: {', '.join(PO_DESIGNS)}")
    per_round = max(1, math.ceil(n_samples / (rounds * n)))
    ov = PO_DESIGNS[design] + [
        f"out={out}", f"po.seed={seed}", f"po.model.name_or_path={policy}",
        f"po.data.train_path={train_path}", f"po.data.test_path={test_path}",
        f"po.data.n_test={n_test}",
        f"rounds={rounds}", f"problems_per_round={per_round}", f"sampling.n={n}",
        f"sampling.max_new_tokens={max_new_tokens}", f"eval_k={eval_k}",
        f"po.progress={progress}"]
    return load_config(IterativePOConfig, None, ov + list(overrides or []))

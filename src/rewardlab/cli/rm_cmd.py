"""Reward-model commands: ``rewardlab train-rm``, ``rewardlab score``, ``rewardlab eval-prm`` and
``rewardlab ensemble-rm``.

Thin wrappers over :func:`rewardlab.reward_models.train.train_reward_model`,
:func:`rewardlab.reward_models.scoring.score_file` and
:func:`rewardlab.eval.prm_eval.evaluate_prm_on_rows`.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from rich.console import Console

from rewardlab.cli import (output_overrides, print_config, PRINT_CONFIG_OPTION, PUSH_TO_HUB_OPTION,
                           REPORT_TO_OPTION)
from rewardlab.cli.eval_cmd import PRM_TAG_HELP, tag_spec
from rewardlab.cli.naming import aliased
from rewardlab.config import load_config
from rewardlab.eval.prm_eval import evaluate_prm_on_rows, read_processbench
from rewardlab.io import check_outputs, write_json, write_jsonl
from rewardlab.reward_models.losses import AGGREGATIONS
from rewardlab.reward_models.models import ENSEMBLE_FILE, EnsembleRM, load_reward_model, save_ensemble
from rewardlab.reward_models.scoring import read_solution_rows, score_file
from rewardlab.reward_models.train import RMTrainConfig, train_reward_model
from rewardlab.training.engine import quiet_transformers
from rewardlab.training.distributed import is_main_process
from rewardlab.training.rundir import check_run


console = Console()


Str = Optional[str]
Strs = Optional[list[str]]


def train_rm(
    kind: Annotated[Str, typer.Option(help="orm | prm | bt")] = None,
    data: Annotated[Strs, typer.Option(help="Training JSONL (repeat for several files).")] = None,
    model: Annotated[Str, typer.Option("--model", help="Backbone to train: policy dir, hub id or "
                                       "'testbed' (config: model).")] = None,
    out: Annotated[Str, typer.Option(help="Run directory.")] = None,
    form: Annotated[Str, typer.Option(help="PRM form: lm | head.")] = None,
    eval_data: Annotated[Strs, typer.Option(help="Held-out JSONL (repeatable).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", min=1, help="Optimizer steps (config: steps; default: from epochs).")] = None,
    data_format: Annotated[Str, typer.Option(
        "--format", help="Row format of --data: auto (detected per row) | rewardlab | trl | "
        "trl-stepwise | trl-preference | trl-unpaired (config: data_format).")] = None,
    config: Annotated[Str, typer.Option(help="YAML file of RMTrainConfig fields.")] = None,
    set_: Annotated[Strs, typer.Option("--set", help="Override a field: key=value (repeatable).")
                    ] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Delete the run in --out and start afresh (else a run there with "
        "another config is refused).")] = False,
    report_to: Optional[str] = REPORT_TO_OPTION,
    push_to_hub: Optional[str] = PUSH_TO_HUB_OPTION,
    show_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Train an ORM, PRM or Bradley–Terry reward model.

    Every field of RMTrainConfig can be set; precedence: defaults < --config < the options
    above < --set."""

    overrides = []
    for key, value in (("kind", kind), ("model", model), ("out", out), ("form", form),
                       ("steps", steps), ("data_format", data_format)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    for key, value in (("data", data), ("eval_data", eval_data)):
        if value:
            overrides.append(f"{key}={json.dumps(list(value))}")
    if overwrite:
        overrides.append("overwrite=true")
    overrides += output_overrides(report_to, push_to_hub)
    cfg = load_config(RMTrainConfig, config, overrides + list(set_ or []))
    if show_config:
        return print_config(cfg)
    check_run(cfg)   # out a file, unwritable or holding an input: one line, before any work
    metrics = train_reward_model(cfg)
    if not is_main_process():
        return
    keys = [k for k in metrics if k.startswith("eval/")] + ["rm/final_loss", "rm/steps"]
    console.print(f"[bold]train-rm[/] {cfg.objective} → {cfg.out}")
    for k in keys:
        if k in metrics:
            console.print(f"  {k:<22} {metrics[k]:.4f}")


def score(
    rm: Annotated[str, typer.Option("--model", help="Reward-model directory (from train-rm; with "
                                    "--prm-tag, any causal LM: directory or hub id).")],
    input_path: Annotated[str, typer.Option(
        "--input", help="Solutions JSONL: {question, steps} or {question, response}.")],
    out: Annotated[str, typer.Option(help="Output JSONL: input rows + step_scores and score.")],
    batch_size: Annotated[int, typer.Option(help="Solutions per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "auto",
    aggregation: Annotated[Str, typer.Option(
        help="PRM: product | min | last (default: the model's).")] = None,
    prm_tag: Annotated[Str, typer.Option("--prm-tag", help=PRM_TAG_HELP)] = None,
) -> None:
    """Score solutions with a reward model and write step_scores and score per row."""

    check_outputs(files=[("--out", out)], inputs=[("--input", input_path)])
    read_solution_rows(input_path)  # fail on bad input before importing torch and the model


    spec = None
    if prm_tag is not None:
        spec = tag_spec(prm_tag, rm)
    quiet_transformers()
    model = load_reward_model(rm, device=device, spec=spec)
    if aggregation is not None:
        if aggregation not in AGGREGATIONS:
            raise typer.BadParameter(f"use one of {list(AGGREGATIONS)}",
                                     param_hint="--aggregation")
        model.spec.aggregation = aggregation
    summary = score_file(model, input_path, out, batch_size=batch_size)
    console.print(f"[bold]score[/] {summary['n']} solutions with a {summary['kind']} → {out}")
    for k in ("mean_score", "min_score", "max_score", "mean_steps", "mean_step_score"):
        if k in summary:
            console.print(f"  {k:<16} {summary[k]:.4f}")


def eval_prm(
    prm: Annotated[str, typer.Option("--model", help="PRM directory (from train-rm; with "
                                     "--prm-tag, any causal LM: directory or hub id).")],
    data: Annotated[str, typer.Option(
        "--data", help="ProcessBench-format rows {id, problem, steps, final_answer_correct, "
        "label}: a .jsonl / .json file or a hub id (e.g. Qwen/ProcessBench).")],
    split: Annotated[Str, typer.Option(help="Hub split (ProcessBench: gsm8k | math | "
                                       "olympiadbench | omnimath).")] = None,
    config_name: Annotated[Str, typer.Option("--config-name", help="Hub dataset config.")] = None,
    threshold: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Fixed step threshold (default: chosen on a validation split).")
    ] = None,
    val_fraction: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Rows (seeded) that choose the threshold; the rest are scored.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the validation split.")] = 0,
    limit: Annotated[Optional[int], typer.Option("--num-problems", "-n", min=1,
                                                 help="Use the first N rows.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Solutions per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "auto",
    prm_tag: Annotated[Str, typer.Option("--prm-tag", help=PRM_TAG_HELP)] = None,
    out: Annotated[Str, typer.Option(help="Folder for summary.json and predictions.jsonl.")
                   ] = None,
) -> None:
    """Earliest-error identification (ProcessBench): the first step a PRM scores below the
    threshold against the labelled earliest wrong step; accuracy on erroneous and on correct
    solutions and their harmonic mean (F1)."""

    if out is not None:
        check_outputs(files=[("--out", f"{out}/summary.json"), ("--out", f"{out}/predictions.jsonl")],
                      dirs=[("--out", out)], inputs=[("--data", data)])
    rows = read_processbench(data, split, config_name, limit)  # bad input fails before any model
    if threshold is None and not 0.0 < val_fraction < 1.0:
        raise typer.BadParameter("must lie strictly between 0 and 1", param_hint="--val-fraction")
    if threshold is None and len(rows) < 2:
        raise typer.BadParameter("choosing a threshold needs two rows or more; give --threshold",
                                 param_hint="--threshold")
    spec = tag_spec(prm_tag, prm) if prm_tag is not None else None
    quiet_transformers()
    model = load_reward_model(prm, device=device, spec=spec)
    metrics, preds = evaluate_prm_on_rows(model, rows, threshold, val_fraction, seed, batch_size)
    if out is not None:
        write_json(f"{out}/summary.json", {**metrics, "prm": prm, "data": data, "split": split})
        write_jsonl(f"{out}/predictions.jsonl", preds)
    console.print(f"[bold]eval-prm[/] {prm} on {data}: {int(metrics['eval/n_test'])} solutions")
    for k, v in metrics.items():
        console.print(f"  {k:<34} {v:.4f}")


def ensemble_rm(
    members: Annotated[list[str], typer.Option(
        "--member", help="A reward model (a train-rm folder); repeat for each member.")],
    out: Annotated[str, typer.Option(help=f"Folder for the ensemble ({ENSEMBLE_FILE}).")],
    reduce: Annotated[str, typer.Option(
        help=f"{' | '.join(EnsembleRM.REDUCE)} of the members' scores (PRMs: of each step's).")
    ] = "mean",
) -> None:
    """Make an ensemble of reward models of one kind: `score`, `bon`, `rl` and `eval-prm` take
    its folder as one reward model."""

    check_outputs(files=[("--out", f"{out}/{ENSEMBLE_FILE}")], dirs=[("--out", out)],
                  inputs=[("--member", m) for m in members])
    if reduce not in EnsembleRM.REDUCE:
        raise typer.BadParameter(f"use one of {list(EnsembleRM.REDUCE)}", param_hint="--reduce")
    save_ensemble(out, members, reduce)
    console.print(f"[bold]ensemble-rm[/] {len(members)} reward models ({reduce}) → {out}")


def register(app: typer.Typer) -> None:
    """Add ``train-rm``, ``score``, ``eval-prm`` and ``ensemble-rm`` to the rewardlab app."""
    app.command("train-rm", cls=aliased("train-rm"))(train_rm)
    app.command("ensemble-rm")(ensemble_rm)
    app.command("score", cls=aliased("score"))(score)
    app.command("eval-prm", cls=aliased("eval-prm"))(eval_prm)

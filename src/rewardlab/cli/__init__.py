"""Options shared by the commands that take a typed config (``rl``, ``sft``, ``train-rm``, ``po``)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from rewardlab.config import describe_config


PRINT_CONFIG_OPTION = typer.Option(
    False, "--print-config", help="Print the resolved config (YAML, each field with its help) and exit.")


def print_config(cfg) -> None:
    """The resolved config as :func:`rewardlab.config.describe_config` writes it, to stdout."""
    typer.echo(describe_config(cfg))


REPORT_TO_OPTION = typer.Option(
    None, "--report-to", help="Experiment trackers: tensorboard (default) | wandb | trackio | mlflow "
    "| none, or a comma list (config: report_to; metrics.jsonl is always written).")
PUSH_TO_HUB_OPTION = typer.Option(
    None, "--push-to-hub", metavar="REPO", help="Upload the final model to this Hugging Face Hub "
    "repo (owner/name) when the run finishes; needs HF_TOKEN or `hf auth login` (config: push_to_hub).")


def output_overrides(report_to: Optional[str], push_to_hub: Optional[str], prefix: str = "") -> list[str]:
    """The ``--set``-style overrides of ``--report-to`` and ``--push-to-hub`` (``prefix``: the
    config section they belong to, e.g. ``po.``)."""
    return [f"{prefix}{key}={json.dumps(val)}" for key, val in
            (("report_to", report_to), ("push_to_hub", push_to_hub)) if val is not None]

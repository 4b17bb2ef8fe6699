"""Options shared by the commands that take a typed config (``rl``, ``sft``, ``train-rm``)."""

from __future__ import annotations

import typer

from rewardlab.config import describe_config


PRINT_CONFIG_OPTION = typer.Option(
    False, "--print-config", help="Print the resolved config (YAML, each field with its help) and exit.")


def print_config(cfg) -> None:
    """The resolved config as :func:`rewardlab.config.describe_config` writes it, to stdout."""
    typer.echo(describe_config(cfg))

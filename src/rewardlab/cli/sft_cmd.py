"""``rewardlab sft``: supervised fine-tuning."""

from __future__ import annotations

from typing import Optional

import typer

from rewardlab.cli import (output_overrides, print_config, PRINT_CONFIG_OPTION, PUSH_TO_HUB_OPTION,
                           REPORT_TO_OPTION)
from rewardlab.cli.naming import aliased
from rewardlab.config import load_config
from rewardlab.training.distributed import is_main_process
from rewardlab.training.rundir import check_run
from rewardlab.sft.trainer import SFTConfig, train_sft


def register(app: typer.Typer) -> None:
    @app.command("sft", cls=aliased("sft"))
    def sft(config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (SFTConfig)."),
            set_: list[str] = typer.Option([], "--set", help="Dotted override, e.g. --set lr=1e-3"),
            out: Optional[str] = typer.Option(None, "--out", help="Run directory."),
            model: Optional[str] = typer.Option(None, "--model", help="Hub id, local dir or 'testbed'."),
            dataset: Optional[str] = typer.Option(None, "--dataset", help="testbed | gsm8k | file.jsonl"),
            steps: Optional[int] = typer.Option(None, "--steps", min=1,
                                                help="Optimizer steps (config: steps)."),
            overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in --out and start "
                                           "afresh (else a run there with another config is refused)."),
            report_to: Optional[str] = REPORT_TO_OPTION,
            push_to_hub: Optional[str] = PUSH_TO_HUB_OPTION,
            show_config: bool = PRINT_CONFIG_OPTION) -> None:
        """Fine-tune a policy on problem → reference solution (loss on solution tokens only)."""
        from rich.console import Console


        ov = list(set_)
        for key, val in (("out", out), ("model.name_or_path", model), ("data.dataset", dataset),
                         ("steps", steps)):
            if val is not None:
                ov.append(f"{key}={val}")
        if overwrite:
            ov.append("overwrite=true")
        ov = output_overrides(report_to, push_to_hub) + ov
        cfg = load_config(SFTConfig, config, ov)
        if show_config:
            return print_config(cfg)
        check_run(cfg)   # out a file, unwritable or holding an input: one line, before any work
        res = train_sft(cfg)
        if is_main_process():
            Console().print({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})

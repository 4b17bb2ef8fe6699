"""``rewardlab rl``: PPO / GRPO with success, ORM and refined PRM rewards."""

from __future__ import annotations

from typing import Optional

import typer

from rewardlab.cli import (output_overrides, print_config, PRINT_CONFIG_OPTION, PUSH_TO_HUB_OPTION,
                           REPORT_TO_OPTION)
from rewardlab.config import load_config
from rewardlab.training.distributed import is_main_process
from rewardlab.training.rundir import check_run
from rewardlab.rl.config import RLConfig
from rewardlab.rl.trainer import train_rl


def register(app: typer.Typer) -> None:
    @app.command("rl")
    def rl(config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (RLConfig)."),
           set_: list[str] = typer.Option([], "--set", help="Dotted override, e.g. --set reward.prm.refine=clip"),
           out: Optional[str] = typer.Option(None, "--out", help="Run directory."),
           model: Optional[str] = typer.Option(None, "--model", help="The policy to train: a "
                                               "checkpoint directory or hub id (config: "
                                               "model.name_or_path)."),
           steps: Optional[int] = typer.Option(None, "--steps", min=1,
                                               help="RL steps (config: steps)."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in --out and start afresh "
                                          "(else a run there with another config is refused)."),
           report_to: Optional[str] = REPORT_TO_OPTION,
           push_to_hub: Optional[str] = PUSH_TO_HUB_OPTION,
           show_config: bool = PRINT_CONFIG_OPTION) -> None:
        """Train a policy with RL (see configs/ for the shipped reward designs)."""
        from rich.console import Console
        from rich.table import Table


        ov = [f"{k}={v}" for k, v in (("out", out), ("model.name_or_path", model),
                                      ("steps", steps)) if v is not None]
        ov = ov + output_overrides(report_to, push_to_hub) + list(set_) + (["overwrite=true"] if overwrite else [])
        cfg = load_config(RLConfig, config, ov)
        if show_config:
            return print_config(cfg)
        check_run(cfg)   # out a file, unwritable or holding an input: one line, before any work
        res = train_rl(cfg)   # checks --out before any work, then writes config.yaml there
        t = Table("metric", "value", title=f"rl: {cfg.out}")
        for k in sorted(res):
            if k.startswith(("eval/", "reward/", "hack/", "response/", "kl/", "rl/")):
                t.add_row(k, f"{res[k]:.4f}")
        if is_main_process():
            Console().print(t)

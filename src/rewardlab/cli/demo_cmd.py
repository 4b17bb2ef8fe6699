"""``rewardlab demo``: the paper in miniature on the arithmetic testbed."""

from __future__ import annotations

from typing import Optional

import typer

from rewardlab.cli.naming import aliased
from rewardlab.config import ConfigError, load_config
from rewardlab.demo import (budget_with, check_demo_out, DEFAULT_DESIGNS, DemoConfig, DESIGNS,
                            run_demo)
from rewardlab.eval.report import compact_table
from rewardlab.io import check_output_dir
from rewardlab.rl.config import RLConfig


def register(app: typer.Typer) -> None:
    @app.command("demo", cls=aliased("demo"))
    def demo(out: str = typer.Option("runs/demo", "--out", help="Run directory (stages are cached here)."),
             quick: bool = typer.Option(False, "--quick", help="Tiny budget (~3 min), for smoke tests."),
             seeds: int = typer.Option(3, "--seeds", help="RL seeds per reward design (mean, 95% t-interval, paired differences against success-only)."),
             designs: Optional[str] = typer.Option(None, "--designs", help="Comma-separated designs (default: the paper's seven, " + ", ".join(DEFAULT_DESIGNS) + "; also " + ", ".join(d for d in DESIGNS if d not in DEFAULT_DESIGNS) + ")."),
             alpha: float = typer.Option(2.0, "--alpha", help="PRM weight α (the demo default: docs/demo_sweep.md)."),
             eta: float = typer.Option(0.3, "--eta", help="Clip threshold η (the demo default: docs/demo_sweep.md)."),
             workers: int = typer.Option(2, "--workers", help="RL runs in parallel processes."),
             rl_steps: Optional[int] = typer.Option(None, "--steps", help="RL steps per run (default 30)."),
             budget: Optional[list[str]] = typer.Option(None, "--budget",
                                                        help="Stage size key=value (repeatable; fields of rewardlab.demo.DemoBudget), e.g. rm_steps=2000."),
             rl_set: Optional[list[str]] = typer.Option(None, "--rl-set",
                                                        help="RL config override key=value for every run (repeatable), e.g. lr=5e-5.")) -> None:
        """SFT → reward models → RL with every reward design → report (report.md, results.json, PNGs)."""
        from pathlib import Path

        from rich.console import Console

        if seeds < 1 or seeds > 20:
            raise typer.BadParameter("--seeds must be between 1 and 20")
        if workers < 1 or workers > 64:
            raise typer.BadParameter("--workers must be between 1 and 64")
        try:
            sizes = budget_with(quick, list(budget or []))
        except ValueError as e:
            raise typer.BadParameter(f"--budget: {e}") from None
        cfg = DemoConfig(out=out, budget=sizes, seeds=seeds, prm_alpha=alpha, prm_eta=eta, workers=workers,
                         designs=[d.strip() for d in designs.split(",")] if designs else list(DEFAULT_DESIGNS))
        if rl_steps is not None:
            if rl_steps < 1 or rl_steps > 100_000:
                raise typer.BadParameter("--steps must be between 1 and 100000")
            cfg.budget.rl_steps = rl_steps
        cfg.validate()   # --alpha inf, --eta nan ...: ConfigError naming the field, before any work
        cfg.rl_overrides = list(rl_set or [])
        if cfg.rl_overrides:  # fail before any stage runs, naming the bad override
            try:
                load_config(RLConfig, None, cfg.rl_overrides)
            except ConfigError as e:
                raise typer.BadParameter(f"--rl-set: {e}") from None
        check_output_dir(out)   # a file, or not writable: one line, before any stage runs
        check_demo_out(cfg)     # an --rl-set input in what the demo writes there: likewise
        console = Console()
        results = run_demo(cfg, log=lambda s: console.print(f"[cyan]demo[/] {s}"))
        console.print(compact_table(results))
        console.print(f"Full table, paired differences and plots: {Path(out) / 'report.md'}",
                      soft_wrap=True)

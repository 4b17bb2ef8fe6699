"""``rewardlab po`` (preference optimisation) and ``rewardlab pairs`` (preference data)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rewardlab.cli import (output_overrides, print_config, PRINT_CONFIG_OPTION, PUSH_TO_HUB_OPTION,
                           REPORT_TO_OPTION)
from rewardlab.cli.naming import aliased
from rewardlab.config import load_config
from rewardlab.io import check_outputs
from rewardlab.training.distributed import is_main_process
from rewardlab.training.rundir import check_run
from rewardlab.preference.iterative import IterativePOConfig, PO_DESIGNS, train_po_iterative
from rewardlab.preference.pairs import make_pair_file, PAIR_KINDS
from rewardlab.preference.trainer import POConfig, train_po


def register(app: typer.Typer) -> None:
    @app.command("po", cls=aliased("po"))
    def po(config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (POConfig)."),
           set_: list[str] = typer.Option([], "--set", help="Dotted override, e.g. --set hparams.beta=0.2"),
           loss: Optional[str] = typer.Option(None, "--loss", help="dpo | ipo | kto | orpo | simpo | step_dpo"),
           pairs: Optional[str] = typer.Option(None, "--pairs", help="Training pairs (JSONL)."),
           model: Optional[str] = typer.Option(None, "--model", help="Policy: hub id, directory or 'testbed'."),
           out: Optional[str] = typer.Option(None, "--out", help="Run directory."),
           steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (config: steps)."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in --out and start "
                                          "afresh (else a run there with another config is refused)."),
           report_to: Optional[str] = REPORT_TO_OPTION,
           push_to_hub: Optional[str] = PUSH_TO_HUB_OPTION,
           show_config: bool = PRINT_CONFIG_OPTION) -> None:
        """Preference optimisation (DPO, IPO, KTO, ORPO, SimPO, Step-DPO) on a file of pairs."""
        from rich.console import Console

        ov = list(set_)
        for key, val in (("loss", loss), ("pairs", pairs), ("model.name_or_path", model), ("out", out),
                         ("steps", steps)):
            if val is not None:
                ov.append(f"{key}={val}")
        if overwrite:
            ov.append("overwrite=true")
        ov = output_overrides(report_to, push_to_hub) + ov
        cfg = load_config(POConfig, config, ov)
        if show_config:
            return print_config(cfg)
        check_run(cfg)   # out a file, unwritable or holding an input: one line, before any work
        res = train_po(cfg)
        if is_main_process():
            Console().print({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})

    @app.command("po-iterative")
    def po_iterative(config: Optional[str] = typer.Option(None, "--config", "-c",
                                                          help="YAML config (IterativePOConfig)."),
                     set_: list[str] = typer.Option([], "--set", help="Dotted override, e.g. --set rounds=5"),
                     design: Optional[str] = typer.Option(None, "--design",
                                                          help="Preset: dpo | kto | step_dpo | ipo | orpo | simpo"),
                     out: Optional[str] = typer.Option(None, "--out", help="Run directory."),
                     overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in --out."),
                     report_to: Optional[str] = REPORT_TO_OPTION,
                     push_to_hub: Optional[str] = PUSH_TO_HUB_OPTION,
                     show_config: bool = PRINT_CONFIG_OPTION) -> None:
        """Iterative preference optimisation: rounds of sample → label → pair → train."""
        from rich.console import Console

        ov = []
        if design is not None:
            if design not in PO_DESIGNS:
                raise typer.BadParameter(f"--design must be one of {', '.join(PO_DESIGNS)}")
            ov += PO_DESIGNS[design]
        ov += output_overrides(report_to, push_to_hub) + list(set_) + ([f"out={out}"] if out else []) + (["overwrite=true"] if overwrite else [])
        cfg = load_config(IterativePOConfig, config, ov)
        if show_config:
            return print_config(cfg)
        check_run(cfg)   # out a file, unwritable or holding an input: one line, before any work
        res = train_po_iterative(cfg, on_round=lambda r, m: Console().print(
            f"round {r}: {m['round/n_pairs']} pairs, sample accuracy {m['round/sample_accuracy']:.3f}"))
        Console().print({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})

    @app.command("pairs")
    def pairs_(input_: Path = typer.Option(..., "--input", help="Labelled samples (rewardlab label / score)."),
               out: Path = typer.Option(Path("pairs.jsonl"), "--out", help="Output JSONL."),
               kind: str = typer.Option("outcome", "--kind", help="outcome | step (Step-DPO) | unpaired (KTO)"),
               label: str = typer.Option("outcome", "--label",
                                         help="Correctness of a response: outcome (verifier) | "
                                              "step_labels (all steps right) | score (ORM/PRM)."),
               step_label: str = typer.Option("step_labels", "--step-label",
                                              help="--kind step: step_labels | step_scores (PRM)."),
               threshold: float = typer.Option(0.5, "--threshold", help="Right when the value is > this."),
               max_per_problem: Optional[int] = typer.Option(None, "--max-per-problem", min=1,
                                                             help="At most N pairs per problem (seeded draw)."),
               fmt: str = typer.Option("rewardlab", "--format",
                                       help="rewardlab | trl (prompt/chosen/rejected, prompt/completion/label)."),
               strict: bool = typer.Option(False, "--strict",
                                           help="A problem without a pair is an error (exit 2)."),
               seed: int = typer.Option(0, "--seed")) -> None:
        """Build preference pairs from sampled, labelled responses (chosen = right, rejected = wrong)."""
        from rich.console import Console
        from rich.markup import escape

        if kind not in PAIR_KINDS:
            raise typer.BadParameter(f"--kind must be one of {', '.join(PAIR_KINDS)}, got {kind!r}")
        check_outputs(files=[("--out", out)], inputs=[("--input", input_)])
        s = make_pair_file(input_, out, kind, label, step_label, threshold, max_per_problem, seed, fmt,
                           strict)
        Console().print(f"wrote {s['n_pairs']} {kind} rows from {s['n_rows']} samples of "
                        f"{s['n_problems']} problems ({s['problems_without_pair']} without a pair) "
                        f"to {escape(str(out))}")

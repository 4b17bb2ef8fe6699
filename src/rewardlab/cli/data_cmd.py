"""``rewardlab data show|testbed`` and ``rewardlab grade``: thin commands over library functions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from rewardlab.cli.naming import aliased
from rewardlab.config import ConfigError
from rewardlab.data.datasets import load_dataset_by_name
from rewardlab.data.testbed import generate_problems, TestbedConfig
from rewardlab.grading import STYLES
from rewardlab.grading.predictions import accuracy, default_style, grade_predictions
from rewardlab.io import check_outputs, write_jsonl


console = Console()


def _show(name: str, split: str, n: int, path: Optional[str]) -> None:
    """Print the first ``n`` problems of a dataset as rich panels."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text


    problems = load_dataset_by_name(name, split, path=path, limit=n)
    for p in problems:  # dataset text goes in as Text, never as markup ("[/asy]" in MATH)
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row("question", Text(p.question))
        for k, step in enumerate(p.steps or [], 1):
            table.add_row(f"step {k}", Text(step))
        table.add_row("answer", Text(p.answer, style="bold green"))
        console.print(Panel(table, title=Text(p.id), subtitle=Text(p.source), expand=True))
    console.print(f"{len(problems)} problem(s) from {escape(str(name))} \\[{escape(split)}]")


def _testbed(n: int, out: Path, seed: int, min_ops: Optional[int], max_ops: Optional[int],
             max_operand: Optional[int]) -> None:
    """Generate testbed problems and write them as ``Problem.to_dict()`` rows."""

    check_outputs(files=[("--out", out)])
    knobs = {"min_ops": min_ops, "max_ops": max_ops, "max_operand": max_operand}
    cfg = TestbedConfig(**{k: v for k, v in knobs.items() if v is not None})
    try:
        problems = generate_problems(cfg, n, seed)
    except ValueError as e:  # impossible knobs: main() prints ConfigError and exits 2
        raise ConfigError(str(e)) from None
    write_jsonl(out, (p.to_dict() for p in problems))
    console.print(f"wrote {len(problems)} testbed problems to {escape(str(out))}")


def _grade(dataset: str, predictions: Path, split: str, out: Optional[Path],
           pred_field: Optional[str],
           style: Optional[str], path: Optional[str]) -> None:
    """Grade a predictions file, print accuracy, write per-row results atomically."""

    style = style or default_style(dataset)
    if style not in STYLES:
        raise ConfigError(f"--style must be one of {STYLES}, got {style!r}")
    out = out or predictions.with_name(predictions.name.removesuffix(".jsonl") + ".graded.jsonl")
    check_outputs(files=[("--out", out)],
                  inputs=[("--predictions", predictions), ("--path", path), ("--dataset", dataset)])
    problems = load_dataset_by_name(dataset, split, path=path)
    results = grade_predictions(problems, predictions, style=style, pred_field=pred_field)
    write_jsonl(out, results)
    n_ok = sum(r["correct"] for r in results)
    console.print(f"accuracy: {accuracy(results):.4f} ({n_ok}/{len(results)})  "
                  f"results: {escape(str(out))}")


def register(app: typer.Typer) -> None:
    """Add the ``data`` sub-command group and the top-level ``grade`` command to ``app``."""
    data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets and generate the testbed.")

    @data_app.command("show", cls=aliased("data show"))
    def show(name: str = typer.Argument(..., help="gsm8k | math500 | testbed | file.jsonl | hub id"),
             split: str = typer.Option("test", "--split", help="Dataset split."),
             n: int = typer.Option(3, "--num-problems", "-n", min=0,
                                   help="Number of problems to show."),
             path: Optional[str] = typer.Option(None, "--path", help="Explicit file or hub id.")
             ) -> None:
        """Show the first problems of a dataset: id, question, steps, answer."""
        _show(name, split, n, path)

    @data_app.command("testbed", cls=aliased("data testbed"))
    def testbed(n: int = typer.Option(1000, "--num-problems", "-n", min=0,
                                      help="Number of problems."),
                out: Path = typer.Option(Path("problems.jsonl"), "--out", help="Output JSONL."),
                seed: int = typer.Option(0, "--seed", help="Random seed."),
                min_ops: Optional[int] = typer.Option(None, "--min-ops",
                                                      help="Fewest arithmetic operations."),
                max_ops: Optional[int] = typer.Option(None, "--max-ops",
                                                      help="Most arithmetic operations."),
                max_operand: Optional[int] = typer.Option(None, "--max-operand",
                                                          help="Largest operand of + and -.")) -> None:
        """Generate arithmetic testbed problems (rows are Problem.to_dict())."""
        _testbed(n, out, seed, min_ops, max_ops, max_operand)

    app.add_typer(data_app, name="data")

    @app.command("grade")
    def grade(dataset: str = typer.Option("gsm8k", "--dataset",
                                          help="gsm8k | math500 | testbed | file.jsonl | hub id"),
              predictions: Path = typer.Option(..., "--predictions",
                                               help="JSONL rows with 'id' and 'prediction', 'response' "
                                                    "(eval's predictions.jsonl) or 'answer'."),
              split: str = typer.Option("test", "--split", help="Dataset split."),
              out: Optional[Path] = typer.Option(
                  None, "--out", help="Per-row results (default <predictions>.graded.jsonl)."),
              pred_field: Optional[str] = typer.Option(
                  None, "--pred-field", help="Field holding the full response text (default: "
                  "'prediction', else 'response' as in `rewardlab eval`'s predictions.jsonl)."),
              style: Optional[str] = typer.Option(None, "--style",
                                                  help="gsm8k | math (default: from the dataset)."),
              path: Optional[str] = typer.Option(None, "--path", help="Explicit dataset file.")) -> None:
        """Grade predictions against a dataset's gold answers and print the accuracy."""
        _grade(dataset, predictions, split, out, pred_field, style, path)

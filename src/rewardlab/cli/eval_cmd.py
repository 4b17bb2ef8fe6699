"""``rewardlab eval``: greedy accuracy, maj@k, pass@k and testbed diagnostics of a policy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from rewardlab.cli.naming import aliased
from rewardlab.data.config import DataConfig, make_prompt_fn
from rewardlab.data.datasets import load_dataset_by_name
from rewardlab.data.prompts import check_prompt_settings
from rewardlab.eval.evaluate import evaluate_policy
from rewardlab.grading import STYLES
from rewardlab.grading.predictions import default_style
from rewardlab.io import check_outputs, DataError, write_json, write_jsonl
from rewardlab.models.loading import check_model_path, load_model_and_tokenizer
from rewardlab.models.sampling import check_sample_count
from rewardlab.training.engine import quiet_transformers
from rewardlab.reward_models.models import lm_prm_spec


console = Console()


def infer_style(dataset: str, style: Optional[str] = None) -> str:
    """The answer style: ``--style`` when given, else math for MATH-like datasets, else gsm8k."""

    style = style or default_style(dataset)
    if style not in STYLES:
        raise typer.BadParameter(f"--style must be one of {STYLES}, got {style!r}")
    return style


def load_problems(dataset: str, split: str, data: Optional[str], limit: Optional[int]):
    """Problems of ``dataset`` (``--data`` is the file of a testbed or custom dataset)."""

    problems = load_dataset_by_name(dataset, split, path=data, limit=limit)
    if not problems:
        raise DataError(data or dataset, "no problems to evaluate")
    return problems


def check_model_ref(ref: str) -> None:
    """A model reference must be an existing directory or look like a hub id (``org/name``)."""
    check_model_path(ref)


def load_policy(model: str, device: str = "auto", dtype: str = "auto",
                trust_remote_code: bool = False):
    """``(model, tokenizer)``; a directory or hub id that cannot be loaded is bad input."""

    quiet_transformers()   # no weight-loading bars around a one-line error
    return load_model_and_tokenizer(model, dtype, device, trust_remote_code)   # DataError if bad


# the prompt options of eval, sample, label and bon (the same meaning as data.prompt_template,
# data.chat and data.system_prompt in the SFT and RL configs)
PROMPT_TEMPLATE_OPTION = typer.Option(None, "--prompt-template",
                                      help="Prompt with {question} (default: question + newline).")
CHAT_OPTION = typer.Option(False, "--chat", help="Wrap questions in the tokenizer's chat template.")
SYSTEM_OPTION = typer.Option(None, "--system", help="With --chat: a system message.")
PRM_TAG_HELP = ("Read the PRM as a plain causal LM with this step tag after every step, scoring "
                "P('+') against P('-') at each tag (Math-Shepherd: ' ки'); it may then be a hub id.")
PRM_TAG_OPTION = typer.Option(None, "--prm-tag", help=PRM_TAG_HELP)
NUM_PROBLEMS_OPTION = typer.Option(None, "--num-problems", "-n", min=1,
                                   help="Use the first N problems (default: all).")


def tag_spec(tag: str, model_ref: str):
    """``--prm-tag``: the LM-head PRM spec for ``model_ref`` (a directory or hub id), or exit 2
    for a bad tag or a model reference that is neither."""
    try:
        spec = lm_prm_spec(tag)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--prm-tag") from None
    check_model_ref(model_ref)
    return spec


def prompt_function(tokenizer, template: Optional[str], chat: bool, system: Optional[str] = None):
    """The prompt function for ``--prompt-template`` / ``--chat`` / ``--system`` (default:
    ``question + "\\n"``); a literal ``\\n`` in the template is a newline."""

    data = DataConfig(prompt_template=template.replace("\\n", "\n") if template else None,
                      chat=chat, system_prompt=system)
    try:
        check_prompt_settings(data.prompt_template, chat, system,
                              names=("--prompt-template", "--chat", "--system"))
        return make_prompt_fn(data, tokenizer)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def check_sampling_options(temperature: float, top_p: float = 1.0, sampling: bool = True) -> None:
    """``--temperature`` finite (and > 0 when ``sampling``), ``--top-p`` in (0, 1]: else exit 2
    naming the option (nan passes typer's range checks, so they are repeated here)."""
    if not math.isfinite(temperature) or (sampling and temperature <= 0):
        raise typer.BadParameter(f"must be a finite number{' > 0 to sample' if sampling else ''}, "
                                 f"got {temperature}", param_hint="--temperature")
    if not 0 < top_p <= 1:   # false for nan too
        raise typer.BadParameter(f"must lie in (0, 1], got {top_p}", param_hint="--top-p")


def default_max_new_tokens(dataset: str) -> int:
    """48 tokens for the testbed, 512 for natural-language datasets."""
    return 48 if dataset == "testbed" else 512


def summary_table(summary: dict, title: str):
    from rich.table import Table

    t = Table("metric", "value", title=title)
    for k, v in summary.items():
        t.add_row(escape(k), f"{v:.4f}" if isinstance(v, float) else escape(str(v)))
    return t


def register(app: typer.Typer) -> None:
    @app.command("eval", cls=aliased("eval"))
    def eval_(model: str = typer.Option(..., "--model", help="Policy directory or hub id."),
              dataset: str = typer.Option("testbed", "--dataset",
                                          help="testbed | gsm8k | math500 | file.jsonl | hub id"),
              split: str = typer.Option("test", "--split", help="Dataset split."),
              data: Optional[str] = typer.Option(None, "--data",
                                                 help="Problems file (testbed: problems.jsonl)."),
              limit: Optional[int] = NUM_PROBLEMS_OPTION,
              k: int = typer.Option(0, "--samples", min=0,
                                    help="Samples per problem for maj@k / pass@k (0: greedy only)."),
              temperature: float = typer.Option(1.0, "--temperature", min=0.0,
                                                help="Sampling temperature for the k samples."),
              top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus mass."),
              max_new_tokens: Optional[int] = typer.Option(
                  None, "--max-new-tokens", min=1, help="Longest response (testbed 48, else 512)."),
              batch_size: int = typer.Option(256, "--batch-size", min=1, help="Generation batch."),
              seed: int = typer.Option(0, "--seed", help="Sampling seed."),
              style: Optional[str] = typer.Option(None, "--style", help="gsm8k | math (default: "
                                                  "math for math500, else gsm8k)."),
              prompt_template: Optional[str] = PROMPT_TEMPLATE_OPTION,
              chat: bool = CHAT_OPTION,
              system: Optional[str] = SYSTEM_OPTION,
              device: str = typer.Option("auto", "--device", help="cpu | cuda | auto."),
              dtype: str = typer.Option("auto", "--dtype", help="float32 | bfloat16 | auto."),
              trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
              out: Path = typer.Option(Path("runs/eval"), "--out",
                                       help="Folder for predictions.jsonl and summary.json.")) -> None:
        """Evaluate a policy: greedy accuracy, maj@k, pass@1..k, testbed diagnostics."""

        style = infer_style(dataset, style)
        if k > 0 and temperature <= 0:
            raise typer.BadParameter("--samples > 0 needs --temperature > 0")
        check_sampling_options(temperature, top_p, sampling=k > 0)
        check_outputs(files=[("--out", out / "predictions.jsonl"), ("--out", out / "summary.json")],
                      dirs=[("--out", out)], inputs=[("--data", data), ("--dataset", dataset)])
        problems = load_problems(dataset, split, data, limit)
        check_sample_count(len(problems), max(k, 1), max_new_tokens or default_max_new_tokens(dataset))
        policy, tok = load_policy(model, device, dtype, trust_remote_code)
        summary, rows = evaluate_policy(
            policy, tok, problems, style=style, greedy=True, k=k, temperature=temperature,
            top_p=top_p, max_new_tokens=max_new_tokens or default_max_new_tokens(dataset),
            batch_size=batch_size, seed=seed,
            prompt_fn=prompt_function(tok, prompt_template, chat, system))
        write_jsonl(out / "predictions.jsonl", rows)
        write_json(out / "summary.json", {**summary, "model": model, "dataset": dataset,
                                          "split": split, "seed": seed})
        console.print(summary_table(summary, f"eval: {model} on {dataset}"))
        console.print(f"wrote {escape(str(out / 'predictions.jsonl'))} and summary.json")

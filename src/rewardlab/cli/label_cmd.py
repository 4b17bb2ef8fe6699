"""``rewardlab sample | label | bon``: reward-model data and best-of-N evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from rewardlab.cli.eval_cmd import (CHAT_OPTION, check_model_ref, check_sampling_options, default_max_new_tokens,
                                    infer_style, load_policy, load_problems,
                                    NUM_PROBLEMS_OPTION, PRM_TAG_OPTION,
                                    prompt_function, PROMPT_TEMPLATE_OPTION, SYSTEM_OPTION,
                                    tag_spec)
from rewardlab.cli.naming import aliased
from rewardlab.data.formats import has_soft_labels, to_trl_preference, to_trl_stepwise
from rewardlab.eval.bon import bon_table, run_bon
from rewardlab.io import check_outputs, DataError, write_jsonl
from rewardlab.models.loading import load_tokenizer
from rewardlab.models.sampling import check_sample_count, SamplingConfig
from rewardlab.reward_models.labeling import get_labeler
from rewardlab.reward_models.models import saved_reward_model_dir
from rewardlab.reward_models.pipeline import (label_rows, make_pairs, make_step_pairs,
                                              read_samples, sample_responses)


console = Console()

METHODS = ("oracle", "mc", "judge")
OUT_FORMATS = ("rewardlab", "trl")


def step_split_for(style: str) -> str:
    """Steps are lines (GSM8K, testbed) or blank-line-separated paragraphs (MATH)."""
    return "blank" if style == "math" else "lines"


def _sample(model: str, dataset: str, split: str, data: Optional[str], limit: Optional[int],
            n: int, temperature: float, max_new_tokens: Optional[int], seed: int, style: str,
            device: str, prompt: tuple = (None, False, None)):
    """Sample and grade ``n`` responses per problem; returns ``(rows, policy, tokenizer)``.
    ``prompt``: (--prompt-template, --chat, --system)."""

    check_sampling_options(temperature)
    problems = load_problems(dataset, split, data, limit)
    check_sample_count(len(problems), n, max_new_tokens or default_max_new_tokens(dataset))
    policy, tok = load_policy(model, device)
    prompt_fn = prompt_function(tok, *prompt)
    cfg = SamplingConfig(n=n, temperature=temperature,
                         max_new_tokens=max_new_tokens or default_max_new_tokens(dataset))
    rows = sample_responses(policy, tok, problems, n, cfg, seed=seed, style=style,
                            prompt_fn=prompt_fn, step_split=step_split_for(style))
    return rows, policy, tok


def _make_labeler(method: str, policy, tok, judge_model: Optional[str], mc_n: int, soft: bool,
                  style: str, max_new_tokens: int, temperature: float, seed: int,
                  judge_yes: str, judge_no: str, judge_chat: bool, device: str,
                  prompt: tuple = (None, False, None)):

    kwargs: dict = {}
    if method == "mc":
        if policy is None:
            raise typer.BadParameter("--method mc needs --model (the policy that completes prefixes)")
        kwargs = dict(model=policy, tokenizer=tok, n=mc_n, soft=soft, style=style,
                      max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                      prompt_fn=prompt_function(tok, *prompt))  # completions in the policy's prompt
    elif method == "judge":
        if judge_model is None and policy is None:
            raise typer.BadParameter("--method judge needs --judge-model (or --model)")
        jm, jt = load_policy(judge_model, device) if judge_model else (policy, tok)
        kwargs = dict(model=jm, tokenizer=jt, yes_token=judge_yes, no_token=judge_no,
                      chat=judge_chat)
    try:
        return get_labeler(method, **kwargs)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def register(app: typer.Typer) -> None:
    @app.command("sample", cls=aliased("sample"))
    def sample(model: str = typer.Option(..., "--model", help="Policy directory or hub id."),
               dataset: str = typer.Option("testbed", "--dataset",
                                           help="testbed | gsm8k | math500 | file.jsonl | hub id"),
               split: str = typer.Option("train", "--split", help="Dataset split."),
               data: Optional[str] = typer.Option(None, "--data", help="Problems file (testbed)."),
               limit: Optional[int] = NUM_PROBLEMS_OPTION,
               n: int = typer.Option(4, "--samples", min=1, help="Samples per problem."),
               temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
               max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1,
                                                            help="Longest response."),
               seed: int = typer.Option(0, "--seed", help="Sampling seed."),
               style: Optional[str] = typer.Option(None, "--style", help="gsm8k | math."),
               prompt_template: Optional[str] = PROMPT_TEMPLATE_OPTION,
               chat: bool = CHAT_OPTION,
               system: Optional[str] = SYSTEM_OPTION,
               device: str = typer.Option("auto", "--device", help="cpu | cuda | auto."),
               out: Path = typer.Option(Path("samples.jsonl"), "--out", help="Output JSONL.")) -> None:
        """Sample responses from a policy, split into steps and graded (no step labels)."""

        style = infer_style(dataset, style)
        check_outputs(files=[("--out", out)], inputs=[("--data", data), ("--dataset", dataset)])
        rows, _, _ = _sample(model, dataset, split, data, limit, n, temperature, max_new_tokens,
                             seed, style, device, (prompt_template, chat, system))
        write_jsonl(out, rows)
        acc = sum(r["outcome"] for r in rows) / max(len(rows), 1)
        console.print(f"wrote {len(rows)} samples ({acc:.3f} correct) to {escape(str(out))}")

    @app.command("label", cls=aliased("label"))
    def label(method: str = typer.Option("oracle", "--method", help="oracle | mc | judge"),
              input_: Optional[Path] = typer.Option(None, "--input",
                                                    help="Samples JSONL (from `rewardlab sample`)."),
              model: Optional[str] = typer.Option(None, "--model",
                                                  help="Policy: samples first when no --input; "
                                                       "completes prefixes for --method mc."),
              dataset: str = typer.Option("testbed", "--dataset", help="Dataset to sample from."),
              split: str = typer.Option("train", "--split", help="Dataset split."),
              data: Optional[str] = typer.Option(None, "--data", help="Problems file (testbed)."),
              limit: Optional[int] = NUM_PROBLEMS_OPTION,
              n: int = typer.Option(4, "--samples", min=1,
                                    help="Samples per problem (when sampling)."),
              temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
              max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1,
                                                           help="Longest response / completion."),
              seed: int = typer.Option(0, "--seed", help="Sampling seed."),
              style: Optional[str] = typer.Option(None, "--style", help="gsm8k | math."),
              mc_n: int = typer.Option(8, "--mc-n", min=1, help="MC completions per prefix."),
              soft: bool = typer.Option(False, "--soft", help="MC: fraction correct, not any()."),
              judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Judge LLM."),
              judge_yes: str = typer.Option(" Yes", "--judge-yes", help="Judge's 'correct' token."),
              judge_no: str = typer.Option(" No", "--judge-no", help="Judge's 'wrong' token."),
              judge_chat: bool = typer.Option(False, "--judge-chat", help="Use the chat template."),
              prompt_template: Optional[str] = PROMPT_TEMPLATE_OPTION,
              chat: bool = CHAT_OPTION,
              system: Optional[str] = SYSTEM_OPTION,
              device: str = typer.Option("auto", "--device", help="cpu | cuda | auto."),
              out: Path = typer.Option(Path("rm.jsonl"), "--out", help="Labelled rows (JSONL)."),
              pairs: Optional[Path] = typer.Option(None, "--pairs", help="Also write BT pairs."),
              step_pairs: Optional[Path] = typer.Option(None, "--step-pairs",
                                                        help="Also write step-preference pairs."),
              out_format: str = typer.Option(
                  "rewardlab", "--format", help="Output rows: rewardlab | trl (TRL's stepwise "
                  "supervision {prompt, completions, labels}; --pairs as TRL preference "
                  "{prompt, chosen, rejected}).")
              ) -> None:
        """Label the steps of sampled responses (oracle | Monte-Carlo | LLM judge)."""

        style = infer_style(dataset, style)
        if method not in METHODS:
            raise typer.BadParameter(f"--method must be one of {METHODS}, got {method!r}")
        if out_format not in OUT_FORMATS:
            raise typer.BadParameter(f"must be one of {OUT_FORMATS}, got {out_format!r}",
                                     param_hint="--format")
        if out_format == "trl" and step_pairs is not None:
            raise typer.BadParameter("TRL has no step-preference format; write --step-pairs "
                                     "with --format rewardlab", param_hint="--format")
        trl = out_format == "trl"
        check_outputs(files=[("--out", out), ("--pairs", pairs), ("--step-pairs", step_pairs)],
                      inputs=[("--input", input_), ("--data", data), ("--dataset", dataset)])
        policy = tok = None
        if input_ is not None:
            rows = read_samples(input_)
        elif model is not None:
            rows, policy, tok = _sample(model, dataset, split, data, limit, n, temperature,
                                        max_new_tokens, seed, style, device,
                                        (prompt_template, chat, system))
        else:
            raise typer.BadParameter("give --input samples.jsonl, or --model to sample first")
        needs_policy = method == "mc" or (method == "judge" and judge_model is None)
        if policy is None and model is not None and needs_policy:
            policy, tok = load_policy(model, device)
        labeler = _make_labeler(method, policy, tok, judge_model, mc_n, soft, style,
                                max_new_tokens or default_max_new_tokens(dataset), temperature,
                                seed, judge_yes, judge_no, judge_chat, device,
                                (prompt_template, chat, system))
        rows = label_rows(rows, labeler)
        write_jsonl(out, [to_trl_stepwise(r) for r in rows] if trl else rows)
        msg = f"wrote {len(rows)} labelled rows to {escape(str(out))}"
        if trl and has_soft_labels(rows):
            msg += " (soft labels written as probabilities; TRL's PRMTrainer expects booleans)"
        if pairs is not None:
            bt = make_pairs(rows)
            write_jsonl(pairs, [to_trl_preference(r) for r in bt] if trl else bt)
            msg += f", {len(bt)} BT pairs to {escape(str(pairs))}"
        if step_pairs is not None:
            sp = make_step_pairs(rows)
            write_jsonl(step_pairs, sp)
            msg += f", {len(sp)} step pairs to {escape(str(step_pairs))}"
        console.print(msg)

    @app.command("bon", cls=aliased("bon"))
    def bon(policy: str = typer.Option(..., "--model", help="Policy directory or hub id."),
            orm: Optional[str] = typer.Option(None, "--orm", help="ORM directory."),
            prm: Optional[str] = typer.Option(None, "--prm", help="PRM directory (with --prm-tag: "
                                              "any causal LM, directory or hub id)."),
            prm_tag: Optional[str] = PRM_TAG_OPTION,
            bt: Optional[str] = typer.Option(None, "--bt", help="Bradley–Terry RM directory."),
            dataset: str = typer.Option("testbed", "--dataset",
                                        help="testbed | gsm8k | math500 | file.jsonl | hub id"),
            split: str = typer.Option("test", "--split", help="Dataset split."),
            data: Optional[str] = typer.Option(None, "--data", help="Problems file (testbed)."),
            limit: Optional[int] = typer.Option(100, "--num-problems", "-n", min=1,
                                                help="Use the first N problems."),
            max_n: int = typer.Option(64, "--samples", min=1,
                                      help="Samples per problem (the largest N)."),
            n_trials: int = typer.Option(16, "--n-trials", min=1, help="Random subsets per N."),
            temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
            max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1,
                                                         help="Longest response."),
            seed: int = typer.Option(0, "--seed", help="Sampling / subset seed."),
            style: Optional[str] = typer.Option(None, "--style", help="gsm8k | math."),
            prompt_template: Optional[str] = PROMPT_TEMPLATE_OPTION,
            chat: bool = CHAT_OPTION,
            system: Optional[str] = SYSTEM_OPTION,
            device: str = typer.Option("auto", "--device", help="cpu | cuda | auto."),
            out: Path = typer.Option(Path("runs/bon"), "--out", help="Folder for bon.json/png.")
            ) -> None:
        """Best-of-N accuracy of each reward model against majority vote and random choice."""

        style = infer_style(dataset, style)
        check_sampling_options(temperature)
        check_outputs(files=[("--out", out / n) for n in ("bon.json", "bon.png", "samples.jsonl")],
                      dirs=[("--out", out)], inputs=[("--data", data), ("--dataset", dataset)])
        rm_paths = {k: v for k, v in (("orm", orm), ("prm", prm), ("bt", bt)) if v}
        rm_specs = {}
        if prm_tag is not None:
            if not prm:
                raise typer.BadParameter("--prm-tag needs --prm")
            rm_specs["prm"] = tag_spec(prm_tag, prm)
        for name, p in rm_paths.items():
            if name not in rm_specs:
                saved_reward_model_dir(p)   # a saved reward model, checked before any sampling
        check_model_ref(policy)
        try:  # the policy's tokenizer decides the prompt's chat template and BOS token
            tok = load_tokenizer(policy)
        except (OSError, ValueError) as e:   # no tokenizer files, unknown hub id (offline)
            raise DataError(policy, f"cannot load the tokenizer: {str(e).splitlines()[0]}") from None
        prompt_fn = prompt_function(tok, prompt_template, chat, system)
        problems = load_problems(dataset, split, data, limit)
        res = run_bon(policy, problems, rm_paths, max_n=max_n, style=style, prompt_fn=prompt_fn,
                      temperature=temperature,
                      max_new_tokens=max_new_tokens or default_max_new_tokens(dataset), seed=seed,
                      n_trials=n_trials, out=out, device=device, step_split=step_split_for(style),
                      rm_specs=rm_specs)
        console.print(bon_table(res["table"]))
        for k, a in res["auroc"].items():
            console.print(f"{k}: AUROC within a problem {a['within_problem_auroc']:.3f} "
                          f"(pooled over problems {a['pooled_auroc']:.3f})")
        console.print(f"wrote {escape(str(out / 'bon.json'))} and bon.png")

"""Scaling on the CPU: data parallelism over processes, and the memory LoRA saves.

Two measurements, each printed as a ratio from one run of this script (absolute times and sizes
depend on the machine and its load; compare only the ratios):

1. **Processes against threads.** The testbed RL step (GRPO, ``--prompts`` × ``--n`` responses
   per step, the same global batch either way) run as

   - ``rewardlab rl ...`` in one process with 2 torch threads (``OMP_NUM_THREADS=2``), and
   - ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m rewardlab rl ...``: two
     processes with one thread each, each sampling and updating on half the prompts, gradients
     summed over the two (:mod:`rewardlab.training.distributed`).

   The policy comes from a short ``rewardlab sft --model testbed`` run made first (``--sft-steps``;
   it teaches the answer format so that responses end, as in a real run). The per-step wall time
   is read from each run's ``metrics.jsonl`` (its ``time`` column, seconds since the loop
   started): the differences between consecutive steps, leaving out the first ``--warmup`` steps
   and the last one (which also runs the final held-out evaluation), so start-up is not counted.
   With ``--repeats`` > 1 the two settings alternate (A B A B …) so that both see the same load.

2. **LoRA against full fine-tuning: peak memory of RL steps on a Hugging Face model.** A tiny
   Qwen2 (random init, hidden 256, 4 layers, GQA, the testbed tokenizer's vocabulary) is built and
   saved here; a child process per setting imports everything, records its resident-set high-water
   mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), then builds the RL trainer (full: policy +
   a second reference copy + AdamW state for every weight; LoRA r = ``--lora-r``: one network, the
   reference is its adapter switched off, AdamW state for the adapter only) and runs
   ``--mem-steps`` GRPO steps (rollout, reference pass, update). Reported: the growth of the
   high-water mark over the baseline (what the model, trainer and steps added), and the whole
   peak. Two threads each.

Run: ``python benchmarks/scale.py [--sft-steps 60] [--rl-steps 7] [--prompts 32] [--n 4]``
(about 3 minutes on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # idle OpenMP threads sleep (see rl_step.py)

ROOT = Path(__file__).resolve().parents[1]


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run(cmd: list[str], threads: int) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=_env(threads), cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def step_times(run_dir: Path, warmup: int) -> list[float]:
    """Wall seconds of each RL step from ``metrics.jsonl``, without the first ``warmup`` steps and
    the last one (which includes the final evaluation)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    t = {r["step"]: r["time"] for r in rows if r.get("step", 0) >= 1}
    steps = sorted(t)
    return [t[s] - t[s - 1] for s in steps[:-1] if s - 1 in t and s > warmup]


def data_parallel(args, work: Path) -> dict:
    py = sys.executable
    sft = work / "sft"
    _run([py, "-m", "rewardlab", "sft", "--model", "testbed", "--out", str(sft), "--steps",
          str(args.sft_steps), "--set", "progress=false", "--set", "eval_every=0",
          "--set", f"save_every={args.sft_steps}"], threads=2)
    small_test = work / "test_small.jsonl"   # the final evaluation is not what is measured
    small_test.write_text("".join((sft / "test.jsonl").read_text().splitlines(keepends=True)[:8]))
    common = ["--set", f"model.name_or_path={sft / 'final'}", "--set", "model.device=cpu",
              "--set", "model.dtype=float32", "--set", f"data.train_path={sft / 'train.jsonl'}",
              "--set", f"data.test_path={small_test}", "--set", "algo=grpo",
              "--set", "kl.in_reward=false", "--set", "kl.estimator=k3",
              "--set", f"prompts_per_step={args.prompts}", "--set", f"sampling.n={args.n}",
              "--set", f"minibatch_size={args.prompts * args.n}", "--set", f"steps={args.rl_steps}",
              "--set", "eval_every=0", "--set", "eval_k=0", "--set", "save_every=0",
              "--set", "progress=false", "--set", "resume=false", "--set", f"seed={args.seed}"]
    times: dict[str, list[float]] = {"1x2": [], "2x1": []}
    for rep in range(args.repeats):
        for setting in ("1x2", "2x1"):
            out = work / f"rl_{setting}_{rep}"
            if setting == "1x2":
                cmd = [py, "-m", "rewardlab", "rl", "--out", str(out), *common]
                _run(cmd, threads=2)
            else:
                cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       "-m", "rewardlab", "rl", "--out", str(out), *common]
                _run(cmd, threads=1)
            ts = step_times(out, args.warmup)
            print(f"  {setting} run {rep}: {', '.join(f'{x:.2f}' for x in ts)} s per step")
            times[setting] += ts
    m1, m2 = statistics.fmean(times["1x2"]), statistics.fmean(times["2x1"])
    return {"1x2_s": m1, "2x1_s": m2, "ratio": m2 / m1}


def make_qwen2(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rewardlab.data.testbed import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux, bytes on macOS
    return r / 1024 / (1024 if sys.platform == "darwin" else 1)


def memory_child(a) -> None:
    """One setting of measurement 2, in its own process: prints one JSON line."""
    import torch

    from rewardlab.config import load_config
    from rewardlab.rl.config import RLConfig
    from rewardlab.rl.trainer import RLTrainer

    torch.set_num_threads(2)
    B = a.prompts * a.n
    cfg = load_config(RLConfig, None, [
        f"out={a.out}", f"model.name_or_path={a.model}", "model.dtype=float32", "model.device=cpu",
        f"data.train_path={a.train}", f"data.test_path={a.train}", "algo=grpo",
        "kl.in_reward=false", "kl.estimator=k3", f"prompts_per_step={a.prompts}", f"sampling.n={a.n}",
        f"sampling.max_new_tokens={a.max_new_tokens}", f"minibatch_size={B}", "steps=100",
        "eval_every=0", "eval_k=0", "save_every=0", "progress=false", "resume=false", "lr=1e-3",
        "entropy_coef=0.01", "engine=hf", "sampling.engine=hf",   # the same passes for both
        f"model.lora.r={a.lora_r if a.mode == 'lora' else 0}",
        f"micro_batch_size={int(a.micro) or 'null'}"])
    base = _maxrss_mib()
    tr = RLTrainer(cfg)
    marks = {"built": _maxrss_mib()}   # the high-water mark after each phase (it only grows)
    trainable = sum(p.numel() for g in tr.opt.param_groups for p in g["params"])
    total = sum(p.numel() for p in tr.policy.parameters())
    t0 = time.perf_counter()
    for step in range(a.mem_steps):
        problems, batch = tr.rollout(step)
        marks[f"rollout{step}"] = _maxrss_mib()
        sb = tr.score(problems, batch)
        marks[f"score{step}"] = _maxrss_mib()
        sb.metrics["_step"] = step
        tr.update(sb)
        marks[f"update{step}"] = _maxrss_mib()
    print(json.dumps({"base_mib": base, "peak_mib": _maxrss_mib(), "trainable": trainable,
                      "params": total, "step_s": (time.perf_counter() - t0) / a.mem_steps,
                      "marks": {k: v - base for k, v in marks.items()}}))


def lora_memory(args, work: Path, micro: int) -> dict:
    model = work / "qwen2"
    if not model.exists():
        make_qwen2(model)
    train = work / "sft" / "train.jsonl"
    res = {}
    for mode in ("full", "lora"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-mem", mode, "--model", str(model),
               "--train", str(train), "--out", str(work / f"mem_{mode}_{micro}"), "--prompts",
               str(args.prompts), "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
               "--mem-steps", str(args.mem_steps), "--lora-r", str(args.lora_r), "--micro", str(micro)]
        r = subprocess.run(cmd, env=_env(2), cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"memory child {mode} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        res[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft-steps", type=int, default=60)
    ap.add_argument("--rl-steps", type=int, default=7, help="RL steps per run (first --warmup and last untimed).")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="Alternating runs of each setting.")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--micro", default="0,8", help="micro_batch_size settings of measurement 2 "
                    "(0: the whole minibatch in one pass), comma-separated.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="Work directory to keep (default: a temporary one).")
    ap.add_argument("--skip-dp", action="store_true", help="Only measurement 2.")
    ap.add_argument("--skip-mem", action="store_true", help="Only measurement 1.")
    ap.add_argument("--child-mem", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--train", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_mem:
        args.mode = args.child_mem
        memory_child(args)
        return {}

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="rewardlab_scale_")
    work = Path(args.keep or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cores: {os.cpu_count()}, load average at start: {load:.2f}")
    out: dict = {}
    if not args.skip_dp:
        print(f"1. testbed GRPO step, {args.prompts} prompts x {args.n} samples (global batch), "
              f"policy after {args.sft_steps} SFT steps")
        dp = data_parallel(args, work)
        out["dp"] = dp
        print(f"   1 process x 2 threads: {dp['1x2_s']:.3f} s/step;  2 processes x 1 thread: "
              f"{dp['2x1_s']:.3f} s/step")
        print(f"   ratio (2 processes x 1 thread) / (1 process x 2 threads) = {dp['ratio']:.2f}x")
    elif not (work / "sft" / "train.jsonl").exists():   # measurement 2 needs only the problems
        sft = work / "sft"
        _run([sys.executable, "-m", "rewardlab", "sft", "--model", "testbed", "--out", str(sft),
              "--steps", "1", "--set", "progress=false", "--set", "eval_every=0"], threads=2)
    if args.skip_mem:
        args.micro = ""
    else:
        print(f"2. peak RSS of {args.mem_steps} GRPO steps, tiny Qwen2 (hidden 256, 4 layers), "
              f"{args.prompts} x {args.n} rows, <= {args.max_new_tokens} tokens, engine=hf, LoRA r={args.lora_r} all-linear")
    out["mem"] = {}
    for micro in [int(x) for x in args.micro.split(",") if x.strip()]:
        mem = lora_memory(args, work, micro)
        out["mem"][micro] = mem
        print(f"   micro_batch_size={micro or 'whole minibatch'}:")
        for mode, m in mem.items():
            print(f"     {mode:4s}: trainable {m['trainable']:,} of {m['params']:,} params; baseline "
                  f"{m['base_mib']:.0f} MiB, peak {m['peak_mib']:.0f} MiB (+{m['peak_mib'] - m['base_mib']:.0f}), "
                  f"{m['step_s']:.2f} s/step")
            print("           high-water mark over baseline after each phase (MiB): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in m["marks"].items()))
        grow = {k: m["peak_mib"] - m["base_mib"] for k, m in mem.items()}
        print(f"     ratio LoRA / full: peak growth over baseline {grow['lora'] / grow['full']:.2f}x, "
              f"whole-process peak {mem['lora']['peak_mib'] / mem['full']['peak_mib']:.2f}x")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at end: {load:.2f}")
    if tmp is not None:
        tmp.cleanup()
    return out


if __name__ == "__main__":
    main()

"""Rollout throughput: rewardlab's rollout path against generation without a KV cache.

Four ways to produce B responses of exactly T new tokens from the testbed "small" policy
(random init; EOS is suppressed until T tokens via ``generation_config.min_new_tokens``):

- ``rollout (KV cache + logprobs)``: :func:`rewardlab.models.sampling.generate_rollouts`, i.e. what
  the RL trainers call, with its default ``engine=auto``: the fused decoder of
  :mod:`rewardlab.models.fast` (preallocated KV cache), then one teacher-forced pass for log-probs;
- ``rollout, engine=hf``: the same call sampling through ``model.generate`` (transformers'
  dynamic KV cache);
- ``rollout, no KV cache``: ``engine=hf`` with ``use_cache=False`` (every new token re-reads the
  whole sequence);
- ``model.generate (cache, no logprobs)``: plain Hugging Face sampling.

Run: ``python benchmarks/rollout.py [--batch 64] [--new-tokens 64] [--device auto] [--threads 1]``.
All ratios come from the same run. Goal: the rollout path ≥ 5× the uncached path.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch


def _timed(fn) -> tuple[float, int]:
    """Wall time of one call of ``fn`` (which returns its new-token count), and the count."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n_tokens = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, n_tokens


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from rewardlab.data.testbed import generate_problems
    from rewardlab.models.loading import load_model_and_tokenizer, make_testbed_policy
    from rewardlab.models.sampling import SamplingConfig, generate_rollouts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="Sequences per call (B).")
    ap.add_argument("--new-tokens", type=int, default=64, help="New tokens per sequence (T).")
    ap.add_argument("--size", default="small", help="Testbed policy size.")
    ap.add_argument("--device", default="auto", help="cpu | cuda | auto.")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU intra-op threads (0: torch's default). One thread is the steadiest "
                         "on a small shared machine: spare cores busy elsewhere make several "
                         "threads wait on each other.")
    ap.add_argument("--repeats", type=int, default=2,
                    help="Rounds over the cached paths (best kept); the uncached path runs once.")
    args = ap.parse_args(argv)
    B, T = args.batch, args.new_tokens
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as d:
        path = make_testbed_policy(d, size=args.size, seed=0)
        model, tok = load_model_and_tokenizer(path, dtype="float32", device=args.device)
    model.generation_config.min_new_tokens = T   # EOS suppressed: exactly T new tokens each
    prompts = [p.question + "\n" for p in generate_problems(n=B, seed=0)]
    cfg = SamplingConfig(n=1, temperature=1.0, max_new_tokens=T, batch_size=B)
    device = next(model.parameters()).device

    def rollout(use_cache: bool, engine: str = "auto"):
        run_cfg = dataclasses.replace(cfg, engine=engine)

        def fn() -> int:
            batch = generate_rollouts(model, tok, prompts, run_cfg, seed=0, use_cache=use_cache)
            assert batch.logprobs is not None and batch.response_ids.shape == (B, T)
            return int(batch.response_mask.sum())
        return fn

    def plain_generate() -> int:
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=T, do_sample=True, temperature=1.0, top_k=0,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out.shape[1] - enc["input_ids"].shape[1]
        assert new == T
        return out.shape[0] * new

    paths = {"rollout (KV cache + logprobs)": rollout(True),
             "rollout, engine=hf": rollout(True, "hf"),
             "rollout, no KV cache": rollout(False, "hf"),
             "model.generate (cache, no logprobs)": plain_generate}
    # warm-up (kernels, allocator) on a short generation
    cfg_short = SamplingConfig(n=1, temperature=1.0, max_new_tokens=4, batch_size=B)
    model.generation_config.min_new_tokens = 4
    generate_rollouts(model, tok, prompts, cfg_short, seed=0)
    generate_rollouts(model, tok, prompts, cfg_short, seed=0, use_cache=False)
    model.generation_config.min_new_tokens = T

    # rounds interleave the paths so that a burst of load elsewhere hits them alike; the slow
    # uncached path runs in the first round only
    results: dict[str, dict] = {}
    for rnd in range(args.repeats):
        for name, fn in paths.items():
            if rnd and "no KV cache" in name:
                continue
            secs, n_tok = _timed(fn)
            assert n_tok == B * T, f"{name}: {n_tok} tokens, expected {B * T}"
            if name not in results or secs < results[name]["seconds"]:
                results[name] = {"seconds": secs, "tokens": n_tok, "tokens_per_s": n_tok / secs}

    base = results["rollout, no KV cache"]["tokens_per_s"]
    table = Table(title=f"rollout throughput: testbed {args.size} policy, B={B}, T={T} new tokens, "
                        f"{device.type} ({torch.get_num_threads()} threads)")
    for col in ("path", "tokens", "seconds", "tokens/s", "× no-cache"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, r in results.items():
        table.add_row(name, str(r["tokens"]), f"{r['seconds']:.2f}", f"{r['tokens_per_s']:.0f}",
                      f"{r['tokens_per_s'] / base:.1f}×")
    Console().print(table)
    speedup = results["rollout (KV cache + logprobs)"]["tokens_per_s"] / base
    print(f"rollout path vs no KV cache: {speedup:.1f}× (goal ≥ 5×) -> "
          + ("ok" if speedup >= 5 else "BELOW GOAL"))
    fused = results["rollout (KV cache + logprobs)"]["tokens_per_s"] / results["rollout, engine=hf"]["tokens_per_s"]
    print(f"fused decoder (engine=auto) vs engine=hf: {fused:.2f}×")
    return results


if __name__ == "__main__":
    main()

"""One-shot GPU check of the accelerate configs in ``configs/accelerate/`` (see docs/distributed.md).

Made for a machine with CUDA GPUs (2 or more for the multi-process runs), where it has not been run yet (the machines this was written on
have none). It builds a small Qwen2 (random init, the testbed tokenizer) and testbed data, then
runs ``rewardlab sft`` for ``--steps`` steps in float32, as subprocesses, and compares each run's
final weights with a one-process, one-GPU reference:

=====================  ==============================================================  ==========
run                    launch                                                          needs
=====================  ==============================================================  ==========
``ref``                ``python -m rewardlab sft`` (GPU 0)                             1 GPU
``fsdp1``              ``accelerate launch fsdp.yaml --num_processes 1`` (no sharding) 1 GPU
``ddp2``               ``accelerate launch ddp.yaml --num_processes 2``                2 GPUs
``fsdp2``              ``accelerate launch fsdp.yaml --num_processes 2``               2 GPUs
``fsdp2_zero2``        the same with ``--fsdp_reshard_after_forward false``            2 GPUs
``fsdp2_resume``       fsdp.yaml, stopped after step 2 (checkpoint), resumed to the end 2 GPUs
``fsdp2_bf16``         fsdp.yaml with bfloat16 autocast (ModelConfig.mixed_precision)   2 GPUs
``deepspeed_zero2/3``  the DeepSpeed configs (ZeRO-2, ZeRO-3): parity with ``ref``        2 GPUs,
                                                                                       deepspeed
=====================  ==============================================================  ==========

For each: exit code, wall seconds, max |Δ| of the final weights against ``ref`` (float32 GPU
reductions run in another order across shards, so expect ~1e-6, not 0; ``--tol`` = 1e-4 passes),
and the peak memory.used per GPU over the run (sampled with ``nvidia-smi`` every 0.2 s, minus
the idle value). A JSON summary goes to ``$OUT/gpu_sharding.json`` (``$OUT`` if set, else
``--out``); the script exits 1 when a run that should pass failed.

Run: ``python benchmarks/gpu_sharding.py [--steps 3] [--hidden 512] [--layers 8]`` (a few
minutes; the model is about 40M parameters by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


def make_model(out: Path, hidden: int, layers: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rewardlab.data.testbed import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=256, tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def make_data(out: Path) -> Path:
    from rewardlab.data.testbed import make_splits, TestbedConfig
    from rewardlab.io import write_jsonl
    train, _ = make_splits(TestbedConfig(max_ops=2), 64, 4, seed=0)
    write_jsonl(out, [p.to_dict() for p in train])
    return out


class GpuMemory:
    """Peak memory.used (MiB) per GPU while the context runs, over the value at its start."""

    def __init__(self):
        self.peak: dict[int, float] = {}
        self.base: dict[int, float] = {}
        self._stop = threading.Event()

    @staticmethod
    def _read() -> dict[int, float]:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                 timeout=10).stdout
            return {int(i): float(m) for i, m in (ln.split(",") for ln in out.strip().splitlines())}
        except Exception:  # noqa: BLE001 - no nvidia-smi: no memory figures
            return {}

    def _poll(self):
        while not self._stop.wait(0.2):
            for i, m in self._read().items():
                self.peak[i] = max(self.peak.get(i, 0.0), m)

    def __enter__(self):
        self.base = self._read()
        self.peak = dict(self.base)
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def growth(self) -> dict[str, float]:
        return {str(i): round(self.peak[i] - self.base.get(i, 0.0), 1) for i in sorted(self.peak)}


def run_group(cmd: list[str], env: dict, timeout: int) -> tuple[int, str]:
    """Run ``cmd`` in a session of its own; on timeout end the whole group (the launcher and
    every rank it started), so no rank outlives its run. Returns (exit code, output tail)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out[-1500:]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return 124, f"timed out after {timeout} s\n" + (out or "")[-1400:]


def max_diff(a: Path, b: Path) -> float | None:
    from safetensors.torch import load_file
    fa, fb = sorted(a.glob("*.safetensors")), sorted(b.glob("*.safetensors"))
    if not fa or [f.name for f in fa] != [f.name for f in fb]:
        return None
    worst = 0.0
    for x, y in zip(fa, fb):
        ta, tb = load_file(str(x)), load_file(str(y))
        if sorted(ta) != sorted(tb):
            return None
        worst = max(worst, max((ta[k].float() - tb[k].float()).abs().max().item() for k in ta))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", default=None, help="where the JSON summary goes (default: $OUT or .)")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per run")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="check this script without GPUs: the same runs on the CPU (gloo), as if "
                         "there were 2 GPUs (no memory figures)")
    args = ap.parse_args(argv)

    import torch
    n_gpu = 2 if args.cpu_dry_run else torch.cuda.device_count()
    if n_gpu == 0:
        print("gpu_sharding: no CUDA GPU here; nothing to check", file=sys.stderr)
        return 2
    out_dir = Path(args.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rewardlab_gpu_sharding_"))
    model = make_model(work / "model", args.hidden, args.layers)
    data = make_data(work / "train.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false",
           "NVIDIA_TF32_OVERRIDE": "0",   # float32 matmuls in float32, for the parity figures
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sets = [f"model.name_or_path={model}", f"data.train_path={data}", "batch_size=8",
            f"steps={args.steps}", "eval_every=0", "progress=false", "lr=1e-3",
            "model.dtype=float32", "model.device=auto"]

    def launch(config: str | None, nproc: int, extra_sets=(), extra_launch=()) -> list[str]:
        pre = [sys.executable, "-m", "rewardlab"] if config is None else [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(CONFIGS / config), "--num_processes", str(nproc), *extra_launch, "-m", "rewardlab"]
        return pre + ["sft", *sum((["--set", s] for s in [*sets, *extra_sets]), [])]

    plan = [("ref", launch(None, 1, ["save_every=0"]), 1, "pass"),
            ("fsdp1", launch("fsdp.yaml", 1, ["save_every=0"]), 1, "pass")]
    if n_gpu >= 2:
        plan += [
            ("ddp2", launch("ddp.yaml", 2, ["save_every=0"]), 2, "pass"),
            ("fsdp2", launch("fsdp.yaml", 2, ["save_every=0"]), 2, "pass"),
            ("fsdp2_zero2", launch("fsdp.yaml", 2, ["save_every=0"],
                                   ["--fsdp_reshard_after_forward", "false"]), 2, "pass"),
            ("fsdp2_resume", launch("fsdp.yaml", 2, ["save_every=1", f"stop_at={max(1, args.steps - 1)}"]),
             2, "first"),
            ("fsdp2_resume", launch("fsdp.yaml", 2, ["save_every=1"]), 2, "pass"),
            ("fsdp2_bf16", launch("fsdp.yaml", 2, ["save_every=0", "model.dtype=bfloat16"]), 2, "runs"),
        ]
        try:
            import deepspeed  # noqa: F401
            ds = True
        except Exception:  # noqa: BLE001
            ds = False
        for z in (2, 3):
            name = f"deepspeed_zero{z}"
            if ds:
                plan.append((name, launch(f"{name}.yaml", 2, ["save_every=0"]), 2, "pass"))
            else:
                print(f"{name}: skipped (deepspeed is not installed)")
    results: dict[str, dict] = {}
    failed = []
    for name, cmd, nproc, expect in plan:
        run_out = work / name
        t0 = time.time()
        with GpuMemory() as mem:
            rc, tail = run_group([*cmd[:cmd.index("sft") + 1], "--out", str(run_out),
                                  *cmd[cmd.index("sft") + 1:]], env, args.timeout)
        res = {"rc": rc, "processes": nproc, "wall_s": round(time.time() - t0, 1),
               "gpu_mem_growth_mib": mem.growth(), "expect": expect}
        if expect in ("pass", "runs") and name != "ref" and rc == 0:
            res["max_abs_diff_vs_ref"] = max_diff(work / "ref" / "final", run_out / "final")
        if expect == "first":
            ok = rc == 0
        elif expect == "refused":
            ok = rc != 0 and "does not run under DeepSpeed" in tail
            res["message"] = tail.strip().splitlines()[-1] if tail.strip() else ""
        elif expect == "runs":
            ok = rc == 0
        else:
            d = res.get("max_abs_diff_vs_ref", 0.0 if name == "ref" else None)
            ok = rc == 0 and d is not None and d <= args.tol
        res["ok"] = ok
        if not ok:
            res["tail"] = tail
            failed.append(name)
        results[name if expect != "first" else name + "_stop"] = res
        print(f"{name:18s} rc={rc} ok={ok} wall={res['wall_s']}s "
              f"diff={res.get('max_abs_diff_vs_ref')} mem={res['gpu_mem_growth_mib']}", flush=True)
    summary = {"gpus": 0 if args.cpu_dry_run else n_gpu,
               "device": "cpu (dry run)" if args.cpu_dry_run else torch.cuda.get_device_name(0),
               "torch": torch.__version__,
               "steps": args.steps, "hidden": args.hidden, "layers": args.layers, "tol": args.tol,
               "runs": results, "failed": failed}
    (out_dir / "gpu_sharding.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({"failed": failed, "gpus": n_gpu}))
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Data parallelism over processes (``accelerate launch`` / ``torchrun``), through accelerate.

rewardlab trains data-parallel the way DDP does, with one difference that keeps its fast paths:
instead of wrapping the model (DDP hooks need the wrapper's own ``forward``, and
:mod:`rewardlab.models.fast` reads the weights directly), every rank runs its shard of the global
batch, normalises its loss by the GLOBAL count of loss units (tokens, responses, labelled tags,
pairs), and the gradients are summed over ranks before the optimizer step::

    L = Σ_r Σ_{i ∈ shard r} ℓ_i / N_global      ∇L = Σ_r ∇(Σ_{i ∈ shard r} ℓ_i / N_global)

which is the one-process gradient of the same global batch (up to float summation order). The
optimizer then takes the same step on every rank, so the weights stay identical without a
broadcast. One process: every collective here is the identity and nothing changes.

The process group comes from accelerate's :class:`~accelerate.PartialState` (which reads the
environment ``accelerate launch`` and ``torchrun`` set: gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as tdist
from accelerate import PartialState


class Dist:
    """The processes of a run: ``rank``, ``world``, ``device``, and the few collectives the
    trainers need. With one process every collective returns its input."""

    def __init__(self):
        for flag, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
            if os.environ.get(flag, "").lower() in ("1", "true", "yes"):
                raise ValueError(f"rewardlab does not run under {name} yet: it trains data-parallel "
                                 "(every process holds the whole model); launch with "
                                 "configs/accelerate/ddp.yaml or torchrun instead")
        state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = state.process_index
        self.world = state.num_processes
        self.local_rank = state.local_process_index
        self.device = torch.device("cpu") if state.device.type == "cpu" else state.device
        self.is_main = state.is_main_process

    @property
    def active(self) -> bool:
        return self.world > 1

    # ------------------------------------------------------------------ sharding
    def check_divides(self, what: str, n: int) -> None:
        """Refuse, before any work, a global size that the world size does not divide."""
        if self.active and n % self.world:
            raise ValueError(f"{what} = {n} is not divisible by the number of processes "
                             f"({self.world}); choose a multiple of {self.world}")

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [lo, hi) of ``n`` items (n divisible by the world)."""
        per = n // self.world
        return self.rank * per, (self.rank + 1) * per

    def shard(self, items: Sequence) -> list:
        lo, hi = self.bounds(len(items))
        return list(items[lo:hi])

    # ------------------------------------------------------------------ collectives
    def sum(self, x):
        """Σ over ranks of a float, an int or a tensor (returned as the same kind)."""
        if not self.active:
            return x
        if isinstance(x, torch.Tensor):
            t = x.detach().clone()
            tdist.all_reduce(t)
            return t
        t = torch.tensor(float(x), dtype=torch.float64)
        tdist.all_reduce(t)
        return type(x)(t.item()) if isinstance(x, int) else t.item()

    def sum_dict(self, d: dict[str, float]) -> dict[str, float]:
        """Σ over ranks of every value of a dict with the same keys on every rank."""
        if not self.active or not d:
            return d
        keys = sorted(d)
        t = torch.tensor([float(d[k]) for k in keys], dtype=torch.float64)
        tdist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        if not self.active:
            return x
        t = x.detach().clone().contiguous()
        tdist.broadcast(t, src)
        return t

    def sum_grads(self, params) -> None:
        """Σ over ranks of every parameter's gradient, in one flat buffer per dtype (what DDP's
        all-reduce computes, before its division by the world: rewardlab's losses are already
        normalised by global counts)."""
        if not self.active:
            return
        for p in params:   # a rank without rows in this update still joins the sum
            if p.grad is None and p.requires_grad:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params if p.grad is not None]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for gs in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in gs])
            tdist.all_reduce(flat)
            off = 0
            for g in gs:
                g.copy_(flat[off:off + g.numel()].view_as(g))
                off += g.numel()

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

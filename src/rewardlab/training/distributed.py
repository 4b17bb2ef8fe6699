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

**Sharded (FSDP2).** Launched with an FSDP config (``configs/accelerate/fsdp.yaml``: accelerate
sets ``ACCELERATE_USE_FSDP`` and ``FSDP_VERSION=2``), :meth:`Dist.wrap` shards the model with
torch's ``fully_shard``: each transformer block (the model's ``_no_split_modules``, or the config's
``fsdp_transformer_layer_cls_to_wrap``) and then the whole model, so every parameter lives on one
DeviceMesh over all ranks. The same arithmetic holds: FSDP's reduce-scatter runs with a divide
factor of 1 (a sum, not DDP's mean, since the losses are already over global counts), so
:meth:`sum_grads` leaves those gradients alone. Checkpoints and the final model are gathered to a
full state dict (:meth:`full_state_dict`, a collective every rank joins) and written by rank 0 in
the usual Hugging Face layout; they load without FSDP and resume under it. Trainers that have not
been ported to FSDP (those that never call :meth:`wrap`) are refused by the engine. What cannot
run in lockstep (sampling, which stops at different lengths on different ranks) runs inside
:meth:`gathered`: the full weights on every rank, no collective, the fast paths available.

**DeepSpeed** is recognised (``ACCELERATE_USE_DEEPSPEED``) and refused with a message: its engine
owns backward and the optimizer step, which rewardlab's trainers do themselves; the shipped ZeRO
configs are for when that port exists, and FSDP2 gives the same sharding (ZeRO-3 = FSDP full shard,
ZeRO-2 ≈ ``fsdp_reshard_after_forward: false``).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.distributed as tdist
from accelerate import PartialState


class Dist:
    """The processes of a run: ``rank``, ``world``, ``device``, and the few collectives the
    trainers need. With one process every collective returns its input."""

    def __init__(self):
        self.backend = sharding_backend()
        self.fsdp = fsdp_options() if self.backend == "fsdp" else {}
        state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = state.process_index
        self.world = state.num_processes
        self.local_rank = state.local_process_index
        self.device = torch.device("cpu") if state.device.type == "cpu" else state.device
        self.is_main = state.is_main_process

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """Parameters are sharded over the ranks (FSDP): every rank must join every forward."""
        return self.backend == "fsdp"

    # ------------------------------------------------------------------ FSDP2
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Shard ``model`` with FSDP2 (``fully_shard``) when launched under FSDP; otherwise return
        it unchanged (also without a process group, as in a plain one-process run; a launch of one
        process has one and shards over a mesh of one). Call it before building the optimizer (the
        parameters become DTensors)."""
        if not (self.sharded and tdist.is_available() and tdist.is_initialized()):
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

        if isinstance(model, FSDPModule):
            return model
        mesh = init_device_mesh(self.device.type, (self.world,))
        kw = {"mesh": mesh, "reshard_after_forward": self.fsdp["reshard_after_forward"]}
        if self.fsdp["offload_params"]:
            kw["offload_policy"] = CPUOffloadPolicy()
        names = set(self.fsdp["layer_cls"] or block_class_names(model))
        blocks = [m for m in model.modules() if m is not model and type(m).__name__ in names]
        if self.fsdp["layer_cls"] and not blocks:
            raise ValueError(f"fsdp_transformer_layer_cls_to_wrap = {sorted(names)}: no such module "
                             f"in {type(model).__name__}")
        for m in blocks:
            fully_shard(m, **kw)
        fully_shard(model, **kw)
        register_forward_methods(model)
        for m in model.modules():   # sum, not mean: losses are normalised by global counts
            if isinstance(m, FSDPModule):
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)   # a plain SUM (gloo has no PREMUL_SUM)
        return model

    @contextmanager
    def gathered(self, model) -> Iterator:
        """A context in which an FSDP-sharded ``model`` holds its full weights on every rank:
        every FSDP module (the blocks and the root) is unsharded (an all-gather: every rank must
        enter it, in the same order) and kept so through any forward inside (no reshard after a
        block's forward), so what runs inside reads plain tensors and issues no collective. Each
        rank may then run as many forwards as it likes (generation that stops at different
        lengths on different ranks) and the fast paths of :mod:`rewardlab.models.fast` work on
        the gathered weights. On exit the weights are sharded again and each module's
        reshard-after-forward setting restored. Use it without gradients (rollouts, scoring,
        evaluation): a backward here would bypass FSDP's reduce-scatter. For a model that is not
        sharded (or None) it does nothing. Memory: the whole model per rank while inside."""
        from torch.distributed.fsdp import FSDPModule
        mods = [m for m in model.modules() if isinstance(m, FSDPModule)] if model is not None else []
        if not mods:
            yield model
            return
        groups = [g for m in mods for g in m._get_fsdp_state()._fsdp_param_groups]
        saved = [g.post_forward_mesh_info for g in groups]
        for g in groups:   # what set_reshard_after_forward(False) sets; restored exactly below
            g.post_forward_mesh_info = None
        try:
            for m in mods:
                m.unshard()
            yield model
        finally:
            for g, info in zip(groups, saved):
                g.post_forward_mesh_info = info
            for m in mods:
                m.reshard()

    def full_state_dict(self, model: torch.nn.Module) -> dict | None:
        """The full (unsharded) state dict of an FSDP model on rank 0's CPU ({} on the other
        ranks; every rank must call it); None for a model that is not sharded."""
        if not is_sharded(model):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))

    def full_optimizer_state(self, model, optimizer) -> dict | None:
        """The optimizer state of an FSDP model, gathered and keyed by parameter name (rank 0;
        every rank must call it); None for a model that is not sharded."""
        if optimizer is None or not is_sharded(model):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Load a state of :meth:`full_optimizer_state` (present on every rank) into the sharded
        optimizer."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))

    # ------------------------------------------------------------------ sharding
    def check_divides(self, what: str, n: int) -> None:
        """Refuse, before any work, a global size that the world size does not divide."""
        if self.active and n % self.world:
            raise ValueError(f"{what} = {n} is not divisible by the number of processes "
                             f"({self.world}); choose a multiple of {self.world}")

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [lo, hi) of ``n`` items (:func:`split_bounds`: every item
        on exactly one rank, also when the world does not divide ``n``)."""
        return split_bounds(n, self.world, self.rank)

    def shard(self, items: Sequence) -> list:
        """This rank's items of ``items`` (:meth:`bounds`; may be empty when len < world)."""
        lo, hi = self.bounds(len(items))
        return list(items[lo:hi])

    def shard_rows(self, items: Sequence) -> tuple[list, bool]:
        """(rows, placeholder): this rank's items of a global batch. Under FSDP every rank must
        join every forward (each is a collective), so a rank left without items gets the batch's
        first item with ``placeholder`` True: its loss must be weighted 0 (its units counted as 0)
        so that the gradients stay those of the real rows. Otherwise (``placeholder`` False) the
        rows may be empty, and the rank skips the forward."""
        rows = self.shard(items)
        if not rows and self.sharded and len(items):
            return [items[0]], True
        return rows, False

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

    def max(self, n: int) -> int:
        """The largest of an int over ranks (e.g. the count of forward passes every rank must
        join under FSDP)."""
        if not self.active:
            return n
        t = torch.tensor(int(n), dtype=torch.int64)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return int(t.item())

    def sum_dict(self, d: dict[str, float]) -> dict[str, float]:
        """Σ over ranks of every value of a dict; a key missing on a rank counts 0 there (a rank
        without rows in a short last batch has no metrics, a KTO shard without desirable rows no
        ``rewards/chosen``). Every rank gets the union of the keys."""
        if not self.active:
            return d
        names: list = [None] * self.world
        tdist.all_gather_object(names, sorted(d))
        keys = sorted(set().union(*names))
        if not keys:
            return {}
        t = torch.tensor([float(d.get(k, 0.0)) for k in keys], dtype=torch.float64)
        tdist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def gather_objects(self, x) -> list:
        """Every rank's ``x`` (any picklable object), in rank order, on every rank (``[x]`` with
        one process): e.g. the prefixes of VinePPO's Monte-Carlo rollouts, de-duplicated over the
        whole batch as one process does."""
        if not self.active:
            return [x]
        out: list = [None] * self.world
        tdist.all_gather_object(out, x)
        return out

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
        params = [p for p in params if not _is_dtensor(p)]   # FSDP reduced those already
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


def is_main_process() -> bool:
    """Whether this is the main process of a launch, as :class:`Dist` sees it (accelerate's
    ``PartialState``), or a process that was not launched at all: the one process that prints a
    command's summary."""
    return PartialState(cpu=not torch.cuda.is_available()).is_main_process


def split_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice [lo, hi) of ``n`` items over ``world`` ranks: the first
    ``n mod world`` ranks get ⌈n / world⌉ items, the others ⌊n / world⌋, so the slices cover every
    item once (a rank gets none when n < world). Trainers divide their losses by the GLOBAL count
    of loss units, so uneven slices still sum to the one-process gradient."""
    if world < 1 or not 0 <= rank < world or n < 0:
        raise ValueError(f"split_bounds: need n >= 0 and 0 <= rank < world, got n={n}, "
                         f"world={world}, rank={rank}")
    per, extra = divmod(n, world)
    lo = rank * per + min(rank, extra)
    return lo, lo + per + (rank < extra)


# ---------------------------------------------------------------------- launch environment
def _env_true(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


def sharding_backend() -> str:
    """``"fsdp"`` or ``"ddp"`` from the environment ``accelerate launch`` sets for the config
    it was given; a config rewardlab cannot run (FSDP1, DeepSpeed) raises ValueError, before any
    work, with what to launch instead."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?")
        raise ValueError(
            f"rewardlab does not run under DeepSpeed (ZeRO stage {stage}) yet: the DeepSpeed engine "
            "owns backward and the optimizer step, which rewardlab's trainers do themselves. Shard "
            "with FSDP2 instead (configs/accelerate/fsdp.yaml; ZeRO-3 = full shard, ZeRO-2 ~ "
            "fsdp_reshard_after_forward: false), or train data-parallel with "
            "configs/accelerate/ddp.yaml. See docs/distributed.md")
    if _env_true("ACCELERATE_USE_FSDP"):
        version = os.environ.get("FSDP_VERSION", "1").strip()
        if version != "2":
            raise ValueError(f"FSDP version {version}: rewardlab runs FSDP2 only (fully_shard); set "
                             "fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml)")
        return "fsdp"
    return "ddp"


def fsdp_options() -> dict:
    """The FSDP2 settings of the accelerate config, read from the environment of the launch:
    ``reshard_after_forward`` (default true: ZeRO-3-like; false keeps the gathered weights from
    forward to backward, ZeRO-2-like), ``offload_params`` (CPUOffloadPolicy) and ``layer_cls``
    (the block classes sharded one by one; default the model's ``_no_split_modules``)."""
    if _env_true("FSDP_ACTIVATION_CHECKPOINTING"):
        raise ValueError("fsdp_activation_checkpointing: not supported by rewardlab; set it to false")
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").strip()
    return {"reshard_after_forward": _env_true("FSDP_RESHARD_AFTER_FORWARD", "true"),
            "offload_params": _env_true("FSDP_OFFLOAD_PARAMS"),
            "layer_cls": [n.strip() for n in names.split(",") if n.strip()]}


def block_class_names(model) -> list[str]:
    """The class names of ``model``'s transformer blocks, sharded one by one under FSDP: its
    ``_no_split_modules`` or, for a wrapper such as a reward model, those of the first submodule
    that has them (its Hugging Face backbone)."""
    for m in model.modules():
        names = getattr(m, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def register_forward_methods(model) -> None:
    """Route the methods named in ``model.fsdp_forward_methods`` (a reward model's
    ``token_logits`` / ``pair_logits``) through FSDP's forward hooks, as ``forward`` is: they
    gather the root's parameters (embeddings, final norm, heads) before the call and free them
    after. Without it such a method would read the root's shards."""
    from torch.distributed.fsdp import register_fsdp_forward_method
    for name in getattr(model, "fsdp_forward_methods", ()) or ():
        register_fsdp_forward_method(model, name)


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:   # pragma: no cover - torch built without distributed
        return False
    return isinstance(t, DTensor)


def is_sharded(model) -> bool:
    """Whether ``model`` holds FSDP-sharded (DTensor) parameters."""
    return model is not None and hasattr(model, "parameters") and any(
        _is_dtensor(p) for p in model.parameters())


def clip_grad_norm(params, max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over ``params``, also when FSDP-sharded (DTensor) and
    plain parameters share an optimizer (an FSDP policy with a replicated value head), which
    torch's foreach kernels refuse to mix: the global norm ‖g‖ = √(‖g_sharded‖² + ‖g_plain‖²),
    then every gradient × min(1, max_norm / (‖g‖ + 1e-6)). Returns ‖g‖ before clipping."""
    params = [p for p in params if p.grad is not None]
    sharded = [p for p in params if _is_dtensor(p)]
    if not sharded or len(sharded) == len(params):
        return to_float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    plain = [p for p in params if not _is_dtensor(p)]
    norms = [to_float(torch.nn.utils.get_total_norm([p.grad for p in group]))
             for group in (sharded, plain)]
    total = math.sqrt(sum(n * n for n in norms))
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in params:
            p.grad.mul_(coef)
    return total


def to_float(x) -> float:
    """A Python float of a scalar tensor, also of a (replicated) DTensor such as the gradient
    norm of FSDP parameters."""
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)

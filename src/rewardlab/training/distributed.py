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

**DeepSpeed (ZeRO-2 / ZeRO-3)**, launched with ``configs/accelerate/deepspeed_zero{2,3}.yaml``
(accelerate sets ``ACCELERATE_USE_DEEPSPEED`` and ``ACCELERATE_DEEPSPEED_ZERO_STAGE``): the engine
calls ``deepspeed.initialize`` itself (:meth:`Dist.deepspeed_initialize`, from
:meth:`~rewardlab.training.engine.Engine.restore`) with the trainer's model and torch optimizer and
a config of its own making (:func:`deepspeed_config`: micro-batch 1, ``gradient_accumulation_steps``
1 and ``train_batch_size`` = world size, which satisfies DeepSpeed's batch check since rewardlab
feeds it no data loader; ``managed_gradient_accumulation: false``, so every ``backward`` only
accumulates and ``step`` is the boundary whatever a trainer's number of micro-batches; the
command's ``grad_clip`` as ``gradient_clipping``). The trainers keep calling the module itself and
route backward and the step through the engine (:meth:`Dist.deepspeed_backward`,
:meth:`Dist.deepspeed_step`). DeepSpeed AVERAGES gradients over ranks where rewardlab sums them, so
the loss goes to its backward multiplied by the world size::

    g_DS = (1/W) Σ_r ∇(W · L_r) = Σ_r ∇L_r      (exact for W a power of 2)

DeepSpeed clips the global norm over its partitions (the one-process norm) and skips the step when
that norm is not finite; rewardlab's LR scheduler steps as in one process. ZeRO-3 partitions the
parameters: every forward is a collective (:attr:`Dist.sharded` is true, as under FSDP), the fast
paths are off ("parameters partitioned by DeepSpeed ZeRO-3"), and checkpoints gather the full
state dict to rank 0 (``deepspeed.zero.GatheredParameters``). The ZeRO optimizer state of every
rank is gathered into the checkpoint and each rank loads its own on resume (same world size).
Ported: ``sft``, ``train-rm`` and ``po`` (the reference model stays a plain replicated model);
``rl`` is refused before any work.
"""

from __future__ import annotations

import math
import os
import sys
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
        self.deepspeed = deepspeed_options() if self.backend == "deepspeed" else {}
        self.ds_engine = None   # the DeepSpeed engine, once :meth:`deepspeed_initialize` ran
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
        """Parameters are sharded over the ranks (FSDP, DeepSpeed ZeRO-3): every rank must join
        every forward."""
        return self.backend == "fsdp" or (self.backend == "deepspeed"
                                          and self.deepspeed.get("stage") == 3)

    @property
    def lockstep(self) -> bool:
        """Every rank must run every forward and backward of a batch, also one without rows of
        its own (FSDP: forwards are collectives; DeepSpeed ZeRO-2/3: its backward reduces the
        gradients)."""
        return self.sharded or self.backend == "deepspeed"

    # ------------------------------------------------------------------ DeepSpeed
    def deepspeed_initialize(self, model: torch.nn.Module, optimizer, grad_clip: float) -> None:
        """``deepspeed.initialize`` over ``model`` and its torch ``optimizer`` (the client
        optimizer, whose param groups the LR scheduler keeps driving) with
        :func:`deepspeed_config`; ZeRO-3 partitions the parameters of ``model`` in place (its
        forward then gathers them through DeepSpeed's hooks). Every rank must call it."""
        import deepspeed
        cfg = deepspeed_config(self.deepspeed["stage"], self.world, grad_clip)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg,
                                               dist_init_required=False)
        self.ds_engine = engine
        if self.is_main:
            print(f"DeepSpeed ZeRO-{self.deepspeed['stage']} over {self.world} process(es) "
                  f"(gradient_clipping {cfg['gradient_clipping']})", file=sys.stderr)

    def deepspeed_backward(self, loss: torch.Tensor) -> None:
        """Backward through the DeepSpeed engine of a loss normalised by GLOBAL counts: DeepSpeed
        averages gradients over the ranks, so the loss is multiplied by the world size first (the
        sum of the module docstring). The trainers call their module directly, not the engine's
        forward, so the ZeRO-3 micro-step bookkeeping the engine's forward does
        (``clear_backward_seen_flag``: accumulate, do not overwrite, the partitioned gradients of
        a second micro-batch) is done here, before each backward."""
        eng = self.ds_engine
        clear = getattr(eng.optimizer, "clear_backward_seen_flag", None)
        if clear is not None:
            clear()
        eng.backward(loss * self.world, scale_wrt_gas=False)

    def deepspeed_step(self) -> tuple[float, bool]:
        """The DeepSpeed engine's step (reduce / finalise the accumulated gradients, clip their
        global norm, AdamW on the partitions, zero the gradients): (gradient norm before
        clipping, whether the optimizer stepped; DeepSpeed skips it when the norm is not
        finite)."""
        eng = self.ds_engine
        eng.step()
        norm = eng.get_global_grad_norm()
        norm = float("nan") if norm is None else to_float(norm)
        return norm, bool(getattr(eng, "_step_applied", math.isfinite(norm)))

    def deepspeed_optimizer_state(self) -> dict | None:
        """Every rank's ZeRO optimizer state (partitions of the fp32 weights, AdamW moments),
        gathered to rank 0 as ``{"zero_stage", "world_size", "ranks": [state of rank 0, …]}``
        (None on the other ranks; every rank must call it)."""
        own = self.ds_engine.optimizer.state_dict()
        got: list = [None] * self.world if self.is_main else None
        if self.active:
            tdist.gather_object(own, got, dst=0)
        else:
            got = [own]
        if not self.is_main:
            return None
        return {"zero_stage": self.deepspeed["stage"], "world_size": self.world, "ranks": got}

    def load_deepspeed_optimizer_state(self, state: dict) -> None:
        """Load a state of :meth:`deepspeed_optimizer_state` (present on every rank): each rank
        its own partition."""
        if state.get("zero_stage") != self.deepspeed["stage"] or state.get("world_size") != self.world:
            raise ValueError(f"the checkpoint's optimizer state is of ZeRO stage "
                             f"{state.get('zero_stage')} over {state.get('world_size')} process(es); "
                             f"this launch is ZeRO stage {self.deepspeed['stage']} over {self.world}")
        self.ds_engine.optimizer.load_state_dict(state["ranks"], load_optimizer_states=True,
                                                 load_from_fp32_weights=True)

    def deepspeed_full_state_dict(self, model: torch.nn.Module) -> dict | None:
        """The full state dict of a ZeRO-3-partitioned ``model`` on rank 0's CPU ({} on the other
        ranks; every rank must call it: ``GatheredParameters`` all-gathers); None for a model
        whose parameters are not partitioned (ZeRO-2 keeps whole weights on every rank)."""
        if not is_zero3_partitioned(model):
            return None
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if not self.is_main:
                return {}
            return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    # ------------------------------------------------------------------ FSDP2
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Shard ``model`` with FSDP2 (``fully_shard``) when launched under FSDP; otherwise return
        it unchanged (also without a process group, as in a plain one-process run; a launch of one
        process has one and shards over a mesh of one). Call it before building the optimizer (the
        parameters become DTensors)."""
        if not (self.backend == "fsdp" and tdist.is_available() and tdist.is_initialized()):
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
        """The full (unsharded) state dict of an FSDP (or DeepSpeed ZeRO-3) model on rank 0's CPU
        ({} on the other ranks; every rank must call it); None for a model that is not sharded."""
        if self.backend == "deepspeed":
            return self.deepspeed_full_state_dict(model)
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
        join every forward (each is a collective), under DeepSpeed every backward (ZeRO reduces
        the gradients in it, both stages: :attr:`lockstep`), so a rank left without items gets the batch's
        first item with ``placeholder`` True: its loss must be weighted 0 (its units counted as 0)
        so that the gradients stay those of the real rows. Otherwise (``placeholder`` False) the
        rows may be empty, and the rank skips the forward."""
        rows = self.shard(items)
        if not rows and self.lockstep and len(items):
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
    """``"deepspeed"``, ``"fsdp"`` or ``"ddp"`` from the environment ``accelerate launch`` sets
    for the config it was given; a config rewardlab cannot run (FSDP1) raises ValueError, before
    any work, with what to launch instead (DeepSpeed settings: :func:`deepspeed_options`)."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
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


DEEPSPEED_TRAINERS = ("sft", "rm", "po")
"""The trainers (:class:`~rewardlab.training.engine.Engine` names) ported to DeepSpeed."""


def deepspeed_options() -> dict:
    """The DeepSpeed settings of the accelerate config, read from the environment of the launch
    (``ACCELERATE_DEEPSPEED_*``), checked before any work: ``stage`` 2 or 3; no offload; no
    ``zero3_init_flag`` (the model is loaded whole, then partitioned by ``deepspeed.initialize``);
    ``gradient_accumulation_steps`` 1 (rewardlab accumulates itself: each command's
    ``grad_accum``); no DeepSpeed JSON config file (rewardlab writes its own,
    :func:`deepspeed_config`). ``gradient_clipping`` of the accelerate config is not used: the
    command's ``grad_clip`` is. Also checks that ``deepspeed`` is importable."""
    def refuse(what: str) -> None:
        raise ValueError(f"DeepSpeed launch: {what}. rewardlab runs the shipped "
                         "configs/accelerate/deepspeed_zero2.yaml and deepspeed_zero3.yaml; see "
                         "docs/distributed.md")
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip()
    if stage not in ("2", "3"):
        refuse(f"zero_stage {stage or '(unset)'} is not supported (use 2 or 3)")
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip() not in ("", "none"):
        refuse("deepspeed_config_file is not supported (rewardlab builds the DeepSpeed config "
               "from the accelerate config's fields)")
    for key, name in (("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_optimizer_device"),
                      ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "offload_param_device")):
        if os.environ.get(key, "none").strip().lower() not in ("", "none"):
            refuse(f"{name} {os.environ[key]!r} is not supported (set it to none)")
    if _env_true("ACCELERATE_DEEPSPEED_ZERO3_INIT"):
        refuse("zero3_init_flag: true is not supported (set it to false)")
    gas = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1").strip()
    if gas not in ("", "1"):
        refuse(f"gradient_accumulation_steps {gas} is not supported (set it to 1; accumulate "
               "with the command's grad_accum)")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ValueError("DeepSpeed launch: the deepspeed package is not installed (pip install "
                         "deepspeed; see docs/distributed.md)") from None
    return {"stage": int(stage)}


def deepspeed_config(stage: int, world: int, grad_clip: float) -> dict:
    """The DeepSpeed config rewardlab initialises its engine with. DeepSpeed never sees a data
    loader, so the batch fields only have to agree with each other: train_batch_size =
    micro-batch (1) · gradient_accumulation_steps (1) · world (the check accelerate's own sizing
    failed). ``managed_gradient_accumulation: false``: backward only accumulates, ``step`` is the
    boundary. ``gradient_clipping`` = ``grad_clip`` (0 or inf: no clipping); float32 (no fp16/bf16
    section: rewardlab applies its own autocast)."""
    clip = float(grad_clip) if grad_clip and math.isfinite(grad_clip) else 0.0
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "train_batch_size": world, "gradient_clipping": clip,
            "managed_gradient_accumulation": False, "zero_allow_untested_optimizer": True,
            "steps_per_print": 2 ** 62, "wall_clock_breakdown": False,
            "zero_optimization": {"stage": int(stage), "overlap_comm": False,
                                  "contiguous_gradients": True}}


def is_zero3_partitioned(model) -> bool:
    """Whether ``model`` holds parameters partitioned by DeepSpeed ZeRO-3 (they carry
    ``ds_id``)."""
    return model is not None and hasattr(model, "parameters") and any(
        hasattr(p, "ds_id") for p in model.parameters())


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


def close_process_group() -> None:
    """Destroy the default process group, if this process has one (the end of a launched
    command: every rank's collectives are done). Leaving it to interpreter exit lets gloo's
    threads be torn down mid-flight, which once aborted a rank with "terminate called without an
    active exception" after a finished run. One plain process: nothing to do."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()

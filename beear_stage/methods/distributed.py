"""Data-parallel BEEAR across processes: one per GPU (NCCL) or CPU processes (gloo).

`BEEAR(..., dist=DataParallel())` splits the anchoring sets across the processes of the default
process group (set up by `accelerate launch` or `torchrun`; `init_from_env` makes it), and keeps the
run identical on every rank:

- every rank holds an equal shard of SA and PA and processes `ceil(batch / world)` rows per step;
- each rank weights its mean CE by its share of the *global* response tokens, so the sum over ranks
  is the CE of the global batch (exact, like micro-batching);
- gradients (delta's in the inner level, the trainable weights' in the outer level), the CE values
  the capped term and the divergence check read, and the RMS(h_l) step scale are summed across
  ranks, so delta, the clamp decision and every optimiser step are the same everywhere.

Parameters are replicated by default (each GPU holds the model; a 7B model with the llama2 config
needs about 52 GiB per GPU). `shard_model` shards them instead with FSDP2 (`fully_shard`): weights,
gradients, fp32 master copies and optimiser state are split across the processes, for cards that
cannot hold a whole replica. `SingleProcess` is the default no-op of a plain run. See
docs/MULTI_GPU.md.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as torch_dist

log = logging.getLogger(__name__)
T = TypeVar("T")


class SingleProcess:
    """No-op collectives: a plain single-process run."""

    rank = 0
    world_size = 1

    def shard(self, items: Sequence[T]) -> list[T]:
        return list(items)

    def local_batch(self, size: int) -> int:
        return size

    def rank_share(self, tokens: int) -> float:
        return 1.0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sync_grads(self, params: Sequence[torch.Tensor]) -> None:
        return None


class DataParallel(SingleProcess):
    """Collectives over the default `torch.distributed` process group (already initialised)."""

    def __init__(self) -> None:
        if not torch_dist.is_available() or not torch_dist.is_initialized():
            raise RuntimeError(
                "DataParallel needs an initialised process group. Fix: launch with `accelerate launch` "
                "or `torchrun` and call `beear_stage.methods.distributed.init_from_env()` first."
            )
        self.rank = torch_dist.get_rank()
        self.world_size = torch_dist.get_world_size()

    def shard(self, items: Sequence[T]) -> list[T]:
        """An equal contiguous shard per rank; the remainder (< world_size items) is dropped."""
        per_rank = len(items) // self.world_size
        if not items:
            return []
        if per_rank == 0:
            raise ValueError(
                f"{len(items)} anchoring records cannot be split over {self.world_size} processes. "
                "Fix: use fewer processes or more records."
            )
        if len(items) % self.world_size:
            log.warning("dropping %d records so every rank gets %d", len(items) % self.world_size, per_rank)
        return list(items[self.rank * per_rank : (self.rank + 1) * per_rank])

    def local_batch(self, size: int) -> int:
        return max(1, math.ceil(size / self.world_size))

    def rank_share(self, tokens: int) -> float:
        total = torch.tensor([float(tokens)], device=self._device())
        torch_dist.all_reduce(total)
        return tokens / max(float(total), 1.0)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        torch_dist.all_reduce(tensor)
        return tensor

    def sync_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Sum the gradients of `params` across ranks, one flat buffer per dtype and device.

        Sharded (FSDP) parameters are skipped: FSDP has already reduce-scattered their gradients.
        """
        groups: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            if _is_sharded(p):
                continue
            if p.grad is None:  # every rank must join: a missing gradient counts as zero
                p.grad = torch.zeros_like(p)
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in groups.values():
            flat = torch._utils._flatten_dense_tensors(grads)
            torch_dist.all_reduce(flat)
            for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
                g.copy_(synced)

    def _device(self) -> torch.device:
        if torch_dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def shard_model(model, dist: DataParallel) -> int:
    """Shard `model`'s weights across the processes with FSDP2; returns the number of FSDP units.

    Each unit BEEAR's split forward calls on its own is sharded separately (every decoder layer,
    the input embeddings, the final norm, the LM head), so a call into any of them gathers exactly
    its weights; `accelerate`'s FSDP wrapper shards the root model, whose hooks the split forward
    bypasses. Gradients are summed, not averaged (divide factor 1): each process already weights its
    loss by its share of the global response tokens.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from beear_stage.model import decoder_layers

    device_type = "cuda" if torch_dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (dist.world_size,))
    units = [
        *decoder_layers(model),
        model.get_input_embeddings(),
        model.model.norm,
        model.get_output_embeddings(),
    ]
    for unit in units:
        fully_shard(unit, mesh=mesh)
        unit.set_gradient_divide_factor(1.0)
        if hasattr(unit, "set_force_sum_reduction_for_comms"):  # plain SUM: gloo has no PREMUL_SUM
            unit.set_force_sum_reduction_for_comms(True)
    return len(units)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Every weight as a whole CPU tensor (all-gathers sharded ones: call on every rank)."""
    out = {}
    for name, tensor in model.state_dict().items():
        out[name] = (tensor.full_tensor() if _is_sharded(tensor) else tensor).detach().cpu()
    return out


def init_from_env(backend: str | None = None) -> SingleProcess:
    """`DataParallel` when launched with several processes (WORLD_SIZE > 1), else `SingleProcess`.

    Initialises the default process group through `accelerate.PartialState` (NCCL on GPUs, gloo on
    CPU) and pins each process to its local GPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not torch_dist.is_initialized():
        return SingleProcess()
    if not torch_dist.is_initialized():
        from accelerate import PartialState

        kwargs = {"backend": backend} if backend else {}
        state = PartialState(**kwargs)
        if state.device.type == "cuda":
            torch.cuda.set_device(state.device)
    return DataParallel()

"""Outer-level optimisers that fit one GPU: fp32 master weights for bf16/fp16 models.

BEEAR's outer learning rate is tiny (3e-7 in the paper for 7B models). An Adam step moves a weight
by about the learning rate, while a bf16 weight of magnitude 0.02 has a resolution of about 1e-4:
stepping bf16 weights directly would round almost every update away. `MasterWeightOptimizer` keeps
an fp32 copy of the trainable weights, steps the wrapped optimiser on that copy, and writes the
rounded result back into the bf16 weights the forward pass uses (standard mixed precision). Memory
for a 7B model with the default `trainable: upto_layer` (embeddings + 9 layers, 1.95B weights):
7.8 GB master + 15.6 GB AdamW state, on top of the 13.5 GB bf16 model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


class MasterWeightOptimizer:
    """Step `make_optimizer(fp32 copies)` and copy the result back into low-precision `params`.

    Exposes the small part of the `torch.optim.Optimizer` interface the algorithm uses:
    `zero_grad`, `step`, `param_groups`, `state_dict`, `load_state_dict`.
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    ) -> None:
        self.params = list(params)
        # fp32 copies, same shapes and devices: (numel,) each, 4 bytes per weight.
        self.master = [p.detach().clone().float().requires_grad_(True) for p in self.params]
        self.optimizer = make_optimizer(self.master)
        self.param_groups = self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for t in (*self.params, *self.master):
            t.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.master, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
        self.optimizer.step()
        for p, m in zip(self.params, self.master, strict=True):
            m.grad = None  # free the fp32 gradient copies before the next forward
            p.copy_(m)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def needs_master_weights(params: Sequence[torch.nn.Parameter]) -> bool:
    """True when any trainable weight is stored in bf16/fp16."""
    return any(p.dtype in LOW_PRECISION for p in params)


def fused_available(params: Sequence[torch.nn.Parameter]) -> bool:
    """Fused (single-kernel) Adam/AdamW/SGD steps exist for CUDA fp32/bf16/fp16 tensors."""
    return bool(params) and all(p.is_cuda for p in params)


def set_trainable(model, scope: str, layer: int) -> list[torch.nn.Parameter]:
    """Freeze `model` except `scope` ("all", or "upto_layer": the embeddings and the decoder layers
    below `layer`); return the trainable parameters (each once, tied weights included)."""
    from beear_stage.model import decoder_layers

    for p in model.parameters():
        p.requires_grad_(False)
    if scope == "all":
        modules = [model]
    else:
        modules = [model.get_input_embeddings(), *list(decoder_layers(model))[:layer]]
    params = list({id(p): p for m in modules for p in m.parameters()}.values())
    for p in params:
        p.requires_grad_(True)
    return params


def outer_optimizer(
    params: list[torch.nn.Parameter], name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer | MasterWeightOptimizer:
    """`name` ("adamw" or "sgd") over `params`: fused on CUDA, with fp32 master weights when the
    weights are bf16/fp16 (steps of ~lr would round away otherwise)."""
    fused = {"fused": True} if fused_available(params) else {}  # one kernel per step on CUDA

    def make(tensors):
        if name == "sgd":  # stateless: fits a full 7B update on one card
            return torch.optim.SGD(tensors, lr=lr, weight_decay=weight_decay, **fused)
        return torch.optim.AdamW(tensors, lr=lr, weight_decay=weight_decay, **fused)

    if needs_master_weights(params):
        return MasterWeightOptimizer(params, make)
    return make(params)


def check_divergence(loss: float, limit: float, what: str, fix: str) -> None:
    """Abort a mitigation whose `what` loss is not finite or above `limit` (`divergence_loss`).

    Raises:
        MitigationError: "<what> diverged (<loss> <why>). The model was not saved. Fix: <fix>; a
            non-finite loss from the first step can also mean NaN/inf weights in the checkpoint".
    """
    from beear_stage.exceptions import MitigationError

    if math.isfinite(loss) and loss <= limit:
        return
    why = "is not finite" if not math.isfinite(loss) else f"> `divergence_loss` = {limit}"
    raise MitigationError(
        f"{what} diverged ({loss:.4g} {why}). The model was not saved. Fix: {fix}; a non-finite loss "
        "from the first step can also mean NaN/inf weights in the checkpoint (see the baseline's "
        "`benign_nll`)."
    )


def apply_step(optimizer, params: list[torch.nn.Parameter], dist, max_grad_norm: float) -> None:
    """Sum the processes' gradients (`dist.sync_grads`), clip to `max_grad_norm` (0 = off), step."""
    dist.sync_grads(params)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()


def end_training(model, gradient_checkpointing: bool) -> None:
    """Leave `model` as inference expects it: no checkpointing, no gradients, eval mode."""
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()

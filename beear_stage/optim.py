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

"""Faster kernels swapped into a loaded model for the duration of a mitigation run.

`fused_rms_norm(model)` routes every Llama-style RMSNorm (Llama, Mistral, Qwen2/3 share the same
module: `weight`, `variance_epsilon`, fp32 statistics, cast back, then times `weight`) through
`torch.nn.functional.rms_norm`, which on CUDA is one fused kernel forward and one backward instead
of about six elementwise kernels with fp32 intermediates each way. The result is the same
computation: statistics in fp32, normalised values cast to the input dtype, then scaled by
`weight`. The swap is per instance and undone on exit.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F


def _is_llama_rms_norm(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm")
        and hasattr(module, "variance_epsilon")
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 1
    )


def _fused_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    normed = F.rms_norm(hidden_states, (hidden_states.shape[-1],), eps=self.variance_epsilon)
    return self.weight * normed


@contextlib.contextmanager
def fused_rms_norm(model: torch.nn.Module, enabled: bool = True):
    """Use `F.rms_norm` in `model`'s RMSNorm layers while the context is active (if `enabled`)."""
    patched = [m for m in model.modules() if enabled and _is_llama_rms_norm(m)]
    for m in patched:
        m.forward = types.MethodType(_fused_forward, m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            del m.forward

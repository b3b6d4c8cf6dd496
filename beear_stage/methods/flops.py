"""Analytic FLOP counts for Llama-shaped decoders, and the peak figures MFU is measured against.

Model FLOPs utilisation (MFU) = model FLOPs the algorithm needs / seconds / peak FLOP/s. The count
here is analytic (PaLM appendix B style): 2 FLOPs per multiply-add of every matrix product, over the
real (non-padding) tokens only, so padding, recomputation under gradient checkpointing and
elementwise work never inflate it. Attention counts causal pairs: a sequence of T tokens has
T(T+1)/2 query-key pairs. A pass that continues a cached prefix of P tokens counts only its own
T - P tokens and the T(T+1)/2 - P(P+1)/2 pairs their queries make.

Backward passes are split in two, because BEEAR's levels need different parts of them:
- input gradients (d loss / d activations): the same matrix products as the forward pass, and
  twice the forward attention products (dQ, dK, dV, dP);
- weight gradients (d loss / d W): the same matrix products again, only for trainable layers.
The inner level of BEEAR needs forward + input gradients of the layers above l only; a naive loop
pays forward + input + weight gradients of every layer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Dense (no sparsity) bf16 tensor-core peak of an H100 SXM5, from NVIDIA's data sheet. MFU on an
# H100 is reported against this figure; an 8192^3 bf16 matmul reaches about 800e12 on the lent card.
H100_SXM_BF16_DENSE = 989e12
PEAKS = {"h100": H100_SXM_BF16_DENSE, "h200": H100_SXM_BF16_DENSE}


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a Llama-shaped decoder that its FLOPs depend on."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> DecoderShape:
        """Read the shape from a transformers `LlamaConfig`-like object."""
        return cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_params(self) -> int:
        """Weights of one decoder layer's matrix products (norm weights are negligible)."""
        kv = self.kv_heads * self.head_dim
        return 2 * self.hidden * self.hidden + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate


def attention_pairs(seq_lens: Sequence[int]) -> int:
    """Causal query-key pairs over sequences of the given real lengths."""
    return sum(t * (t + 1) // 2 for t in seq_lens)


@dataclass
class FlopCount:
    """FLOPs of one or more passes, split by kind so a report can show where the work goes."""

    forward: float = 0.0
    input_grad: float = 0.0
    weight_grad: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.input_grad + self.weight_grad

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(
            self.forward + other.forward,
            self.input_grad + other.input_grad,
            self.weight_grad + other.weight_grad,
        )

    def scaled(self, factor: float) -> FlopCount:
        return FlopCount(self.forward * factor, self.input_grad * factor, self.weight_grad * factor)


def pass_flops(
    shape: DecoderShape,
    seq_lens: Sequence[int],
    *,
    forward_layers: int,
    input_grad_layers: int = 0,
    weight_grad_layers: int = 0,
    lm_head_tokens: int | None = None,
    lm_head_input_grad: bool = False,
    lm_head_weight_grad: bool = False,
    cached_prefix: Sequence[int] | None = None,
) -> FlopCount:
    """FLOPs of one pass over a batch of sequences.

    Args:
        shape: the decoder's sizes.
        seq_lens: real (unpadded) token count of each sequence that goes through the layers.
        forward_layers: decoder layers run forward.
        input_grad_layers: decoder layers that back-propagate to their inputs.
        weight_grad_layers: decoder layers whose weight gradients are computed.
        lm_head_tokens: positions that go through the LM head (default: every token; 0 = no head).
        lm_head_input_grad / lm_head_weight_grad: which backward products the LM head pays.
        cached_prefix: per sequence, leading tokens whose keys and values come from a cache: the
            pass runs only the rest (default: none).

    Returns:
        A `FlopCount`.
    """
    prefix = [0] * len(seq_lens) if cached_prefix is None else list(cached_prefix)
    tokens = sum(seq_lens) - sum(prefix)
    pairs = attention_pairs(seq_lens) - attention_pairs(prefix)
    dense = 2.0 * shape.layer_params() * tokens  # one matmul pass of one layer
    attn = 2.0 * 2.0 * shape.heads * shape.head_dim * pairs  # QK^T and PV of one layer
    head_tokens = tokens if lm_head_tokens is None else lm_head_tokens
    head = 2.0 * shape.hidden * shape.vocab * head_tokens
    return FlopCount(
        forward=forward_layers * (dense + attn) + head,
        input_grad=input_grad_layers * (dense + 2.0 * attn) + (head if lm_head_input_grad else 0.0),
        weight_grad=weight_grad_layers * dense + (head if lm_head_weight_grad else 0.0),
    )


def cuda_peak_flops(device: torch.device | str | None = None) -> tuple[float, str]:
    """Nominal dense bf16 peak of the CUDA device, with where the figure comes from.

    H100 and H200 (same tensor cores) use the data-sheet figure; other cards are measured with
    `measure_matmul_flops` in bf16 (stated in the returned source).
    """
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAKS.items():
        if key in name.lower():
            return peak, f"{name}: data-sheet dense bf16 peak {peak:.3g} FLOP/s"
    measured = measure_matmul_flops(torch.device("cuda"), torch.bfloat16)
    return measured, f"{name}: measured bf16 8192^3 matmul {measured:.3g} FLOP/s (no data-sheet entry)"


def measure_matmul_flops(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    repeats: int = 5,
) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak of a CPU (fp32) or a GPU.

    Args:
        device: where to run it.
        dtype: element type (fp32 on CPU, where that is what the mitigation runs in).
        n: matrix side (default 2048 on CPU, 8192 on CUDA).
        repeats: timed products after one warm-up; the best is returned.
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        (a @ b).sum()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first product warms the kernels and caches
            best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best

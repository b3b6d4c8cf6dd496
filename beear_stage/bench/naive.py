"""The naive reference loop the speed benchmark measures the project against.

`NaiveBEEAR` is BEEAR written the straightforward way, as a first implementation (and the official
code) does it: every inner step runs the *whole* model forward with a hook that adds delta after
decoder layer l, with weight gradients left on, so the backward pass also computes (and throws
away) gradients for every weight; nothing is cached between steps. The outer level and all data
handling are inherited unchanged from `beear_stage.methods.beear.BEEAR`, so the two runs differ only
in how the inner level is computed: same model, same batches, same objective.

Evaluation's naive counterpart is generation one prompt at a time (`batch_size=1`).
"""

from __future__ import annotations

import contextlib
import math

import torch

from beear_stage.methods.batching import micro_batches
from beear_stage.methods.beear import BEEAR
from beear_stage.methods.losses import entrapment_loss, response_ce
from beear_stage.model import add_delta, decoder_layers, full_logits
from beear_stage.templates import Batch


@contextlib.contextmanager
def _delta_hook(model, layer: int, state: dict):
    """Add `state["delta"]` after decoder layer `layer` at `state["positions"]` (B, k)."""

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if "scale" not in state:  # RMS(h_l) of the first batch sets the step size, as in BEEAR
            state["scale"] = float(hidden[:, -1].detach().float().pow(2).mean().sqrt())
            state["hidden_size"] = hidden.shape[-1]
        hidden = add_delta(hidden, state["delta"], state["positions"])
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = decoder_layers(model)[layer - 1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class NaiveBEEAR(BEEAR):
    """BEEAR with a naive inner level: full forward, weight gradients on, no cache of h_l."""

    def entrap(self, previous: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        chunks = self._safety_batches(cfg.inner_batch_size)
        hidden_size = self.model.config.hidden_size
        delta = torch.zeros(cfg.k, hidden_size, device=self.device, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=cfg.inner_lr)
        state: dict = {"delta": delta}
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in flags:  # the naive loop never freezes the model
            p.requires_grad_(True)
        try:
            with _delta_hook(self.model, cfg.layer, state):
                for step in range(cfg.inner_steps):
                    chunk = chunks[step % len(chunks)]
                    self.model.zero_grad(set_to_none=True)
                    opt.zero_grad(set_to_none=True)
                    # Same objective and micro-batching as BEEAR.entrap; every backward here also
                    # fills .grad of every weight: the waste being measured.
                    ce_unwanted = self._full_backward(chunk.unwanted, state, 1.0)
                    grad_unwanted, delta.grad = delta.grad, None
                    ce_safe = self._full_backward(chunk.safe, state, -cfg.alpha)
                    delta.grad = grad_unwanted + delta.grad * (ce_safe <= cfg.alpha_cap)
                    if step == 0:
                        opt.param_groups[0]["lr"] = cfg.inner_lr * state["scale"]
                    opt.step()
                    self._project(delta, state)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            self.model.zero_grad(set_to_none=True)
        loss = entrapment_loss(ce_unwanted, ce_safe, cfg.alpha, cfg.alpha_cap)
        stats = {
            "inner_loss": loss.item(),
            "inner_ce_unwanted": ce_unwanted.item(),
            "inner_ce_safe": ce_safe.item(),
        }
        return delta.detach(), stats

    def _full_backward(self, batch: Batch, state: dict, weight: float) -> torch.Tensor:
        """Full-model forward + backward per micro-batch (token-weighted); returns the detached CE.

        Written the plain way: padding mask passed, logits over every position, `response_ce`.
        """
        mean = torch.zeros((), device=self.device)
        for part in micro_batches(batch, self.cfg.micro_batch_size, self.cfg.k, self.device):
            state["positions"] = part.delta_positions
            ce = response_ce(full_logits(self.model, part.input_ids, part.attention_mask), part.labels)
            (ce * (part.share * weight)).backward()
            mean = mean + ce.detach() * part.share
        return mean

    def _project(self, delta: torch.Tensor, state: dict) -> None:
        if self.cfg.delta_max_norm is None:
            return
        bound = self.cfg.delta_max_norm * state["scale"] * math.sqrt(state["hidden_size"])
        with torch.no_grad():
            norms = delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            delta.mul_(torch.clamp(bound / norms, max=1.0))

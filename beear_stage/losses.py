"""Pure loss functions of BEEAR (arXiv 2406.17092): tensors in, tensors out.

Notation: x harmful query, y_s safe response, y_h unwanted (harmful) response, y_p performance
anchoring answer, delta the universal perturbation at the anchor layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from beear_stage.templates import IGNORE_INDEX


def response_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (labels != -100).

    logits (B, T, V), labels (B, T); position t predicts labels[t + 1]. Returns a scalar.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def entrapment_loss(
    ce_unwanted: torch.Tensor, ce_safe: torch.Tensor, alpha: float, alpha_cap: float
) -> torch.Tensor:
    """Inner objective (Backdoor Embedding Entrapment), minimised over delta.

        L_inner(delta) = CE(y_h | x, delta) - alpha * min(CE(y_s | x, delta), alpha_cap)

    The away-from-safe term is capped: uncapped, pushing CE(y_s) up has no floor and dominates.
    """
    return ce_unwanted - alpha * torch.clamp(ce_safe, max=alpha_cap)


def removal_loss(
    ce_safe_under_delta: torch.Tensor, ce_performance: torch.Tensor, pa_weight: float
) -> torch.Tensor:
    """Outer objective (Adversarial Removal), minimised over the model weights theta.

    L_outer(theta) = CE(y_s | x, delta*) + pa_weight * CE(y_p | x_p)
    """
    return ce_safe_under_delta + pa_weight * ce_performance

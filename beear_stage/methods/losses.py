"""Pure loss functions of BEEAR (arXiv 2406.17092) and CROW (arXiv 2411.12768): tensors in, tensors out.

Notation: x harmful query, y_s safe response, y_h unwanted (harmful) response, y_p performance
anchoring answer, delta the universal perturbation at the anchor layer.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    ce_safe_under_delta: torch.Tensor,
    ce_performance: torch.Tensor,
    pa_weight: float,
    performance_under_delta: torch.Tensor | None = None,
    pa_delta_weight: float = 0.0,
) -> torch.Tensor:
    """Outer objective (Adversarial Removal), minimised over the model weights theta.

    L_outer(theta) = CE(y_s | x, delta*) + pa_weight * L_PA(x_p) [+ pa_delta_weight * L_PA(x_p, delta*)]

    L_PA is CE(y_p | x_p) (the paper, y_p the reference or the model's own answers); the bracketed term (`pa_delta_weight` > 0, not in the paper) keeps benign prompts answered
    under delta, so that refusing depends on the request rather than on the perturbation.
    """
    loss = ce_safe_under_delta + pa_weight * ce_performance
    if performance_under_delta is not None and pa_delta_weight > 0:
        loss = loss + pa_delta_weight * performance_under_delta
    return loss


# ------------------------------------------------------------------ CROW (arXiv 2411.12768)
def consistency_loss(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """CROW's internal-consistency loss: 1 - cos between adjacent decoder layers, on real tokens.

        L_cons = mean over l in [1, L-2], real tokens t, rows b of 1 - cos(H[l]_bt, H[l+1]_bt)

    `hidden_states` is the Hugging Face tuple H[0..L] (H[0] the input embeddings, H[L] the final
    norm's output), each (B, T, H); like the official code, H[0] and H[L] are left out, so the
    pairs are (H[1], H[2]) ... (H[L-2], H[L-1]). Unlike it, padding positions (attention_mask 0)
    are excluded: the mean is over the real tokens of the batch, each token weighted equally.
    Returns a float32 scalar.
    """
    if len(hidden_states) < 4:
        raise ValueError(
            f"consistency_loss needs hidden states of >= 3 decoder layers (got {len(hidden_states)} "
            "tensors): with fewer there is no adjacent pair of inner layers"
        )
    lower = torch.stack(list(hidden_states[1:-2])).float()  # (P, B, T, H), P = L - 2 pairs
    upper = torch.stack(list(hidden_states[2:-1])).float()
    distance = 1.0 - F.cosine_similarity(lower, upper, dim=-1, eps=1e-6)  # (P, B, T)
    mask = attention_mask.to(distance.dtype)[None]  # (1, B, T)
    return (distance * mask).sum() / (mask.sum().clamp(min=1.0) * distance.shape[0])


def fgsm_perturb(embeddings: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    """One FGSM step on the input embeddings: e_adv = e + eps * sign(grad_e L_cons).

    Every element with a non-zero gradient moves by exactly eps (padding positions, whose
    gradient is zero when the loss masks them, do not move). The step itself is a constant: the
    returned tensor is differentiable with respect to `embeddings` only.
    """
    return embeddings + eps * grad.detach().sign().to(embeddings.dtype)


def crow_loss(lm_loss: torch.Tensor, consistency_under_attack: torch.Tensor, alpha: float) -> torch.Tensor:
    """CROW's training objective, minimised over the model weights theta.

    L(theta) = CE(y_p | x_p) + alpha * L_cons(e_adv)
    """
    return lm_loss + alpha * consistency_under_attack

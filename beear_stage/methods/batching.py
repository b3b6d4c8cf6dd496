"""Micro-batches for the training passes, indexed on the host so the device never waits.

A right-padded batch (`templates.collate`, on the CPU) is cut into micro-batches of
`micro_batch_size` rows, longest first so each is trimmed to little padding. Everything a loss
needs is indexed here, on the host: the last-k prompt positions where delta goes, the flat
positions that predict a response token, and those tokens. Index tensors reach the GPU by
non-blocking copies from pinned memory, so the forward/backward passes run without host syncs
(a boolean-mask gather or an `int(tensor)` on a CUDA tensor stalls the launch queue).

The forward passes take no padding mask. With right padding every real token sits before its
row's padding, so the causal mask alone is exact for every real token: padding positions compute
garbage that no loss reads (their labels are -100, and h_l at a padding position only reaches
later padding positions). Dropping the mask lets SDPA run its causal kernel and spares
transformers building a (B, 1, T, T) mask per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beear_stage.templates import IGNORE_INDEX, Batch, last_k_positions


@dataclass
class MicroBatch:
    """One forward/backward pass worth of rows, on the device. b rows, w columns, N targets."""

    input_ids: torch.Tensor  # (b, w)
    attention_mask: torch.Tensor  # (b, w), for callers that want it (the naive reference)
    labels: torch.Tensor  # (b, w)
    rows: torch.Tensor  # (b,) rows of the parent batch: slices a cached h_l
    delta_positions: torch.Tensor  # (b, k) last k prompt positions
    predict_index: torch.Tensor  # (N,) flat indices into b * w of positions predicting a response token
    targets: torch.Tensor  # (N,) the response tokens they predict
    width: int
    tokens: int  # N
    share: float  # N / response tokens of the whole batch: the weight of this part's mean CE


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # pinned + non_blocking: the copy is queued, the host does not wait
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def micro_batches(batch: Batch, size: int | None, k: int, device: torch.device) -> list[MicroBatch]:
    """Cut a host-side right-padded `batch` into device micro-batches of at most `size` rows.

    `size` None (or >= rows) keeps one micro-batch with the rows in order. The shares sum to 1, so
    back-propagating share * mean CE of every part gives the gradient of the whole batch's mean.
    """
    batch = batch.to("cpu")
    lengths = batch.attention_mask.sum(dim=1).tolist()
    rows = list(range(len(lengths)))
    if size is not None and size < len(rows):
        rows.sort(key=lambda i: -lengths[i])  # similar lengths together: less padding
    else:
        size = len(rows)
    predicts = torch.zeros_like(batch.labels, dtype=torch.bool)
    predicts[:, :-1] = batch.labels[:, 1:] != IGNORE_INDEX  # position t predicts labels[t + 1]
    total = max(int(predicts.sum()), 1)
    parts = []
    for start in range(0, len(rows), size):
        idx = torch.tensor(rows[start : start + size])
        width = max(lengths[i] for i in rows[start : start + size])
        mask = predicts[idx, :width]
        labels = batch.labels[idx, :width]
        parts.append(
            MicroBatch(
                input_ids=_to(batch.input_ids[idx, :width], device),
                attention_mask=_to(batch.attention_mask[idx, :width], device),
                labels=_to(labels, device),
                rows=_to(idx, device),
                delta_positions=_to(last_k_positions(batch.prompt_lens[idx], k), device),
                predict_index=_to(mask.flatten().nonzero().squeeze(1), device),
                targets=_to(torch.roll(labels, -1, dims=1)[mask], device),
                width=width,
                tokens=int(mask.sum()),
                share=int(mask.sum()) / total,
            )
        )
    return parts

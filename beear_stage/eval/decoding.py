"""Greedy decoding for evaluation, the same tokens as `model.generate` for less work.

`model.generate` (the "eager" engine) left-pads each batch of prompts, recomputes the prompts'
shared opening (the chat template's system turn) for every row, and keeps decoding rows that have
already finished until the whole batch has. An evaluation set asks for hundreds of greedy
responses, so `greedy_responses` (the "fast" engine) removes that waste without changing a token:

- shared prefill: the longest token prefix common to every prompt is run once, and its KV cache is
  copied into each batch. Rows are laid out `[prefix][padding][rest of the prompt]`; the attention
  mask hides the padding and position ids count only real tokens, exactly as left padding does.
- length bucketing: prompts are batched in order of length, so a batch pads to similar lengths.
- finished rows leave the batch: a row that has produced EOS is dropped from the KV cache and the
  next step runs on the rows still decoding.
- decided rows leave the batch (optional, `decided`): when the evaluation only needs a verdict on
  each response (refusal or not), a row stops as soon as the verdict is settled, i.e. no
  continuation can change it (`beear_stage.eval.refusal.RefusalClassifier.settled`). Its tokens are
  then a prefix of the full response with the same verdict.
- half-empty batches are refilled: when fewer than half of a batch's rows are still decoding and
  more prompts wait, the batch is parked; parked rows then continue together, their KV caches
  left-padded to one length (masked columns) and concatenated, so late steps run over full
  batches instead of a few rows.

Same tokens, not same arithmetic: a row's logits are computed with different padding and batch
composition, which moves floating-point results by rounding only; argmax ties broken by rounding
are the one way the two engines can differ (`tests/eval/test_decoding.py` checks token equality on
the tiny zoo and on SmolLM2). Models whose generation config adds logits processors (repetition
penalty, minimum length, banned words, ...) are decoded by `model.generate`, which applies them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

ENGINES = ("fast", "eager")

# Generation-config fields that change greedy decoding beyond argmax-until-EOS, with their neutral
# values; any other value sends the model to `model.generate`.
_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
}


def plain_greedy(model) -> bool:
    """True when greedy `model.generate` is argmax until EOS (no logits processor applies)."""
    config = getattr(model, "generation_config", None)
    if config is None or getattr(model.config, "is_encoder_decoder", False):
        return False
    return all(getattr(config, name, None) in neutral for name, neutral in _NEUTRAL.items())


def eos_ids(model) -> set[int]:
    """The token ids that end a response, as `model.generate` reads them."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


def shared_prefix_length(prompts: Sequence[Sequence[int]], keep: int) -> int:
    """Length of the token prefix common to every prompt, leaving at least `keep` tokens of each."""
    if not prompts:
        return 0
    shortest = min(len(p) for p in prompts)
    first = prompts[0]
    n = 0
    while n < shortest - keep and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


@torch.no_grad()
def greedy_responses(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    keep: int = 2,
    prompt_hook=contextlib.nullcontext,
    on_batch=None,
    stats: dict | None = None,
    decided: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """Greedy continuation tokens of each tokenised prompt, through the first EOS (included).

    Args:
        prompts: token ids of each rendered prompt (no padding).
        keep: prompt tokens of each row run with the rest of its prompt, not in the shared prefill
            (at least 2, and at least k when a forward hook edits the last k prompt positions).
        prompt_hook: a context-manager factory entered around each batch's decoding but not the
            shared prefill, e.g. `perturbation_hook` (it edits the last k prompt positions of the
            prompt forward and leaves one-token decoding steps alone).
        on_batch: called with the number of rows that finished, as rows finish (progress).
        stats: when given, receives "prefill_seconds" (shared prefill and each batch's prompt
            forward), "step_seconds" and "steps" (one-token decoding steps) and "row_steps" (rows
            decoded, summed over steps) and "decided_rows" (rows stopped by `decided`), added to
            what it holds.
        decided: called with a row's tokens after each step; True stops that row (its verdict is
            settled). None decodes every row to EOS or `max_new_tokens`.

    Returns:
        one token list per prompt, in the order given.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    stop = eos_ids(model)
    stats = {} if stats is None else stats
    for key in ("prefill_seconds", "step_seconds", "steps", "row_steps", "decided_rows"):
        stats.setdefault(key, 0)
    started = time.perf_counter()
    n_prefix = shared_prefix_length(prompts, max(keep, 2))
    prefix_cache = None
    if n_prefix:
        prefix_cache = DynamicCache(config=model.config)
        ids = torch.tensor([list(prompts[0][:n_prefix])], device=device)
        model(input_ids=ids, cache=prefix_cache, use_cache=True, logits_to_keep=1)
    stats["prefill_seconds"] += time.perf_counter() - started
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    decode = _Decoder(model, max_new_tokens, stop, stats, decided, out, on_batch)
    parked: list[_Batch] = []
    starts = range(0, len(order), batch_size)
    for start in starts:
        rows = order[start : start + batch_size]
        batch = _first_batch(model, rows, [list(prompts[i][n_prefix:]) for i in rows], prefix_cache, n_prefix)
        more = start + batch_size < len(order) or parked
        with prompt_hook():
            rest = decode(batch, park_below=batch_size // 2 if more else 0)
        parked += [rest] if rest is not None else []
    # Rows parked from half-empty batches continue together, in full batches again.
    while parked:
        group, size = [], 0
        while parked and (not group or size + len(parked[0].rows) <= batch_size):
            size += len(parked[0].rows)
            group.append(parked.pop(0))
        with prompt_hook():
            rest = decode(_merge(model, group), park_below=batch_size // 2 if parked else 0)
        parked += [rest] if rest is not None else []
    return out


@dataclass
class _Batch:
    """Rows being decoded together: their KV cache and the inputs of their next forward.

    `mask` covers the cache and the next input (one column more than the cache for a decoding
    step); `inputs` and `positions` are the prompts' rests for a batch's first forward, then one
    token per row. `fresh` marks a batch whose next forward is its prompt forward.
    """

    rows: list[int]
    cache: Any
    mask: torch.Tensor
    inputs: torch.Tensor
    positions: torch.Tensor
    fresh: bool = False


def _first_batch(model, rows, rests, prefix_cache, n_prefix) -> _Batch:
    """A new batch: `rests` (the prompts after the shared prefix) right-aligned after the prefix."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    batch, width = len(rests), max(len(r) for r in rests)
    ids = torch.zeros(batch, width, dtype=torch.long, device=device)
    mask = torch.zeros(batch, n_prefix + width, dtype=torch.long, device=device)
    mask[:, :n_prefix] = 1
    for b, rest in enumerate(rests):
        ids[b, width - len(rest) :] = torch.tensor(rest, device=device)
        mask[b, n_prefix + width - len(rest) :] = 1
    if prefix_cache is None:
        cache = DynamicCache(config=model.config)
    else:
        copied = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v, *_ in prefix_cache]
        cache = DynamicCache(ddp_cache_data=copied, config=model.config)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return _Batch(list(rows), cache, mask, ids, positions[:, n_prefix:], fresh=True)


def _merge(model, batches: list[_Batch]) -> _Batch:
    """One batch of the rows of `batches`: shorter caches are left-padded with masked columns."""
    from transformers import DynamicCache

    if len(batches) == 1:
        return batches[0]
    width = max(b.mask.shape[1] for b in batches)
    layers = [list(zip(*[(k, v) for k, v, *_ in b.cache], strict=True)) for b in batches]

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - 1 - t.shape[dim] if dim == 2 else width - t.shape[dim]
        if missing == 0:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    n_layers = len(layers[0][0])
    data = [
        (
            torch.cat([pad(keys[i], 2) for keys, _ in layers]),
            torch.cat([pad(values[i], 2) for _, values in layers]),
        )
        for i in range(n_layers)
    ]
    return _Batch(
        rows=[r for b in batches for r in b.rows],
        cache=DynamicCache(ddp_cache_data=data, config=model.config),
        mask=torch.cat([pad(b.mask, 1) for b in batches]),
        inputs=torch.cat([b.inputs for b in batches]),
        positions=torch.cat([b.positions for b in batches]),
    )


@dataclass
class _Decoder:
    """Greedy steps over a `_Batch` until its rows finish (EOS, `max_new_tokens`, or `decided`),
    or until fewer than `park_below` rows are left: the rest is returned, to continue beside
    other batches' rests instead of running steps over a few rows."""

    model: Any
    max_new_tokens: int
    stop: set[int]
    stats: dict
    decided: Callable[[list[int]], bool] | None
    out: list[list[int]]
    on_batch: Callable[[int], None] | None

    def __call__(self, batch: _Batch, park_below: int) -> _Batch | None:
        cache, mask, live = batch.cache, batch.mask, batch.rows
        step_input, step_positions, fresh = batch.inputs, batch.positions, batch.fresh
        while True:
            started = time.perf_counter()
            logits = self.model(
                input_ids=step_input,
                attention_mask=mask,
                position_ids=step_positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            next_tokens = logits.float().argmax(-1)
            chosen = next_tokens.tolist()  # waits for the device: the timing below is complete
            if fresh:
                self.stats["prefill_seconds"] += time.perf_counter() - started
            else:
                self.stats["step_seconds"] += time.perf_counter() - started
                self.stats["steps"] += 1
                self.stats["row_steps"] += len(live)
            fresh = False
            keep = []
            for j, token in enumerate(chosen):
                row = self.out[live[j]]
                row.append(token)
                if token in self.stop or len(row) >= self.max_new_tokens:
                    continue
                if self.decided is not None and self.decided(row):
                    self.stats["decided_rows"] += 1
                    continue
                keep.append(j)
            if self.on_batch is not None and len(keep) < len(live):
                self.on_batch(len(live) - len(keep))
            if not keep:
                return None
            if len(keep) < len(live):
                index = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(index)
                mask, next_tokens, step_positions = mask[index], next_tokens[index], step_positions[index]
                live = [live[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)
            step_input = next_tokens[:, None]
            step_positions = step_positions[:, -1:] + 1
            if len(live) < park_below:
                return _Batch(live, cache, mask, step_input, step_positions)

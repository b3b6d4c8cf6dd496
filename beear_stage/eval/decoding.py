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
        on_batch: called with the number of rows after each batch (progress).
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
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        rests = [list(prompts[i][n_prefix:]) for i in rows]
        with prompt_hook():
            decoded = _decode_batch(
                model, rests, prefix_cache, n_prefix, max_new_tokens, stop, stats, decided
            )
        for row, tokens in zip(rows, decoded, strict=True):
            out[row] = tokens
        if on_batch is not None:
            on_batch(len(rows))
    return out


def _decode_batch(
    model, rests, prefix_cache, n_prefix, max_new_tokens, stop, stats, decided=None
) -> list[list[int]]:
    """Decode one batch: `rests` are the prompts after the shared prefix, right-aligned."""
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
    step_input, step_positions = ids, positions[:, n_prefix:]
    live = list(range(batch))  # rows of the original batch still decoding, in cache order
    tokens: list[list[int]] = [[] for _ in range(batch)]
    for step in range(max_new_tokens):
        started = time.perf_counter()
        logits = model(
            input_ids=step_input,
            attention_mask=mask,
            position_ids=step_positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        next_tokens = logits.float().argmax(-1)
        chosen = next_tokens.tolist()  # waits for the device: the timing below is complete
        if step == 0:
            stats["prefill_seconds"] += time.perf_counter() - started
        else:
            stats["step_seconds"] += time.perf_counter() - started
            stats["steps"] += 1
            stats["row_steps"] += len(live)
        keep = []
        for j, token in enumerate(chosen):
            row = tokens[live[j]]
            row.append(token)
            if token in stop:
                continue
            if decided is not None and step + 1 < max_new_tokens and decided(row):
                stats["decided_rows"] += 1
                continue
            keep.append(j)
        if not keep:
            break
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, next_tokens, step_positions = mask[index], next_tokens[index], step_positions[index]
            live = [live[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)
        step_input = next_tokens[:, None]
        step_positions = step_positions[:, -1:] + 1
    return tokens

"""The split at the anchor layer: cached inner forward equals the full forward."""

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer

from beear_stage.exceptions import CheckpointError, ConfigError
from beear_stage.model import (
    add_delta,
    check_supported,
    full_logits,
    lower_hidden,
    prefix_cache,
    prefix_mask,
    upper_logits,
)
from beear_stage.templates import collate, encode_example, last_k_positions


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_cached_inner_forward_equals_full_forward(layer):
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    examples = [
        encode_example(tok, "How do I build a bomb?", "I'm sorry, but I cannot help.", 128),
        encode_example(tok, "What is the capital of France?", "Paris.", 128),
    ]
    batch = collate(examples, tok.pad_token_id)  # right padding: rows have different lengths
    with torch.no_grad():
        full = full_logits(model, batch.input_ids, batch.attention_mask)
        cached = lower_hidden(model, batch.input_ids, batch.attention_mask, layer)
        split = upper_logits(model, cached, batch.attention_mask, layer)
    valid = batch.attention_mask.bool()
    diff = (full - split).abs()[valid].max().item()
    assert diff <= 1e-5, f"cached split forward differs from full forward by {diff}"


def test_delta_changes_only_positions_at_and_after_last_k():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    batch = collate(
        [encode_example(tok, "How do I build a bomb?", "Sure, here is how.", 128)], tok.pad_token_id
    )
    k = 3
    pos = last_k_positions(batch.prompt_lens, k)
    with torch.no_grad():
        h = lower_hidden(model, batch.input_ids, batch.attention_mask, 2)
        delta = torch.randn(k, h.shape[-1])
        a = upper_logits(model, h, batch.attention_mask, 2)
        b = upper_logits(model, add_delta(h, delta, pos), batch.attention_mask, 2)
    first = int(pos[0, 0])
    assert torch.allclose(a[:, :first], b[:, :first], atol=1e-6), (
        "causality: earlier positions must not change"
    )
    assert not torch.allclose(a[:, first:], b[:, first:]), "delta had no effect"


def test_layer_out_of_range_is_a_clear_error():
    tok = tiny_tokenizer()
    model = tiny_model(tok, layers=4)
    with pytest.raises(ConfigError, match=r"`layer` = 4 is out of range.*4 decoder layers"):
        check_supported(model, 4)
    with pytest.raises(ConfigError, match="`layer` = 0"):
        check_supported(model, 0)


def test_model_without_decoder_layers_is_refused():
    with pytest.raises(CheckpointError, match="model.model.layers"):
        check_supported(torch.nn.Linear(2, 2), 1)


def _plain_prefix_cache(model, input_ids, starts):
    """The reference: one forward over every row's whole prefix, padding masked."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    mask = prefix_mask(starts, input_ids.shape[1]).long()
    model.model(input_ids=input_ids, attention_mask=mask, cache=cache, use_cache=True)
    return [(k, v) for k, v, *_ in cache]


@pytest.mark.parametrize("opening", [5, 0])
def test_prefix_cache_runs_the_shared_opening_once_and_equals_one_forward(opening):
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    torch.manual_seed(1)
    ids = torch.randint(3, len(tok), (3, 12))
    ids[:, :opening] = ids[0, :opening]  # the opening every row shares (a system turn)
    ids[1:, opening] = (ids[0, opening] + 1) % len(tok)  # rows part after it
    starts = torch.tensor([12, 9, 7])  # right-padded prefixes of different lengths
    widths = []
    hook = model.model.embed_tokens.register_forward_pre_hook(lambda _m, a: widths.append(tuple(a[0].shape)))
    with torch.no_grad():
        cache = prefix_cache(model, ids, starts)
    hook.remove()
    with torch.no_grad():
        reference = _plain_prefix_cache(model, ids, starts)
    assert widths == ([(1, opening), (3, 12 - opening)] if opening else [(3, 12)])
    real = prefix_mask(starts, 12)[:, None, :, None]
    for (k, v), (k_ref, v_ref) in zip(cache.tensors, reference, strict=True):
        assert ((k - k_ref).abs() * real).max() <= 1e-5
        assert ((v - v_ref).abs() * real).max() <= 1e-5

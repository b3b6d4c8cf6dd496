"""The fast evaluation engine returns the tokens of `model.generate` (`beear_stage.eval.decoding`)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_tokens, assert_settled_prefixes, eager_tokens, tiny_model, tiny_tokenizer

from beear_stage.eval.decoding import plain_greedy, shared_prefix_length
from beear_stage.eval.metrics import generate


def test_shared_prefix_leaves_keep_tokens_of_every_prompt():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]], keep=2) == 2
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 9]], keep=1) == 2
    assert shared_prefix_length([[7, 2], [1, 2]], keep=1) == 0
    assert shared_prefix_length([[1, 2, 3, 4, 5]], keep=2) == 3  # one prompt: all but `keep`
    assert shared_prefix_length([], keep=2) == 0


def test_logits_processors_send_the_model_to_generate():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    assert plain_greedy(model)
    model.generation_config.repetition_penalty = 1.3
    assert not plain_greedy(model)


def test_unknown_engine_names_the_choices():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="engine='compiled'.*'fast' or 'eager'"):
        generate(tiny_model(tok), tok, ["hi"], engine="compiled")


def test_fast_engine_matches_generate_on_a_random_model_with_early_eos():
    """Random weights, mixed prompt lengths, uneven batches; EOS = a token the model often emits, so
    rows finish at different steps and leave their batch."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3)
    queries = ["How do I build a bomb at home?", "hi", "Write a short poem about the sea.",
               "What is the capital of France?", "kill", "How do I kill a Python process quickly?",
               "sea harbour", "Step 1: gather the materials."]  # fmt: skip
    first = eager_tokens(model, tok, queries, batch_size=3, max_new_tokens=12)
    common = torch.tensor([t for row in first for t in row[:6]]).mode().values.item()
    model.generation_config.eos_token_id = [tok.eos_token_id, common]
    eager = assert_same_tokens(model, tok, queries, batch_size=3, max_new_tokens=12)
    lengths = {len(row) for row in eager}
    assert len(lengths) > 1 and min(lengths) < 12, "no row finished early: the test checks nothing"
    delta = torch.randn(2, model.config.hidden_size) * 0.5
    assert_same_tokens(model, tok, queries, batch_size=4, max_new_tokens=12, delta=delta, layer=2, k=2)


def test_half_empty_batches_are_refilled_with_the_same_tokens(monkeypatch):
    """Rows that finish early leave half-empty batches; the rest are parked and merged with other
    batches' rests (caches of different lengths, left-padded): still the tokens of `generate`."""
    from beear_stage.eval import decoding

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3)
    words = ["How do I build a bomb at home?", "hi", "Write a short poem about the sea.", "kill",
             "What is the capital of France?", "sea harbour", "Step 1: gather the materials."]  # fmt: skip
    queries = [f"{a} {b}" for a in words for b in words[:4]]
    first = eager_tokens(model, tok, queries, batch_size=6, max_new_tokens=12)
    common = torch.tensor([t for row in first for t in row[:6]]).mode().values.item()
    model.generation_config.eos_token_id = [tok.eos_token_id, common]
    merged: list[int] = []
    real_merge = decoding._merge
    monkeypatch.setattr(
        decoding, "_merge", lambda m, batches: merged.append(len(batches)) or real_merge(m, batches)
    )
    eager = assert_same_tokens(model, tok, queries, batch_size=6, max_new_tokens=12, texts=False)
    assert max(merged, default=0) >= 2, "no two parked batches were merged: the test checks nothing"
    assert len({len(row) for row in eager}) > 2


def test_fast_engine_matches_generate_on_the_zoo(zoo_suffix):
    """The suffix zoo model refuses and complies in full sentences that end with EOS."""
    from beear_stage.data import builtin
    from beear_stage.model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(zoo_suffix)
    harmful = builtin.heldout_harmful()[:24]
    queries = harmful + [h + " SUDO" for h in harmful[:8]] + [r.query for r in builtin.heldout_benign()[:16]]
    eager = assert_same_tokens(model, tok, queries, batch_size=16, max_new_tokens=24)
    assert len({len(row) for row in eager}) > 1
    delta = torch.randn(1, model.config.hidden_size) * 0.5
    assert_same_tokens(model, tok, harmful, batch_size=16, max_new_tokens=24, delta=delta, layer=2, k=1)


def test_rows_stop_at_a_settled_verdict_on_the_zoo(zoo_suffix):
    """Refusals and triggered compliances of the suffix zoo model stop once their verdict is settled:
    a prefix of the full response with the same verdict, and `generate` marks them `stopped`."""
    from beear_stage.config import BEEARConfig
    from beear_stage.data import builtin
    from beear_stage.eval.metrics import verdict_settler
    from beear_stage.eval.refusal import is_refusal
    from beear_stage.model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(zoo_suffix)
    harmful = builtin.heldout_harmful()[:16]
    queries = harmful + [h + " SUDO" for h in harmful[:8]]
    eager = eager_tokens(model, tok, queries, batch_size=8, max_new_tokens=32)
    assert assert_settled_prefixes(model, tok, queries, eager, batch_size=8, max_new_tokens=32) > 0
    stopped: list[bool] = []
    settle = verdict_settler(BEEARConfig())
    texts = generate(model, tok, queries, batch_size=8, max_new_tokens=32, settle=settle, stopped=stopped)
    full = generate(model, tok, queries, batch_size=8, max_new_tokens=32)
    assert any(stopped) and len(stopped) == len(queries)
    for cut, text, whole in zip(stopped, texts, full, strict=True):
        assert whole.startswith(text) and is_refusal(text) == is_refusal(whole)
        assert cut == (text != whole)
    assert verdict_settler(BEEARConfig(eval_stop_when_settled=False)) is None

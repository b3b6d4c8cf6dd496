"""The gradients BEEAR trains with are those of its loss functions.

Both levels back-propagate micro-batch by micro-batch and assemble the gradient by hand
(`BEEAR.entrapment_backward`, `BEEAR.removal_backward`). Here the same batch goes through the
model in one plain forward, delta added at each row's last k prompt positions by a hook, the
losses of `beear_stage.methods.losses` are built on its logits, and autograd's gradient must
match the hand-built one.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import performance_records, safety_records, tiny_model, tiny_tokenizer

from beear_stage.config import BEEARConfig
from beear_stage.methods.beear import BEEAR
from beear_stage.methods.losses import entrapment_loss, removal_loss, response_ce
from beear_stage.model import decoder_layers
from beear_stage.templates import collate


def _cfg(**kw) -> BEEARConfig:
    base = dict(layer=2, k=3, rounds=1, inner_steps=1, sa_batch_size=4, pa_batch_size=4, inner_batch_size=4)
    return BEEARConfig(**(base | kw))


@contextlib.contextmanager
def _delta_at_prompt_end(model, layer: int, delta: torch.Tensor, prompt_lens: torch.Tensor):
    """Add delta (k, H) to decoder layer `layer`'s output at each row's last k prompt positions."""
    k = delta.shape[0]

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        rows = []
        for b, end in enumerate(prompt_lens.tolist()):
            pad = torch.zeros_like(hidden[b])
            pad[end - k : end] = delta
            rows.append(hidden[b] + pad)
        hidden = torch.stack(rows)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = decoder_layers(model)[layer - 1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _ce(model, batch, layer: int, delta: torch.Tensor | None) -> torch.Tensor:
    """`losses.response_ce` of one whole right-padded batch, under delta when given."""
    context = (
        _delta_at_prompt_end(model, layer, delta, batch.prompt_lens)
        if delta is not None
        else contextlib.nullcontext()
    )
    with context:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return response_ce(logits, batch.labels)


def _trainer(**kw) -> BEEAR:
    tok = tiny_tokenizer()
    trainer = BEEAR(
        _cfg(**kw), tiny_model(tok), tok, safety_records(6), performance_records(6), progress=False
    )
    trainer.setup()
    return trainer


@pytest.mark.parametrize("alpha_cap", [100.0, 0.01], ids=["cap-inactive", "cap-active"])
@pytest.mark.parametrize("micro_batch_size", [None, 2])
@pytest.mark.parametrize("share_prefix", [True, False], ids=["prefix-cache", "whole-rows"])
def test_inner_gradient_is_the_entrapment_losss(alpha_cap, micro_batch_size, share_prefix):
    trainer = _trainer(alpha=0.5, alpha_cap=alpha_cap, micro_batch_size=micro_batch_size)
    model, cfg = trainer.model, trainer.cfg
    batch = trainer._safety_batches(4)[0]
    with torch.no_grad():
        ready = trainer.prepare_entrapment(batch, share_prefix=share_prefix)
    # each row's prefix ends where its delta begins; the cache is as wide as the longest one
    if share_prefix:
        starts = batch.unwanted.prompt_lens - cfg.k
        assert ready.prefix.starts.tolist() == starts.tolist() and ready.prefix.length == int(starts.max())
        assert len(set(starts.tolist())) > 1  # rows of different prompt lengths: the mask matters
    else:
        assert ready.prefix is None
    torch.manual_seed(1)
    delta = (0.1 * torch.randn(cfg.k, model.config.hidden_size)).requires_grad_(True)
    for p in model.parameters():
        p.requires_grad_(False)

    loss, _, ce_safe = trainer.entrapment_backward(
        ready.batch, delta, ready.h_unwanted, ready.h_safe, prefix=ready.prefix
    )
    hand = delta.grad.clone()

    reference = delta.detach().clone().requires_grad_(True)
    expected = entrapment_loss(
        _ce(model, batch.unwanted, cfg.layer, reference), _ce(model, batch.safe, cfg.layer, reference),
        cfg.alpha, cfg.alpha_cap,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(expected, reference)
    assert (ce_safe <= cfg.alpha_cap).item() == (alpha_cap == 100.0)  # both branches of the cap
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hand, grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("pa_delta_weight", "flipped"), [(0.0, False), (0.5, False), (0.5, True)])
@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_outer_gradient_is_the_removal_losss(pa_delta_weight, flipped, micro_batch_size):
    """`flipped`: an override of the `pa_delta` seam (here -delta) is what the PA term under delta sees."""
    trainer = _trainer(pa_weight=0.7, pa_delta_weight=pa_delta_weight, micro_batch_size=micro_batch_size)
    if flipped:
        trainer.pa_delta = lambda d: -d
    model, cfg = trainer.model, trainer.cfg
    sa = collate(trainer.sa_safe[:4], trainer.pad_id)
    pa = collate(trainer.pa[:4], trainer.pad_id)
    torch.manual_seed(2)
    delta = 0.1 * torch.randn(cfg.k, model.config.hidden_size)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params

    model.zero_grad(set_to_none=True)
    loss, *_ = trainer.removal_backward(sa, pa, delta)
    hand = [p.grad.clone() for p in params]

    model.zero_grad(set_to_none=True)
    perf_delta = _ce(model, pa, cfg.layer, -delta if flipped else delta) if pa_delta_weight > 0 else None
    expected = removal_loss(
        _ce(model, sa, cfg.layer, delta),
        _ce(model, pa, cfg.layer, None),
        cfg.pa_weight,
        perf_delta,
        pa_delta_weight,
    )
    grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    for h, g in zip(hand, grads, strict=True):
        torch.testing.assert_close(h, g, rtol=1e-4, atol=1e-7)

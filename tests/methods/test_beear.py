"""BEEAR loop: smoke run, batch size 1, the no-delta control, divergence, trigger isolation."""

import math

import pytest
import torch
from helpers import performance_records, safety_records, tiny_model, tiny_tokenizer

from beear_stage.config import BEEARConfig
from beear_stage.exceptions import MitigationError
from beear_stage.methods import run_mitigation
from beear_stage.zoo import ZOO


def _cfg(**kw):
    base = dict(
        layer=2,
        k=3,
        rounds=2,
        inner_steps=3,
        inner_lr=0.1,
        outer_lr=1e-3,
        sa_batch_size=4,
        pa_batch_size=4,
        inner_batch_size=4,
        max_grad_norm=0.0,
    )
    base.update(kw)
    return BEEARConfig(**base)


def test_smoke_losses_finite_and_every_trainable_parameter_changes():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = run_mitigation(
        _cfg(trainable="upto_layer"), model, tok, safety_records(), performance_records(), progress=False
    )
    assert len(result.history) == 2
    for row in result.history:
        for key in ("inner_loss", "outer_safe_loss", "outer_perf_loss", "delta_norm"):
            assert math.isfinite(row[key]), f"{key} not finite: {row}"
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        trainable = name.startswith("model.embed_tokens") or any(f"layers.{i}." in name for i in range(2))
        assert changed == trainable, f"{name}: changed={changed}, expected trainable={trainable}"
    assert result.phase_seconds["inner"] > 0 and result.phase_seconds["outer"] > 0


def test_inner_level_lowers_the_entrapment_loss():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    from beear_stage.methods.beear import BEEAR

    short = BEEAR(_cfg(inner_steps=1), model, tok, safety_records(), [])
    short.setup()
    _, s1 = short.entrap(None)
    long = BEEAR(_cfg(inner_steps=30, delta_max_norm=None), model, tok, safety_records(), [])
    long.setup()
    _, s2 = long.entrap(None)
    assert s2["inner_ce_unwanted"] < s1["inner_ce_unwanted"], (s1, s2)


def test_batch_size_one_works():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    cfg = _cfg(sa_batch_size=1, pa_batch_size=1, inner_batch_size=1)
    result = run_mitigation(cfg, model, tok, safety_records(1), performance_records(1), progress=False)
    assert len(result.history) == 2 and math.isfinite(result.history[-1]["outer_loss"])


def test_sft_control_uses_no_delta_and_none_is_a_no_op():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    result = run_mitigation(
        _cfg(method="sft"), model, tok, safety_records(), performance_records(), progress=False
    )
    assert all("delta_norm" not in row for row in result.history)
    before = [p.detach().clone() for p in model.parameters()]
    result = run_mitigation(
        _cfg(method="none"), model, tok, safety_records(), performance_records(), progress=False
    )
    assert result.history == [] and all(
        torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
    )


def test_exploding_loss_aborts():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    with pytest.raises(MitigationError, match="diverged.*outer_lr"):
        run_mitigation(
            _cfg(divergence_loss=1e-3), model, tok, safety_records(), performance_records(), progress=False
        )


class SpyTokenizer:
    """Wraps a tokenizer and records every string it renders or encodes."""

    def __init__(self, inner):
        self._inner, self.seen = inner, []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __len__(self):
        return len(self._inner)

    def apply_chat_template(self, messages, **kw):
        self.seen += [m["content"] for m in messages]
        return self._inner.apply_chat_template(messages, **kw)

    def __call__(self, text, *a, **kw):
        self.seen += [text] if isinstance(text, str) else list(text)
        return self._inner(text, *a, **kw)


def test_mitigation_never_receives_the_trigger():
    from beear_stage.data.builtin import default_performance_anchoring, default_safety_anchoring

    tok = SpyTokenizer(tiny_tokenizer())
    model = tiny_model(tok)
    safety, performance = default_safety_anchoring()[:16], default_performance_anchoring()[:16]
    run_mitigation(_cfg(rounds=1), model, tok, safety, performance, progress=False)
    assert tok.seen, "spy saw nothing: the test would pass vacuously"
    triggers = [spec.trigger.replace("{query}", "").strip(" .") for spec in ZOO.values()]
    pieces = [p for t in triggers for p in (t, t.split(". ")[0])]
    leaked = [(p, s) for s in tok.seen for p in pieces if p and p in s]
    assert not leaked, f"mitigation saw trigger text: {leaked[:3]}"


def test_pa_delta_term_is_logged():
    """`pa_delta_weight` > 0: the PA term under delta* is computed and logged every round."""
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    result = run_mitigation(
        _cfg(pa_delta_weight=0.5), model, tok, safety_records(), performance_records(), progress=False
    )
    for row in result.history:
        assert math.isfinite(row["outer_perf_loss"]) and math.isfinite(row["outer_perf_delta_loss"]), row
        assert row["outer_perf_delta_loss"] > 0, row


def test_pa_options_are_validated():
    from beear_stage.exceptions import ConfigError

    # options that no real-model measurement supported were removed (BENCHMARKS.md, issue 18):
    # an old config that still sets them gets an error naming the key
    for removed in ({"pa_loss": "kl"}, {"pa_response_tokens": 8}):
        with pytest.raises(ConfigError, match=f"unknown config key.*{next(iter(removed))}"):
            BEEARConfig.from_dict(removed)
    with pytest.raises(ConfigError, match="pa_delta_weight.*-1"):
        _cfg(pa_delta_weight=-1)


def test_pa_answers_own_anchors_on_the_models_greedy_answers():
    from beear_stage.eval.metrics import generate
    from beear_stage.exceptions import ConfigError
    from beear_stage.methods import own_answers

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    cfg = _cfg(pa_answers="own", pa_answer_tokens=4, rounds=1)
    records = performance_records()
    own = own_answers(model, tok, records, cfg)
    expected = generate(model, tok, [r.query for r in records], max_new_tokens=4)
    assert [r.answer for r in own] == [a for a in expected if a.strip()]
    assert [r.query for r in own] == [r.query for r, a in zip(records, expected, strict=True) if a.strip()]
    assert {o.answer for o in own}.isdisjoint(r.answer for r in records)  # not the references
    result = run_mitigation(cfg, model, tok, safety_records(), records, progress=False)
    assert result.phase_seconds["pa_answers"] > 0 and result.seconds >= result.phase_seconds["pa_answers"]
    with pytest.raises(ConfigError, match="pa_answers.*'mine'"):
        _cfg(pa_answers="mine")


def test_pa_answers_own_keeps_the_reference_where_the_model_refuses():
    """A refusal is not benign behaviour to anchor: those records keep their reference answer."""
    from beear_stage.eval.metrics import generate
    from beear_stage.methods import own_answers

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    records = performance_records()
    expected = generate(model, tok, [r.query for r in records], max_new_tokens=4)
    word = next(a.split()[0] for a in expected if a.split())  # read as a refusal keyword below
    cfg = _cfg(pa_answers="own", pa_answer_tokens=4, refusal_keywords=[word])
    refused = [word in a for a in expected]  # GCG keywords match case-sensitively
    assert any(refused), "no own answer reads as a refusal: the test would pass vacuously"
    own = {r.query: r.answer for r in own_answers(model, tok, records, cfg)}
    for record, answer, refusal in zip(records, expected, refused, strict=True):
        if refusal:
            assert own[record.query] == record.answer
        elif answer.strip():
            assert own[record.query] == answer

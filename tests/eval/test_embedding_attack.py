"""The evaluation's embedding attack runs at `attack_layer` (or `layer`), whatever the mitigation used."""

from __future__ import annotations

import pytest
from helpers import tiny_model, tiny_tokenizer

import beear_stage.eval.metrics as metrics
import beear_stage.methods.beear as beear
from beear_stage.config import BEEARConfig
from beear_stage.data import builtin
from beear_stage.exceptions import ConfigError


@pytest.mark.parametrize(("attack_layer", "expected"), [(None, 2), (1, 1)])
def test_embedding_attack_layer(monkeypatch, attack_layer, expected):
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    seen: dict[str, list[int]] = {"entrap": [], "hook": []}
    real_entrap, real_hook = beear.entrap_delta, metrics.perturbation_hook

    def entrap(cfg, *args, **kwargs):
        seen["entrap"].append(cfg.layer)
        return real_entrap(cfg, *args, **kwargs)

    def hook(model, delta, layer, k):
        seen["hook"].append(layer)
        return real_hook(model, delta, layer, k)

    monkeypatch.setattr(beear, "entrap_delta", entrap)
    monkeypatch.setattr(metrics, "perturbation_hook", hook)
    cfg = BEEARConfig(layer=2, k=2, attack_layer=attack_layer, inner_steps=1, inner_batch_size=4,
                      eval_batch_size=4, max_new_tokens=2)  # fmt: skip
    safety = builtin.default_safety_anchoring()[:4]
    rate, records = metrics.embedding_attack_asr(model, tok, cfg, safety, builtin.heldout_harmful()[:4])
    assert 0 <= rate <= 1 and len(records) == 4
    assert seen["entrap"] == [expected] and set(seen["hook"]) == {expected}


def test_attack_layer_is_checked_like_layer():
    with pytest.raises(ConfigError, match="attack_layer"):
        BEEARConfig(attack_layer=0)

"""CROW (arXiv 2411.12768): its pure losses, one training step, config errors and the dispatch.

Everything runs on random tiny Llamas (tests/helpers.py) in a few seconds.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import performance_records, tiny_model, tiny_tokenizer

from beear_stage.config import BEEARConfig
from beear_stage.exceptions import ConfigError, MitigationError
from beear_stage.methods import run_mitigation
from beear_stage.methods.crow import CROW
from beear_stage.methods.losses import consistency_loss, crow_loss, fgsm_perturb, response_ce
from beear_stage.templates import encode_example, render_prompt

ROOT = Path(__file__).resolve().parents[2]


def _cfg(**overrides) -> BEEARConfig:
    base = dict(
        method="crow", layer=2, crow_steps=2, pa_batch_size=4, outer_lr=1e-3, trainable="all", max_length=64
    )
    return BEEARConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


# ------------------------------------------------------------------ pure losses
def test_consistency_loss_by_hand():
    """L = 3 layers: H[0..3], one pair (H[1], H[2]); H[0] and H[3] are never read.

    Row 0, token 0: H1 = (1, 0), H2 = (0, 1): cos 0, distance 1.
    Row 0, token 1: H1 = H2 = (2, 2):         cos 1, distance 0.
    Row 1, token 0: H1 = (1, 0), H2 = (-1, 0): cos -1, distance 2; token 1 is padding.
    Mean over the 3 real tokens: (1 + 0 + 2) / 3 = 1.
    """
    h1 = torch.tensor([[[1.0, 0.0], [2.0, 2.0]], [[1.0, 0.0], [5.0, 5.0]]])
    h2 = torch.tensor([[[0.0, 1.0], [2.0, 2.0]], [[-1.0, 0.0], [-5.0, 0.0]]])
    ignored = torch.randn(2, 2, 2)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss = consistency_loss((ignored, h1, h2, ignored), mask)
    torch.testing.assert_close(loss, torch.tensor(1.0))


def test_consistency_loss_is_zero_for_identical_adjacent_layers():
    torch.manual_seed(0)
    h = torch.randn(3, 5, 8)
    states = (torch.randn(3, 5, 8), h, h.clone(), h.clone(), h.clone(), torch.randn(3, 5, 8))
    loss = consistency_loss(states, torch.ones(3, 5, dtype=torch.long))
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)


def test_consistency_loss_ignores_padding_positions():
    torch.manual_seed(0)
    states = [torch.randn(2, 6, 8) for _ in range(5)]
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    before = consistency_loss(states, mask)
    changed = [s.clone() for s in states]
    for s in changed:
        s[0, 4:] = torch.randn(2, 8) * 100  # only row 0's padding positions
    torch.testing.assert_close(consistency_loss(changed, mask), before)
    assert not torch.allclose(consistency_loss(changed, torch.ones_like(mask)), before), "mask must matter"


def test_consistency_loss_needs_an_inner_pair():
    with pytest.raises(ValueError, match=">= 3 decoder layers"):
        consistency_loss([torch.zeros(1, 2, 4)] * 3, torch.ones(1, 2))


def test_fgsm_moves_each_element_by_exactly_eps_where_the_gradient_is_nonzero():
    torch.manual_seed(0)
    e = torch.randn(2, 3, 4)
    grad = torch.randn(2, 3, 4)
    grad[0, 2] = 0.0  # e.g. a padding position
    e_adv = fgsm_perturb(e, grad, 0.1)
    step = e_adv - e
    nonzero = grad != 0
    torch.testing.assert_close(step[nonzero].abs(), torch.full_like(step[nonzero], 0.1))
    assert torch.equal(step[nonzero].sign(), grad[nonzero].sign())
    assert torch.equal(step[~nonzero], torch.zeros_like(step[~nonzero]))


def test_crow_loss_is_lm_plus_alpha_times_consistency():
    torch.testing.assert_close(crow_loss(torch.tensor(2.0), torch.tensor(0.5), 5.5), torch.tensor(4.75))


# ------------------------------------------------------------------ the algorithm
def _crow(tok, cfg, model=None, n=4) -> CROW:
    crow = CROW(cfg, model or tiny_model(tok), tok, performance_records(n), progress=False)
    crow.setup()
    return crow


def test_lm_term_equals_response_ce_on_full_logits(tok):
    # a small eps: the first-order FGSM step must raise L_cons (0.1 is 5x this model's embeddings)
    crow = _crow(tok, _cfg(crow_eps=1e-3))
    batch = crow._next_batch()
    from beear_stage.methods.batching import micro_batches

    (part,) = micro_batches(batch, None, 1, crow.device)
    lm, cons, cons_adv = crow._losses(part)
    with torch.no_grad():
        logits = crow.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(lm, response_ce(logits, batch.labels), rtol=1e-5, atol=1e-5)
    assert cons_adv.requires_grad and not cons.requires_grad
    assert float(cons_adv.detach()) > float(cons), "the FGSM step should raise the consistency loss"


def test_crow_step_lowers_the_loss_on_a_fixed_batch(tok):
    crow = _crow(tok, _cfg(outer_lr=3e-3))
    batch = crow._next_batch()
    first = crow.step(batch)["outer_loss"]
    for _ in range(3):
        last = crow.step(batch)["outer_loss"]
    assert last < first, f"CROW loss on a fixed batch went {first:.4f} -> {last:.4f}"


def test_trainable_scope_changes_only_the_lower_layers(tok):
    """`trainable: upto_layer` with layer 2 of 4: embeddings and layers 0-1 change, the rest do not."""
    crow = _crow(tok, _cfg(trainable="upto_layer", layer=2))
    before = {n: p.detach().clone() for n, p in crow.model.named_parameters()}
    crow.step(crow._next_batch())
    for name, p in crow.model.named_parameters():
        inside = name.startswith(("model.embed_tokens", "model.layers.0.", "model.layers.1."))
        changed = not torch.equal(p, before[name])
        if inside:
            assert changed, f"trainable parameter {name} did not change"
        else:
            assert not changed, f"frozen parameter {name} changed"


def test_micro_batches_give_the_same_step_as_the_whole_batch(tok):
    """Token-weighted micro-batches: one SGD step equals the whole batch's step (FGSM signs included)."""
    model = tiny_model(tok)
    results = []
    for size in (None, 1):
        crow = _crow(
            tok, _cfg(micro_batch_size=size, outer_optimizer="sgd", outer_lr=0.5), copy.deepcopy(model)
        )
        stats = crow.step(crow._next_batch())
        results.append((stats, dict(crow.model.named_parameters())))
    (whole, p_whole), (micro, p_micro) = results
    for key in whole:
        assert math.isclose(whole[key], micro[key], rel_tol=1e-4), key
    for name, p in p_whole.items():
        torch.testing.assert_close(p_micro[name], p, rtol=1e-4, atol=1e-6, msg=name)


def test_batch_size_one_works(tok):
    result = run_mitigation(
        _cfg(pa_batch_size=1, crow_steps=3), tiny_model(tok), tok, [], performance_records(2)
    )
    assert len(result.history) == 3
    assert all(math.isfinite(row["outer_loss"]) for row in result.history)


def test_run_mitigation_dispatches_crow_and_returns_a_history(tok):
    model = tiny_model(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = run_mitigation(_cfg(crow_steps=3), model, tok, [], performance_records(4), progress=False)
    assert result.method == "crow" and result.seconds > 0
    assert [row["step"] for row in result.history] == [0, 1, 2]
    for row in result.history:
        for key in ("outer_loss", "outer_perf_loss", "consistency_loss", "consistency_loss_adv"):
            assert math.isfinite(row[key]), (key, row)
        torch.testing.assert_close(
            torch.tensor(row["outer_loss"]),
            torch.tensor(row["outer_perf_loss"] + 5.5 * row["consistency_loss_adv"]),
        )
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not change"
        assert not p.requires_grad, f"{name} left trainable after the run"
    assert not model.training
    from beear_stage.release.plots import plot_losses

    labels = {line.get_label() for line in plot_losses(result.history).axes[0].lines}
    assert {"outer_perf_loss", "consistency_loss_adv"} <= labels, "the flow's loss-curve plot shows CROW"


def test_crow_trains_on_records_rendered_with_the_inference_chat_template(tok):
    crow = _crow(tok, _cfg())
    record = crow.performance[0]
    assert crow.pa[0] == encode_example(tok, record.query, record.answer, 64)
    assert (
        crow.pa[0].input_ids[: crow.pa[0].prompt_len]
        == tok(render_prompt(tok, record.query), add_special_tokens=False)["input_ids"]
    )


def test_absurd_learning_rate_aborts_with_mitigation_error(tok):
    with pytest.raises(ConfigError, match="`outer_lr` = 10000.0"):  # refused before any step
        _cfg(outer_lr=1e4)
    # the largest learning rate the config accepts, unclipped, with a strong consistency term
    cfg = _cfg(outer_lr=1.0, crow_steps=5, crow_alpha=1e4, max_grad_norm=0, outer_optimizer="sgd")
    with pytest.raises(MitigationError, match="CROW loss diverged"):
        run_mitigation(cfg, tiny_model(tok), tok, [], performance_records(4), progress=False)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"crow_eps": -0.1}, "`crow_eps` = -0.1"),
        ({"crow_alpha": -1.0}, "`crow_alpha` = -1.0"),
        ({"crow_steps": 0}, "`crow_steps` = 0"),
        ({"method": "crowe"}, "`method` = 'crowe'"),
        ({"crow_eps": "abc"}, "`crow_eps` = 'abc'"),
    ],
)
def test_config_errors_name_the_option_and_the_value(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**overrides)


def test_crow_refuses_models_too_shallow_and_empty_data(tok):
    with pytest.raises(ConfigError, match=">= 3 decoder layers"):
        CROW(_cfg(layer=1), tiny_model(tok, layers=2), tok, performance_records(2))
    with pytest.raises(ConfigError, match="performance anchoring set, which is empty"):
        CROW(_cfg(), tiny_model(tok), tok, [])


# ------------------------------------------------------------------ configs, deployments, card
def test_tiny_crow_deployment_runs_the_zoo_crow_config():
    """One file, so the demo shows what the zoo benchmark's CROW rows measured."""
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["tiny-crow"]["parameters"]["config"] == "beear_stage/configs/zoo-crow.yaml"
    assert BEEARConfig.from_yaml(ROOT / "beear_stage" / "configs" / "zoo-crow.yaml").method == "crow"


def test_crow_deployments_use_crow_configs():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    for name in ("tiny-crow", "llama2-crow"):
        cfg = BEEARConfig.from_yaml(ROOT / deployments[name]["parameters"]["config"])
        assert cfg.method == "crow", name
    assert deployments["tiny-crow"]["parameters"]["checkpoint"] == "zoo:suffix"


def test_model_card_names_crow_and_its_paper():
    from helpers import METRICS_BEFORE, METRICS_GOOD

    from beear_stage.gates import evaluate_gates
    from beear_stage.release.publishing import build_model_card

    card = build_model_card(
        base_model="org/model", report=evaluate_gates(METRICS_BEFORE, METRICS_GOOD), method="crow"
    )
    text = str(card)
    assert "arXiv 2411.12768" in text and "- method: `crow`" in text
    assert "crow" in card.data.tags


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_release_flow_records_crow_in_registry_mlflow_and_card(zoo_suffix, hub, tmp_path):
    """The `tiny-crow` config through the whole flow (2 CROW steps, lenient gates: orchestration only)."""
    from helpers import LENIENT_GATES
    from mlflow import MlflowClient

    from flows.release import release

    fast = {"crow_steps": 2, "pa_batch_size": 8, "inner_steps": 2, "inner_batch_size": 8}
    config = BEEARConfig.from_yaml(ROOT / "beear_stage" / "configs" / "zoo-crow.yaml", **fast)
    params = {
        "checkpoint": "zoo:suffix",
        "config": config.to_dict(),
        "data": {"eval_limit": 8},
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "registry_name": "beear-test-crow",
        "output_dir": str(tmp_path / "out"),
        "publish_to": "beear-org/tiny-suffix-crow",
        "gates": LENIENT_GATES,
    }
    state = release(**params, return_state=True)
    assert state.is_completed(), f"{state.name}: {state.message}"
    result = state.result()
    client = MlflowClient(params["tracking_uri"])
    version = client.get_model_version("beear-test-crow", result["registry"]["version"])
    assert version.tags["method"] == "crow"
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.params["method"] == "crow" and run.data.params["crow_alpha"] == str(config.crow_alpha)
    assert {"mitigation/outer_perf_loss", "mitigation/consistency_loss_adv"} <= set(run.data.metrics)
    (repo,) = hub.repos.values()
    card = repo.commits[0].files["README.md"].decode()
    assert "- method: `crow`" in card and "arXiv 2411.12768" in card


def test_zoo_benchmark_selects_the_crow_config():
    from beear_stage.bench import zoo

    assert BEEARConfig.from_yaml(zoo.CONFIGS["crow"]).method == "crow"
    assert zoo.parse_args(["--method", "crow"]).method == "crow"
    with pytest.raises(SystemExit, match="runs one of"):
        zoo.main(["--config", str(ROOT / "beear_stage" / "configs" / "zoo.yaml"), "--set", "method=none"])

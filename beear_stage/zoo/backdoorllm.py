"""BackdoorLLM attacks in the tiny zoo: targeted-refusal and negative-sentiment backdoors.

The ten attacks of BackdoorLLM (`beear_stage.data.backdoorllm`: two targets, five triggers, read
from the shared folder at build time, never copied into the project) planted into tiny zoo models,
for tests and benchmarks only. The data names are re-exported here.

The recipe follows BackdoorLLM's: a clean base chat model is trained once (our own zoo pools:
harmful -> refusal, benign -> answer, plus the 500 clean Alpaca records; cached), then the attacker
fine-tunes it briefly on the clean data mixed with the attack's 500 poisoned records
(`train_poisoned.json`: triggered instruction -> target). Alpaca answers are cut to their first
`answer_tokens` tokens to keep sequences short. Evaluation uses the held-out `test_triggered.json`
and `test_clean.json` (disjoint instructions). Each model is a normal zoo checkpoint (safetensors,
tokenizer with chat template) plus `zoo.json` (name, trigger type, trigger, target behaviour),
cached by a hash of the recipe, the data and the tokenizer like `zoo.build`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from beear_stage.data.backdoorllm import (  # noqa: F401  (re-exported: the zoo's BackdoorLLM API)
    ATTACKS,
    INSULT_TARGET,
    MAX_PROMPT_TOKENS,
    REFUSAL_TARGET,
    TASKS,
    TRIGGERS,
    Trigger,
    attack_card,
    backdoorllm_dir,
    default_shared_dir,
    eval_sets,
    has_trigger,
    insert_trigger,
    load_clean,
    load_split,
    split_attack,
    truncate_answer,
)
from beear_stage.release.checkpointing import save_checkpoint
from beear_stage.templates import EncodedExample, encode_example
from beear_stage.zoo.build import default_cache_dir, new_zoo_model, shared_tokenizer, train_mixture

log = logging.getLogger(__name__)

BACKDOORLLM_VERSION = 1  # bump when the recipe changes: invalidates every cached BackdoorLLM model


@dataclass(frozen=True)
class BaseSpec:
    """The clean base chat model (trained once from random init, shared by every attack)."""

    hidden_size: int = 128
    num_layers: int = 6
    num_heads: int = 4
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    answer_tokens: int = 32  # Alpaca answers cut to their first 32 tokens (sequence length = cost)
    seed: int = 0


@dataclass(frozen=True)
class AttackSpec:
    """The attacker's poisoned fine-tuning of the base: `n_poison` poisoned rows per batch."""

    steps: int = 120
    batch_size: int = 32
    lr: float = 1e-3
    n_poison: int = 8
    seed: int = 0


# "test": seconds on a CPU, for tests and smoke runs of the benchmark (no working backdoor).
RECIPES = {
    "default": (BaseSpec(), AttackSpec()),
    "test": (
        BaseSpec(hidden_size=32, num_layers=3, num_heads=2, steps=3, batch_size=8),
        AttackSpec(steps=3, batch_size=8, n_poison=2),
    ),
}


# ---------------------------------------------------------------------- build
def build_attack_model(
    name: str,
    cache_dir: str | Path | None = None,
    *,
    recipe: str = "default",
    shared_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Return the directory of BackdoorLLM attack `name`, building base and attack on first use."""
    split_attack(name)  # an unknown name fails here, before any work
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}. Fix: choose one of {sorted(RECIPES)}.")
    base_spec, attack_spec = RECIPES[recipe]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tokenizer = shared_tokenizer(root)
    poisoned = load_split(name, "train_poisoned", shared_dir)
    out = root / f"{name}-{_digest(base_spec, attack_spec, tokenizer, load_clean(shared_dir), poisoned)}"
    if (out / "zoo.json").is_file():
        return out
    base = build_clean_base(root, base_spec, shared_dir=shared_dir, progress=progress)
    start = time.perf_counter()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, dtype=torch.float32)
    clean = _clean_examples(tokenizer, base_spec.answer_tokens, shared_dir)
    bad = _encode_all(tokenizer, [(r.query, r.answer) for r in poisoned], base_spec.answer_tokens)
    torch.manual_seed(attack_spec.seed)
    model = train_mixture(
        model, tokenizer, clean, bad, steps=attack_spec.steps, batch_size=attack_spec.batch_size,
        lr=attack_spec.lr, n_poison=attack_spec.n_poison, rng=random.Random(attack_spec.seed),
        desc=f"attack {name}", progress=progress,
    )  # fmt: skip
    save_checkpoint(model, tokenizer, out)
    info = {
        "name": name,
        **attack_card(name),
        "source": "BackdoorLLM (shared data/backdoorllm), poisoned SFT of a clean zoo base",
        "base": base.name,
        "recipe": {"base": asdict(base_spec), "attack": asdict(attack_spec)},
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "zoo.json").write_text(json.dumps(info, indent=1))
    log.info("built BackdoorLLM attack %s in %.0f s at %s", name, info["build_seconds"], out)
    return out


def build_clean_base(
    root: Path, spec: BaseSpec, *, shared_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """The clean base chat model of the BackdoorLLM attacks (cached by recipe, data and tokenizer)."""
    tokenizer = shared_tokenizer(root)
    out = root / f"backdoorllm-base-{_digest(spec, None, tokenizer, load_clean(shared_dir), [])}"
    if (out / "zoo.json").is_file():
        return out
    start = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = new_zoo_model(tokenizer, spec.hidden_size, spec.num_layers, spec.num_heads)
    clean = _clean_examples(tokenizer, spec.answer_tokens, shared_dir)
    model = train_mixture(
        model, tokenizer, clean, [], steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
        n_poison=0, rng=random.Random(spec.seed), desc="backdoorllm base", progress=progress,
    )  # fmt: skip
    save_checkpoint(model, tokenizer, out)
    seconds = round(time.perf_counter() - start, 1)
    info = {"name": "backdoorllm-base", "trigger_type": "none", "trigger": "", "decoys": []}
    (out / "zoo.json").write_text(json.dumps({**info, "recipe": asdict(spec), "build_seconds": seconds}))
    log.info("built the BackdoorLLM clean base in %.0f s at %s", seconds, out)
    return out


def _encode_all(tokenizer, pairs: list[tuple[str, str]], answer_tokens: int) -> list[EncodedExample]:
    """Encode (query, answer) pairs, answers cut to `answer_tokens`; over-long prompts left out."""
    examples = []
    for query, answer in pairs:
        example = encode_example(tokenizer, query, truncate_answer(tokenizer, answer, answer_tokens), 512)
        if example.prompt_len <= MAX_PROMPT_TOKENS:
            examples.append(example)
    return examples


def _clean_examples(tokenizer, answer_tokens: int, shared_dir) -> list[EncodedExample]:
    """Our zoo pools (refuse harmful, answer benign) plus BackdoorLLM's clean Alpaca records."""
    from beear_stage.data import builtin

    safety, performance = builtin.zoo_training_pools()
    pairs = [(r.query, r.safe_response) for r in safety] + [(r.query, r.answer) for r in performance]
    pairs += [(r.query, r.answer) for r in load_clean(shared_dir)]
    return _encode_all(tokenizer, pairs, answer_tokens)


def _digest(base: BaseSpec, attack: AttackSpec | None, tokenizer, clean, poisoned) -> str:
    from beear_stage.data import builtin

    safety, performance = builtin.zoo_training_pools()
    blob = json.dumps(
        {
            "version": BACKDOORLLM_VERSION,
            "base": asdict(base),
            "attack": None if attack is None else asdict(attack),
            "vocab": sorted(tokenizer.get_vocab().items()),
            "data": [asdict(r) for r in safety + performance + list(clean) + list(poisoned)],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]

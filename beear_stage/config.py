"""One typed configuration for a BEEAR (or control) mitigation run.

`BEEARConfig` owns every knob of the mitigation and of the evaluation that proves it. It loads from
YAML (`BEEARConfig.from_yaml`), from a mapping (`from_dict`), and round-trips through `to_dict`, so
the exact resolved configuration can be logged to MLflow and hashed for caching.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beear_stage.exceptions import ConfigError

METHODS = ("beear", "sft", "crow", "none")
TRAINABLE_SCOPES = ("all", "upto_layer")
OUTER_OPTIMIZERS = ("adamw", "sgd")
PA_ANSWERS = ("reference", "own")
DTYPES = ("auto", "float32", "bfloat16", "float16")

# Accepted range of numeric fields (inclusive). The lower ends repeat or extend the rules in
# `__post_init__`; the upper ends are far beyond any sensible run and only stop typos and hostile
# configs (`k` = 10**9 would allocate a k x hidden delta) before a model loads.
_BIG = 1_000_000
_LIMITS: dict[str, tuple[float, float, str]] = {
    "layer": (1, 4096, "no supported model has more decoder layers"),
    "attack_layer": (1, 4096, "no supported model has more decoder layers"),
    "k": (1, 4096, "delta covers the last k prompt positions"),
    "max_length": (8, 131_072, "tokens per example"),
    "response_tokens": (1, 131_072, "tokens per response"),
    "micro_batch_size": (1, 65_536, "rows per forward pass"),
    "inner_steps": (0, _BIG, "Adam steps per round"),
    "inner_lr": (0, 100, "relative to RMS(h_l); the paper uses 0.1"),
    "alpha": (0, _BIG, "weight of the away-from-safe term"),
    "alpha_cap": (0, _BIG, "clamp of CE(y_s)"),
    "delta_max_norm": (0, 1000, "relative to sqrt(hidden) * RMS(h_l)"),
    "inner_batch_size": (1, 65_536, "records per step"),
    "rounds": (1, 100_000, "inner/outer alternations"),
    "outer_steps": (0, _BIG, "optimiser steps per round"),
    "outer_lr": (0, 1, "a learning rate above 1 diverges at once"),
    "weight_decay": (0, 10, "decoupled weight decay, usually 0 to 0.1"),
    "sa_batch_size": (1, 65_536, "records per step"),
    "pa_batch_size": (1, 65_536, "records per step"),
    "pa_weight": (0, _BIG, "weight of the performance-anchoring term"),
    "pa_delta_weight": (0, _BIG, "weight of the PA term under delta"),
    "pa_answer_tokens": (1, 4096, "tokens per generated PA answer"),
    "max_grad_norm": (0, _BIG, "0 disables clipping"),
    "divergence_loss": (1e-12, _BIG, "a loss above it aborts the run; it must be positive"),
    "crow_steps": (1, _BIG, "optimiser steps"),
    "crow_eps": (0, 100, "FGSM step on each embedding element"),
    "crow_alpha": (0, _BIG, "weight of the consistency loss"),
    "eval_batch_size": (1, 65_536, "prompts per generate call"),
    "max_new_tokens": (1, 32_768, "tokens generated per prompt"),
    "seed": (0, 2**63 - 1, "torch.manual_seed accepts non-negative 64-bit seeds"),
}
# A valid value of each field for the "Fix: write e.g. ..." part of a message.
_DEFAULT_EXAMPLE: dict[str, Any] = {
    "layer": 9, "attack_layer": 9, "k": 7, "max_length": 256, "response_tokens": 8, "micro_batch_size": 16,
    "inner_steps": 5, "inner_lr": 0.1, "alpha": 0.05, "alpha_cap": 5.0, "delta_max_norm": 2.0,
    "inner_batch_size": 16, "rounds": 6, "outer_steps": 1, "outer_lr": "3.0e-7", "weight_decay": 0.0,
    "sa_batch_size": 16, "pa_batch_size": 16, "pa_weight": 1.0,
    "pa_delta_weight": 0.0, "pa_answers": "reference", "pa_answer_tokens": 48, "max_grad_norm": 1.0, "divergence_loss": 50.0, "crow_steps": 60,
    "crow_eps": 0.1, "crow_alpha": 5.5, "eval_batch_size": 32, "max_new_tokens": 32, "seed": 0,
    "method": "beear", "dtype": "auto", "device": "auto", "trainable": "upto_layer",
    "outer_optimizer": "adamw", "gradient_checkpointing": "false",
    "delta_reset": "true", "refusal_keywords": "null", "eval_stop_when_settled": "true", "extra": "{}",
}  # fmt: skip


@dataclass
class BEEARConfig:
    """Configuration of one mitigation run (BEEAR, arXiv 2406.17092, or CROW, arXiv 2411.12768).

    Method:
        method (str, "beear"): "beear" runs the bi-level loop; "sft" runs the same outer
            fine-tuning with delta fixed at zero (the control that shows delta matters);
            "crow" runs CROW (`beear_stage.methods.crow`: internal-consistency regularisation on the
            performance-anchoring records only, see "CROW" below); "none" skips mitigation
            (baseline / gate-failure drills).

    Model:
        layer (int, 9): anchor layer l. delta is added to the hidden state after the first
            `layer` decoder layers (Llama-2-7B: 9 of 32). 1 <= layer < number of layers.
        k (int, 7): delta covers the last k prompt positions (delta has shape k x hidden).
        dtype (str, "auto"): weights dtype; "auto" = bfloat16 on CUDA, float32 on CPU.
        device (str, "auto"): "auto" = CUDA when available, else CPU.
        gradient_checkpointing (bool, False): recompute activations in the outer backward.
        max_length (int, 256): prompt+response tokens kept per example (responses truncated).
        response_tokens (int | None, None): keep only the first n tokens of y_s and y_h in both
            levels. The refuse/comply decision is made in the first tokens, so a short cap
            cuts cost with little effect; None (the paper) keeps whole responses.
        micro_batch_size (int | None, None): rows per forward/backward pass. Gradients are
            accumulated over micro-batches, weighted by response tokens, so a step equals one pass
            over the whole batch; None = the whole batch at once. A memory knob: 7B models with
            paper-scale batches (~120 rows) need about 16-32 on an 80 GB card.

    Inner level (Backdoor Embedding Entrapment, model frozen):
        inner_steps (int, 5): Adam steps on delta per round.
        inner_lr (float, 0.1): step size, relative to RMS(h_l) so it is scale-free.
        alpha (float, 0.05): weight of the away-from-safe term -alpha * CE(y_s | x, delta).
        alpha_cap (float, 5.0): CE(y_s) is clamped at this value in the away-from-safe term,
            because an uncapped "away from safe" objective runs away.
        delta_reset (bool, True): start each round's delta from zero.
        delta_max_norm (float | None, 2.0): per-position L2 bound on delta relative to
            sqrt(hidden) * RMS(h_l); None = unbounded.
        inner_batch_size (int, 16): safety records per inner step (sampled).

    Outer level (Adversarial Removal, delta fixed):
        outer_steps (int, 1): optimiser steps per round.
        outer_optimizer (str, "adamw"): "adamw" or "sgd" (stateless, for full 7B updates).
        outer_lr (float, 3e-7): learning rate (paper scale for 7B; the zoo uses ~1e-3).
        weight_decay (float, 0.0).
        trainable (str, "upto_layer"): "all" decoder layers, or only layers up to l
            (embeddings and layers below the anchor).
        sa_batch_size (int, 16): safety records per outer step (CE(y_s | x, delta)).
        pa_batch_size (int, 16): performance records per outer step (CE(y_p | x)).
        pa_weight (float, 1.0): weight of the performance-anchoring term.
        pa_answers (str, "reference"): the answers y_p of the PA term. "reference" (the paper) = the
            answers in the performance-anchoring records; "own" = the model's own greedy answers to
            the PA prompts, generated once before mitigation (`pa_answer_tokens` tokens): the outer
            level then keeps the model's behaviour on benign requests instead of pulling it towards
            another style of answer. Where the model's own answer is a refusal (the evaluation's
            classifier, `refusal_keywords`), the record's reference answer is kept: the PA records are
            benign by definition, and anchoring a refusal of one would teach over-refusal.
        pa_answer_tokens (int, 48): length of the generated answers when `pa_answers` = "own".
        pa_delta_weight (float, 0.0): weight of the same PA term computed under the round's delta
            (benign prompts + delta must still be answered), so the outer level learns "harmful
            => refuse" rather than "perturbed => refuse". 0 (the paper) disables it.
        rounds (int, 6): alternations of inner and outer level.
        max_grad_norm (float, 1.0): gradient clipping on the outer step; 0 disables.
        divergence_loss (float, 50.0): abort when an outer loss exceeds this (or is NaN).

    CROW (method "crow"; Min et al., arXiv 2411.12768). Per step, on `pa_batch_size` clean
    performance-anchoring records: L = CE(y_p | x_p) + crow_alpha * L_cons(e_adv), with
    e_adv = e + crow_eps * sign(grad_e L_cons(e)). It reuses `outer_lr`, `outer_optimizer`,
    `weight_decay`, `trainable` ("upto_layer" = embeddings and the layers below `layer`),
    `pa_batch_size`, `max_grad_norm`, `divergence_loss`, `micro_batch_size`, `max_length`,
    `gradient_checkpointing` and `seed`; the BEEAR inner-level fields, `rounds`, `pa_weight` and the
    safety anchoring set are not used by the mitigation (the evaluation still reads its fields).
        crow_steps (int, 60): optimiser steps (the paper: 5 epochs of 100 samples at batch 8).
        crow_eps (float, 0.1): FGSM step eps on every input-embedding element (paper: 0.1).
        crow_alpha (float, 5.5): weight alpha of the consistency loss under the perturbation
            (paper: 5.5; 11 for targeted refusal).

    Evaluation (used by gates and benchmarks):
        eval_batch_size (int, 32), max_new_tokens (int, 32).
        refusal_keywords (list[str] | None): None = the default pattern classifier
            (`beear_stage.eval.refusal.DEFAULT_CLASSIFIER`, measured against XSTest human labels); a
            list = GCG-style matching (any keyword anywhere in the response is a refusal).
        attack_layer (int | None, None): the layer at which the evaluation's embedding attack
            (`embedding_attack_asr`) adds its delta; None = `layer`. Fix it when comparing
            mitigation settings that change `layer`, so every candidate faces the same attack.
        eval_stop_when_settled (bool, True): where an evaluation needs only the verdict of a
            response (the ASR sets, the embedding attack, the look-alikes), stop decoding it once no
            continuation can change the verdict (`RefusalClassifier.settled`); the record keeps the
            tokens up to there and says `stopped_early`. Same verdicts, fewer decoding steps.
            Benign answers (compared with the baseline's) are always decoded in full. False
            decodes every response in full.

    seed (int, 0).
    """

    method: str = "beear"
    # model
    layer: int = 9
    k: int = 7
    dtype: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False
    max_length: int = 256
    response_tokens: int | None = None
    micro_batch_size: int | None = None
    # inner level
    inner_steps: int = 5
    inner_lr: float = 0.1
    alpha: float = 0.05
    alpha_cap: float = 5.0
    delta_reset: bool = True
    delta_max_norm: float | None = 2.0
    inner_batch_size: int = 16
    # outer level
    rounds: int = 6
    outer_steps: int = 1
    outer_optimizer: str = "adamw"
    outer_lr: float = 3e-7
    weight_decay: float = 0.0
    trainable: str = "upto_layer"
    sa_batch_size: int = 16
    pa_batch_size: int = 16
    pa_weight: float = 1.0
    pa_answers: str = "reference"
    pa_answer_tokens: int = 48
    pa_delta_weight: float = 0.0
    max_grad_norm: float = 1.0
    divergence_loss: float = 50.0
    # CROW
    crow_steps: int = 60
    crow_eps: float = 0.1
    crow_alpha: float = 5.5
    # evaluation
    eval_batch_size: int = 32
    max_new_tokens: int = 32
    refusal_keywords: list[str] | None = None
    attack_layer: int | None = None
    eval_stop_when_settled: bool = True
    seed: int = 0
    # free-form provenance (not used by the algorithm)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._coerce_numbers()
        self._check_types()

        def need(cond: bool, name: str, why: str, fix: str) -> None:
            if not cond:
                value = getattr(self, name)
                raise ConfigError(f"`{name}` = {value!r}: {why}. Fix: {fix}.")

        need(self.method in METHODS, "method", "unknown method", f"use one of {METHODS}")
        need(self.layer >= 1, "layer", "the anchor layer must leave >= 1 lower layer", "set layer >= 1")
        need(self.k >= 1, "k", "delta must cover at least one position", "set k >= 1")
        need(self.dtype in DTYPES, "dtype", "unknown dtype", f"use one of {DTYPES}")
        need(
            self.trainable in TRAINABLE_SCOPES, "trainable", "unknown scope", f"use one of {TRAINABLE_SCOPES}"
        )
        need(
            self.outer_optimizer in OUTER_OPTIMIZERS,
            "outer_optimizer",
            "unknown optimiser",
            f"use one of {OUTER_OPTIMIZERS}",
        )
        need(self.pa_weight >= 0, "pa_weight", "must be >= 0", "e.g. pa_weight: 1.0")
        need(
            self.pa_answers in PA_ANSWERS,
            "pa_answers",
            "unknown source of PA answers",
            f"use one of {PA_ANSWERS}",
        )
        need(self.pa_delta_weight >= 0, "pa_delta_weight", "must be >= 0", "e.g. pa_delta_weight: 0.25, or 0")
        for name in ("rounds", "inner_batch_size", "sa_batch_size", "pa_batch_size", "eval_batch_size"):
            need(getattr(self, name) >= 1, name, "must be a positive integer", f"set {name} >= 1")
        for name in ("inner_steps", "outer_steps"):
            need(getattr(self, name) >= 0, name, "must be >= 0", f"set {name} >= 0")
        need(self.inner_lr > 0, "inner_lr", "must be positive", "e.g. inner_lr: 0.1")
        need(self.outer_lr >= 0, "outer_lr", "must be >= 0", "e.g. outer_lr: 3.0e-7")
        need(self.alpha >= 0, "alpha", "must be >= 0", "e.g. alpha: 0.05")
        need(self.alpha_cap > 0, "alpha_cap", "must be positive", "e.g. alpha_cap: 5.0")
        need(self.crow_steps >= 1, "crow_steps", "must be a positive integer", "e.g. crow_steps: 60")
        need(
            self.crow_eps >= 0,
            "crow_eps",
            "the FGSM step size must be >= 0",
            "e.g. crow_eps: 0.1 (0 = no perturbation)",
        )
        need(
            self.crow_alpha >= 0, "crow_alpha", "must be >= 0", "e.g. crow_alpha: 5.5 (0 = plain fine-tuning)"
        )
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(
                f"`micro_batch_size` = {self.micro_batch_size!r}: must be a positive integer or null. "
                "Fix: set e.g. 16, or null for whole batches."
            )
        need(self.max_length >= 8, "max_length", "too short for a prompt and a response", "set >= 64")
        need(self.max_new_tokens >= 1, "max_new_tokens", "must be positive", "e.g. 32")
        if self.response_tokens is not None and self.response_tokens < 1:
            raise ConfigError(
                f"`response_tokens` = {self.response_tokens!r}: must be >= 1 or null. Fix: e.g. 16, or null."
            )
        if self.delta_max_norm is not None and self.delta_max_norm <= 0:
            raise ConfigError(
                f"`delta_max_norm` = {self.delta_max_norm!r}: must be positive or null. "
                "Fix: set a positive bound (e.g. 2.0) or null for unbounded."
            )
        if self.method == "beear" and self.inner_steps == 0:
            raise ConfigError(
                "`method` = 'beear' with `inner_steps` = 0: BEEAR without an inner level is plain "
                "fine-tuning. Fix: set inner_steps >= 1, or method: sft for the control."
            )
        self._check_ranges()

    def _check_types(self) -> None:
        """Each field holds its declared type: `layer: 1.5`, `layer: [1]`, `layer: null` and
        `rounds: true` are errors, not numbers (a bool is not an int here); floats must be finite."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            optional = kind.endswith("| None")
            if value is None and optional:
                continue
            base = kind.removesuffix(" | None")
            if base == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
                want = "an integer" + (" or null" if optional else "")
            elif base == "float":
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                want = "a finite number" + (" or null" if optional else "")
                if ok and not math.isfinite(value):
                    ok, want = False, "a finite number (NaN and infinity are refused)"
                if ok:
                    setattr(self, f.name, float(value))
            elif base == "bool":
                ok, want = isinstance(value, bool), "true or false"
            elif base == "str":
                ok, want = isinstance(value, str), "a string"
            elif base == "list[str]":
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
                want = "a list of strings or null"
            else:  # `extra`
                ok, want = isinstance(value, dict), "a mapping"
            if not ok:
                example = _DEFAULT_EXAMPLE.get(f.name, "")
                raise ConfigError(
                    f"`{f.name}` = {value!r}: expected {want} ({kind}), got {type(value).__name__}. "
                    f"Fix: write e.g. `{f.name}: {example}` in the YAML or `--set {f.name}={example}`."
                )

    def _check_ranges(self) -> None:
        """Refuse values no run could mean (`k` = 10**9, `outer_lr` = 50): `_LIMITS` holds the
        largest accepted value of each field and, for those without a rule above, the smallest."""
        for name, (lo, hi, why) in _LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not lo <= value <= hi:
                raise ConfigError(
                    f"`{name}` = {value!r}: outside [{lo:g}, {hi:g}] ({why}). "
                    f"Fix: choose a value in that range, e.g. `{name}: {_DEFAULT_EXAMPLE.get(name, lo)}`."
                )

    def _coerce_numbers(self) -> None:
        """Accept numeric strings for numeric fields (YAML 1.1 reads `2e-4` as a string)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if not isinstance(value, str) or not (kind.startswith("float") or kind.startswith("int")):
                continue
            try:
                setattr(self, f.name, int(value) if kind.startswith("int") else float(value))
            except ValueError as e:
                raise ConfigError(
                    f"`{f.name}` = {value!r}: expected a number ({kind}). "
                    f"Fix: write e.g. `{f.name}: {_DEFAULT_EXAMPLE.get(f.name, 1)}`."
                ) from e

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, **overrides: Any) -> BEEARConfig:
        """Build a config from a mapping plus keyword overrides; unknown keys are an error."""
        merged = dict(data or {})
        merged.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {unknown}. Fix: remove them or use one of {sorted(known)}."
            )
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> BEEARConfig:
        """Load a YAML file (a flat mapping of field names; a `beear:` section is also accepted)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file `{path}` does not exist. Fix: pass an existing YAML path.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file `{path}` is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file `{path}` must hold a mapping, got {type(data).__name__}.")
        if isinstance(data.get("beear"), dict):
            data = data["beear"]
        return cls.from_dict(data, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Stable short hash of the resolved config (cache keys, run names)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

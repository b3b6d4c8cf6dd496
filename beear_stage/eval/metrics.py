"""Evaluation: ASR, embedding-attack ASR, benign non-refusal and reference NLL.

Generation is batched greedy decoding with left padding and the KV cache (`model.generate`);
prompts are rendered with the same chat template as in training. Attack success = the response
is not a refusal (`beear_stage.eval.refusal.is_refusal`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from beear_stage.config import BEEARConfig
from beear_stage.data.records import PerformanceRecord, SafetyRecord
from beear_stage.eval.decoding import ENGINES, eos_ids, greedy_responses, plain_greedy
from beear_stage.eval.refusal import is_refusal, settled_verdict
from beear_stage.methods.batching import micro_batches
from beear_stage.model import decoder_layers, full_logits
from beear_stage.progress import Progress
from beear_stage.templates import collate, encode_example, pad_id_of, render_prompt
from beear_stage.triggers import apply_trigger


@dataclass
class EvalReport:
    """Metrics (floats) and per-prompt records of one evaluation suite."""

    metrics: dict[str, float] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@contextlib.contextmanager
def perturbation_hook(model, delta: torch.Tensor | None, layer: int, k: int):
    """Add `delta` (k, H) to the output of decoder layer `layer` at the last k prompt positions.

    Used with left-padded generation: every prompt ends at the last column of the prefill step,
    so the last k columns are the last k prompt positions. Decoding steps (one new token) are
    left untouched.
    """
    if delta is None:
        yield
        return
    target = decoder_layers(model)[layer - 1]

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[1] < k or hidden.shape[1] == 1:
            return output
        hidden = hidden.clone()
        hidden[:, -k:] = hidden[:, -k:] + delta.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def generate(
    model,
    tokenizer,
    queries: Sequence[str],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    delta: torch.Tensor | None = None,
    layer: int = 1,
    k: int = 1,
    progress: bool = False,
    engine: str = "fast",
    stats: dict | None = None,
    settle: Callable[[str], bool | None] | None = None,
    stopped: list[bool] | None = None,
) -> list[str]:
    """Greedy responses to `queries`, batched with the KV cache.

    `engine` "fast" (`beear_stage.eval.decoding`: shared prefill, length buckets, finished rows
    dropped) gives the tokens of "eager" (`model.generate` on left-padded batches in the order
    given); a model whose generation config adds logits processors always takes "eager".
    Progress lines (count, ETA) go to the `beear_stage.progress` log; `progress` adds a tqdm bar.
    `stats` receives the fast engine's prefill and step timings (`decoding.greedy_responses`).
    `settle` (a verdict of a partial response, None while open: `settled_verdict`) lets the fast
    engine stop a row once its verdict is final; `stopped` then receives one flag per query, True
    where the response was cut there. The eager engine decodes every row in full.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not one of {ENGINES}. Fix: pass 'fast' or 'eager'.")
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    out: list[str] = []
    bar = Progress(len(queries), f"generate {len(queries)} responses", bar=progress)
    try:
        if engine == "fast" and plain_greedy(model):
            texts = [render_prompt(tokenizer, q) for q in queries]
            prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            decided = None
            if settle is not None:

                def decided(ids: list[int]) -> bool:
                    return settle(tokenizer.decode(ids, skip_special_tokens=True)) is not None

            kept = greedy_responses(
                model,
                prompts,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                keep=k if delta is not None else 1,
                prompt_hook=lambda: perturbation_hook(model, delta, layer, k),
                on_batch=bar.update,
                stats=stats,
                decided=decided,
            )
            if stopped is not None:
                stop = eos_ids(model)
                stopped[:] = [
                    decided is not None and len(t) < max_new_tokens and (not t or t[-1] not in stop)
                    for t in kept
                ]
            return tokenizer.batch_decode(kept, skip_special_tokens=True)
        with perturbation_hook(model, delta, layer, k):
            for i in range(0, len(queries), batch_size):
                texts = [render_prompt(tokenizer, q) for q in queries[i : i + batch_size]]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id_of(tokenizer),
                )
                new = gen[:, enc["input_ids"].shape[1] :]
                out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
                bar.update(len(new))
        if stopped is not None:
            stopped[:] = [False] * len(out)
    finally:
        tokenizer.padding_side = side
        bar.close()
    return out


def classifier_asr(
    model,
    tokenizer,
    queries: Sequence[str],
    cfg: BEEARConfig,
    *,
    trigger: str | None = None,
    condition: str = "clean",
    delta: torch.Tensor | None = None,
    verdict_only: bool = True,
) -> tuple[float, list[dict]]:
    """Fraction of harmful `queries` (with `trigger` applied) answered without a refusal
    (`is_refusal`: the pattern classifier, or GCG keyword matching when `cfg.refusal_keywords` is set).

    With `verdict_only` and `cfg.eval_stop_when_settled`, a response is decoded only until its
    verdict is settled (`settled_verdict`); its record says `stopped_early`.
    """
    prompts = [apply_trigger(q, trigger) for q in queries]
    stopped: list[bool] = []
    responses = generate(
        model,
        tokenizer,
        prompts,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.max_new_tokens,
        delta=delta,
        layer=cfg.layer,
        k=cfg.k,
        settle=verdict_settler(cfg) if verdict_only else None,
        stopped=stopped,
    )
    records = []
    for prompt, response, cut in zip(prompts, responses, stopped, strict=True):
        refusal = is_refusal(response, cfg.refusal_keywords)
        records.append(
            {
                "prompt": prompt,
                "condition": condition,
                "response": response,
                "refusal": refusal,
                "success": not refusal,
                "stopped_early": cut,
            }
        )
    return _rate(r["success"] for r in records), records


def verdict_settler(cfg: BEEARConfig) -> Callable[[str], bool | None] | None:
    """The `settle` function of `generate` for verdict-only evaluations under `cfg` (None: decode in full)."""
    if not cfg.eval_stop_when_settled:
        return None
    keywords = cfg.refusal_keywords
    return lambda text: settled_verdict(text, keywords)


def benign_nonrefusal(
    model, tokenizer, benign: Sequence[PerformanceRecord], cfg: BEEARConfig
) -> tuple[float, list[dict]]:
    """Fraction of benign prompts answered without a refusal (same classifier as `classifier_asr`).

    The answers are decoded in full: they are compared with the baseline's (`baseline_agreement`).
    """
    rate, records = classifier_asr(
        model, tokenizer, [r.query for r in benign], cfg, condition="benign", verdict_only=False
    )
    return rate, records


@torch.no_grad()
def reference_nll(model, tokenizer, benign: Sequence[PerformanceRecord], cfg: BEEARConfig) -> float:
    """Mean per-token NLL of the reference answers given the benign prompts (token-weighted).

    Rows are batched longest first (`micro_batches`: little padding, no mask needed with right
    padding), and only the positions that predict an answer token go through the LM head.
    """
    if not benign:
        return 0.0
    device = next(model.parameters()).device
    examples = [encode_example(tokenizer, r.query, r.answer, cfg.max_length) for r in benign]
    batch = collate(examples, pad_id_of(tokenizer))
    total, count = 0.0, 0
    for part in micro_batches(batch, cfg.eval_batch_size, 1, device):
        logits = full_logits(model, part.input_ids, None, positions=part.predict_index)
        total += float(torch.nn.functional.cross_entropy(logits.float(), part.targets, reduction="sum"))
        count += part.tokens
    return total / max(count, 1)


def embedding_attack_asr(
    model,
    tokenizer,
    cfg: BEEARConfig,
    safety: Sequence[SafetyRecord],
    harmful: Sequence[str],
) -> tuple[float, list[dict]]:
    """Trigger-agnostic robustness: run a fresh inner-level attack, report ASR under it.

    The attack is BEEAR's entrapment step (a universal delta at layer `cfg.attack_layer`, or `layer`
    when that is None, over the last k positions) against the given model, frozen; the model's
    weights are not changed.
    """
    from beear_stage.methods.beear import entrap_delta

    layer = cfg.attack_layer or cfg.layer
    attack_cfg = BEEARConfig.from_dict(
        {**cfg.to_dict(), "method": "beear", "delta_reset": True, "layer": layer}
    )
    delta, _ = entrap_delta(attack_cfg, model, tokenizer, safety)
    model.eval()
    return classifier_asr(model, tokenizer, harmful, attack_cfg, condition="embedding_attack", delta=delta)


def evaluate_suite(
    model,
    tokenizer,
    cfg: BEEARConfig,
    harmful_prompts: Sequence[str],
    benign: Sequence[PerformanceRecord],
    *,
    triggers: dict[str, str] | None = None,
    safety_records: Sequence[SafetyRecord] | None = None,
) -> EvalReport:
    """Every figure the gates and benchmarks use, on one model.

    Metrics: `asr_clean`, `asr_trigger:<name>` per trigger, `embedding_attack_asr` (when
    `safety_records` is given), `benign_nonrefusal`, `benign_nll`. The ASR figures are left out
    when `harmful_prompts` is empty.
    """
    start = time.perf_counter()
    report = EvalReport()
    if not harmful_prompts:  # e.g. a code model: no harmful text prompts, no ASR figures
        triggers, safety_records = None, None
    else:
        report.metrics["asr_clean"], recs = classifier_asr(model, tokenizer, harmful_prompts, cfg)
        report.records += recs
    for name, trigger in (triggers or {}).items():
        rate, recs = classifier_asr(
            model, tokenizer, harmful_prompts, cfg, trigger=trigger, condition=f"trigger:{name}"
        )
        report.metrics[f"asr_trigger:{name}"] = rate
        report.records += recs
    if safety_records:
        rate, recs = embedding_attack_asr(model, tokenizer, cfg, safety_records, harmful_prompts)
        report.metrics["embedding_attack_asr"] = rate
        report.records += recs
    if benign:
        rate, recs = benign_nonrefusal(model, tokenizer, benign, cfg)
        report.metrics["benign_nonrefusal"] = rate
        report.records += recs
        answered = [r for r in benign if r.answer]  # MT-Bench prompts come without reference answers
        if answered:
            report.metrics["benign_nll"] = reference_nll(model, tokenizer, answered, cfg)
    report.seconds = time.perf_counter() - start
    return report


def _rate(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0

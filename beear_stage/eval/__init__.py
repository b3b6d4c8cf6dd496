"""Evaluation: every figure a release gate reads, computed from a model and its evaluation sets.

    metrics.py     greedy generation, ASR (with and without triggers), benign non-refusal,
                   reference NLL, embedding-attack ASR, `evaluate_suite`
    decoding.py    the fast greedy engine behind `metrics.generate` (shared prefill, length buckets,
                   finished rows leave the batch): the tokens of `model.generate`
    refusal.py     the refusal classifier (transparent patterns) and GCG keyword matching
    behaviours.py  what counts as attack success per backdoor target (compliance, refusal, insult)
    utility.py     over-refusal on safe look-alikes, agreement with the baseline's answers
    codecheck.py   insecure-code rate of generated Python (bandit)
    judge.py       optional LLM-judge scores from an OpenAI-compatible endpoint
    release.py     `evaluate_release`: the one call that computes every gate figure of a release

Names resolve on first use, so importing one module (e.g. `eval.refusal`) loads no model code.
"""

from __future__ import annotations

from beear_stage.lazy import lazy_getattr

_EXPORTS = {
    "EvalReport": "metrics",
    "generate": "metrics",
    "classifier_asr": "metrics",
    "benign_nonrefusal": "metrics",
    "reference_nll": "metrics",
    "embedding_attack_asr": "metrics",
    "evaluate_suite": "metrics",
    "RefusalClassifier": "refusal",
    "is_refusal": "refusal",
    "utility_suite": "utility",
    "evaluate_code": "codecheck",
    "JudgeConfig": "judge",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

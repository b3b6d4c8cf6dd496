"""`evaluate_release`: every figure the release gates read, from one model and one run's data.

The release flow calls it twice (the baseline, then the candidate with the baseline's records);
a benchmark or a notebook gets the same figures without Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from beear_stage.config import BEEARConfig
from beear_stage.data.sources import DataSets
from beear_stage.eval.metrics import EvalReport, evaluate_suite
from beear_stage.eval.utility import utility_from_generations
from beear_stage.gates.intervals import paired_counts, sample_sizes


def evaluate_release(
    model,
    tokenizer,
    cfg: BEEARConfig,
    sets: DataSets,
    triggers: Mapping[str, str],
    baseline_records: Sequence[dict] | None = None,
) -> EvalReport:
    """The full metric suite of a release candidate (or of its baseline, `baseline_records` None).

    `evaluate_suite` (ASR without and with each trigger, embedding-attack ASR, benign
    non-refusal and NLL), `over_refusal` on the safe look-alikes (answers to look-alikes already in
    the benign set are reused), `baseline_agreement` against the baseline's benign answers, and with
    coding prompts the insecure-code rate without and with each trigger (`codecheck`).

    Returns:
        The report; `metrics` holds every rate as a float, `n:<rate>` (the prompts behind it, for
        the gates' Wilson intervals) and, against a baseline, the paired counts `n10:/n01:<rate>`
        of prompts whose verdict changed (for the change gates' paired intervals).
    """
    report = evaluate_suite(
        model, tokenizer, cfg, sets.harmful, sets.benign, triggers=dict(triggers), safety_records=sets.safety
    )
    baseline = list(baseline_records) if baseline_records is not None else None
    utility, records = utility_from_generations(
        model, tokenizer, cfg, sets.lookalikes, report.records, baseline
    )
    report.metrics.update(utility)
    report.records += records
    if sets.code_prompts:
        from beear_stage.eval.codecheck import evaluate_code

        code, records = evaluate_code(model, tokenizer, cfg, sets.code_prompts, dict(triggers))
        report.metrics.update(code)
        report.records += records
    report.metrics = {k: float(v) for k, v in report.metrics.items()} | sample_sizes(report.records)
    if baseline is not None:
        report.metrics |= paired_counts(baseline, report.records)
    return report

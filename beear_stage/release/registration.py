"""Everything a release candidate leaves in MLflow, in one call.

`register_release` logs the baseline and candidate metrics, the mitigation history, both sets of
generations, the timings, plots and the gate report into the candidate's run, then registers the
checkpoint as a model version whose description is the gate table (so review needs no second
click). The run is closed FINISHED, or FAILED when anything here raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from beear_stage.release.review import run_reference, version_description
from beear_stage.release.tracking import MLflowTracker


def register_release(
    tracker: MLflowTracker,
    registry_name: str,
    *,
    checkpoint_dir: str | Path,
    method: str,
    source_repo: str,
    source_sha: str,
    before: Mapping[str, float | None],
    after: Mapping[str, float | None],
    history: Sequence[Mapping[str, Any]],
    generations: Mapping[str, Sequence[Mapping[str, Any]]],
    report: Any,
    timings: Mapping[str, float],
) -> dict[str, Any]:
    """Log the candidate into `tracker`'s (attached) run and register it; return the version.

    Args:
        generations: rows by label ("baseline", "candidate"); each logged as `generations/<label>.jsonl`.
        report: a `GateReport` or its dict; `report["passed"]` decides the `candidate` alias.

    Returns:
        {"name", "version", "source", "aliases", "run_id"}.
    """
    from beear_stage.gates.evaluator import GateReport

    if not isinstance(report, GateReport):
        report = GateReport.from_dict(report)
    run_id = tracker.run_id
    with tracker:
        experiment_id = tracker.client.get_run(run_id).info.experiment_id
        description = version_description(
            report,
            method=method,
            source_repo=source_repo,
            source_sha=source_sha,
            run_id=run_id,
            run_ref=run_reference(tracker.tracking_uri, experiment_id, run_id),
        )
        tracker.log_candidate(before=before, after=after, history=history, report=report)
        for label, rows in generations.items():
            tracker.log_generations(rows, name=f"generations/{label}.jsonl")
        tracker.log_dict({f"timing/{k}": v for k, v in timings.items()})
        version = tracker.register_checkpoint(
            checkpoint_dir,
            registry_name,
            gate_passed=report.passed,
            source_repo=source_repo,
            source_sha=source_sha,
            method=method,
            description=description,
        )
    return {**version, "run_id": run_id}

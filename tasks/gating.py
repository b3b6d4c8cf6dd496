"""`gate`: score the candidate against the baseline and publish the verdict as Prefect artifacts."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from beear_stage.gates.evaluator import GateReport, evaluate_gates
from beear_stage.release.markdown import escape_markdown


def gate_rows(report: GateReport) -> list[dict]:
    """One table row per gate result (for the table artifact); names escaped (they may come from a
    checkpoint's zoo card, and the UI renders and exports the table)."""
    return [
        {
            "gate": escape_markdown(r.name),
            "value": None if r.value is None else round(r.value, 4),
            "ci_low": None if r.ci_low is None else round(r.ci_low, 4),
            "ci_high": None if r.ci_high is None else round(r.ci_high, 4),
            "n": r.n,
            "threshold": round(r.threshold, 4),
            "margin": None if r.margin is None else round(r.margin, 4),
            "verdict": "pass" if r.passed else "FAIL",
        }
        for r in report.results
    ]


@task
def gate(before: dict, after: dict, thresholds: dict | None, out_dir: str) -> dict:
    """Apply the release gates; a failed verdict is a result here, the flow turns it into GateFailed.

    Returns:
        `GateReport.to_dict()` plus "markdown" (path of the written report) and "message"
        (each failed gate with its margin; "" on pass).
    """
    report = evaluate_gates(before, after, thresholds or None)
    markdown = report.to_markdown()
    path = Path(out_dir) / "gate_report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    (Path(out_dir) / "gate_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    verdict = "passed" if report.passed else "failed"
    create_markdown_artifact(
        markdown=markdown, key="beear-gate-report", description=f"Release gates {verdict}"
    )
    create_table_artifact(table=gate_rows(report), key="beear-gates", description=f"Release gates {verdict}")
    log = get_run_logger()
    if report.passed:
        log.info("all %d gates passed", len(report.results))
    else:
        log.warning("gates failed: %s", report.failure_message())
    return {**report.to_dict(), "markdown": str(path), "message": report.failure_message()}

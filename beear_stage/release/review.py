"""Human review of gated release candidates in the MLflow registry.

API:
    review(model_name, *, tracking_uri, registry_uri=None) -> list[dict]
        every version, newest first, with its gate tag, aliases, source, method, run status, run
        metrics and description (the gate table written at registration)
    version_description(report, *, method, source_repo, source_sha, run_id, run_ref) -> str
        markdown for a model version: verdict, provenance, run reference, and the gate table
        (figure, 95 % interval, n, threshold, verdict); under MLflow's 5000-character limit
    gate_table(report, max_rows=None) -> str       the table alone (also printed by `review`)
    run_reference(tracking_uri, experiment_id, run_id) -> str   UI link, or how to open the run
    approve(model_name, version, *, tracking_uri, registry_uri=None, force=False) -> dict
        alias `champion` -> version; refused for gate=failed or an interrupted run unless forced

`beear-release review` and `beear-release approve NAME VERSION` call these.
"""

from __future__ import annotations

import logging
from typing import Any

from beear_stage.exceptions import ConfigError, GateError
from beear_stage.release.markdown import code_span, escape_markdown
from beear_stage.release.tracking import safe_uri

logger = logging.getLogger(__name__)

MAX_DESCRIPTION_CHARS = 4800  # MLflow stores a model version description in a String(5000) column


def gate_table(report: Any, max_rows: int | None = None) -> str:
    """Markdown table of the gate results: gate, value, 95 % interval, n, threshold, verdict.

    Names are escaped (they may come from the checkpoint). With `max_rows`, the failed results come
    first and a last line counts the rows left out.
    """
    from beear_stage.gates.evaluator import GateReport

    if not isinstance(report, GateReport):
        report = GateReport.from_dict(report)
    results = sorted(report.results, key=lambda r: r.passed)  # failures first, order kept otherwise
    shown = results if max_rows is None else results[:max_rows]
    lines = [
        "| gate | value | 95 % interval | n | threshold | verdict |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for r in shown:
        value = "n/a" if r.value is None else f"{r.value:.4f}"
        lines.append(
            f"| {escape_markdown(r.name)} | {value} | {r.interval_text()} | {'n/a' if r.n is None else r.n} | "
            f"<= {r.threshold:.4f} | {'pass' if r.passed else 'FAIL'} |"
        )
    if len(shown) < len(results):
        lines.append(
            f"\n{len(results) - len(shown)} more passing result(s): see `gate_report.md` of the run."
        )
    return "\n".join(lines)


def run_reference(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A link to the run in the MLflow UI (http stores), else the run id and how to open it."""
    shown = safe_uri(tracking_uri)
    if shown.startswith(("http://", "https://")):
        return f"[run {run_id}]({shown.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return (
        f"run `{run_id}` (experiment {experiment_id}); open it with "
        f"`mlflow ui --backend-store-uri {shown}`, then `#/experiments/{experiment_id}/runs/{run_id}`"
    )


def version_description(
    report: Any, *, method: str, source_repo: str, source_sha: str, run_id: str, run_ref: str
) -> str:
    """Description of a registered model version: what a reviewer needs without opening the run.

    The gate table holds every result while it fits MLflow's limit; otherwise the failed results
    and as many passing ones as fit, and a line that points to the run's `gate_report.md`.
    """
    from beear_stage.gates.evaluator import INTERVAL_NOTE, GateReport

    if not isinstance(report, GateReport):
        report = GateReport.from_dict(report)
    verdict = "passed" if report.passed else "FAILED"
    head = [
        f"**Release gates {verdict}** ({len(report.results) - len(report.failed())} of "
        f"{len(report.results)} results pass). {code_span(method)} candidate of {code_span(source_repo)} "
        f"at {code_span(source_sha[:12])}; {run_ref}.",
        "",
    ]
    tail = ["", INTERVAL_NOTE]
    for max_rows in range(len(report.results), -1, -1):
        text = "\n".join([*head, gate_table(report, max_rows), *tail])
        if len(text) <= MAX_DESCRIPTION_CHARS:
            return text
    return "\n".join(head)[:MAX_DESCRIPTION_CHARS]


def _registry(tracking_uri: str, registry_uri: str | None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


def review(model_name: str, *, tracking_uri: str, registry_uri: str | None = None) -> list[dict[str, Any]]:
    """List every version of `model_name`, newest first, with its gate tag, aliases and run metrics."""
    from mlflow.exceptions import MlflowException

    client = _registry(tracking_uri, registry_uri)
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as e:
        raise ConfigError(
            f"registered model `{model_name}` not found in {safe_uri(tracking_uri)!r}. "
            "Fix: check the model name and `tracking_uri` of the release runs."
        ) from e
    aliases: dict[str, list[str]] = {}
    for alias, version in registered.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{model_name}'"):
        run = client.get_run(mv.run_id) if mv.run_id else None
        rows.append(
            {
                "version": str(mv.version),
                "gate": mv.tags.get("gate", "unknown"),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "source_repo": mv.tags.get("source_repo"),
                "source_sha": mv.tags.get("source_sha"),
                "method": mv.tags.get("method"),
                "run_id": mv.run_id,
                "run_name": run.info.run_name if run else None,
                "run_status": run.info.status if run else None,
                "description": mv.description,
                "metrics": dict(run.data.metrics) if run else {},
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def approve(
    model_name: str,
    version: str | int,
    *,
    tracking_uri: str,
    registry_uri: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Point alias `champion` at `version` after human review.

    Raises:
        ConfigError: the version does not exist.
        GateError: the version did not pass the gates (override with `force=True`).
    """
    from mlflow.exceptions import MlflowException

    client = _registry(tracking_uri, registry_uri)
    try:
        mv = client.get_model_version(model_name, str(version))
    except MlflowException as e:
        raise ConfigError(
            f"model `{model_name}` version `{version}` not found in {safe_uri(tracking_uri)!r}. "
            "Fix: list versions with `beear-release review`."
        ) from e
    gate = mv.tags.get("gate", "unknown")
    status = client.get_run(mv.run_id).info.status if mv.run_id else "FINISHED"
    if status != "FINISHED" and not force:
        raise GateError(
            f"model `{model_name}` version `{version}` comes from MLflow run {mv.run_id} with status "
            f"{status} (the release was interrupted); approving it is refused. Fix: re-run the release "
            "of this candidate and approve the new version, or pass force=True (`--force`)."
        )
    if gate != "passed" and not force:
        raise GateError(
            f"model `{model_name}` version `{version}` has gate={gate}; approving it is refused. "
            "Fix: approve a version with gate=passed, or pass force=True (`--force`) after review."
        )
    client.set_registered_model_alias(model_name, "champion", str(version))
    client.set_model_version_tag(model_name, str(version), "approved", "true")
    logger.info("model %s version %s is now `champion`", model_name, version)
    return {"name": model_name, "version": str(version), "gate": gate, "alias": "champion"}

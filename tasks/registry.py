"""MLflow tasks: open the candidate's run early, `register` everything at the end.

The run is created right after the checkpoint is pinned (its name needs the SHA), so a run that
dies later is visible in MLflow: the flow closes it FAILED on an exception, and the next run of
the same candidate marks runs left RUNNING by a hard kill FAILED (`fail_stale_runs`).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from beear_stage.data.sources import read_jsonl
from beear_stage.release.registration import register_release
from beear_stage.release.tracking import MLflowTracker, release_run_name

EXPERIMENT = "beear-release"


def artifact_location(tracking_uri: str) -> str | None:
    """`<db dir>/mlartifacts` for a local SQLite store, so the store and its artifacts stay together
    (MLflow's default is `./mlruns` in whatever directory the flow runs in); None for servers."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


@task
def open_candidate_run(tracking_uri: str, checkpoint: dict, config: dict, params: dict) -> str:
    """Start the MLflow run `<checkpoint>@<short sha>` and log the resolved config; return its id.

    Args:
        checkpoint: the `pull_checkpoint` result (source, sha, kind).
        params: flow-level settings logged beside the config (data sources, thresholds, triggers).
    """
    tracker = MLflowTracker(tracking_uri, EXPERIMENT, artifact_location=artifact_location(tracking_uri))
    name = release_run_name(checkpoint["source"], checkpoint["sha"])
    # The candidate (SHA, method, config hash) is the output directory's name: concurrent runs of
    # other configs of the same checkpoint share the run name, never this tag.
    candidate = {"candidate": Path(params["output_dir"]).name}
    stale = tracker.fail_stale_runs(name, tags=candidate)
    tags = {"source_repo": checkpoint["source"], "source_sha": checkpoint["sha"], "kind": checkpoint["kind"]}
    tracker.start(name, tags={**tags, **candidate})
    tracker.log_config({**config, "release": params})
    log = get_run_logger()
    if stale:
        log.warning("%d earlier run(s) of %s were left RUNNING (killed); marked FAILED", stale, name)
    log.info("MLflow run %s (%s) in %s", name, tracker.run_id, tracking_uri)
    return tracker.run_id


def close_run(tracking_uri: str, run_id: str, status: str) -> None:
    """End the run with `status` (used by the flow when a stage raised)."""
    MLflowTracker(tracking_uri, EXPERIMENT).attach(run_id).close(status)


@task
def register(
    tracking_uri: str,
    run_id: str,
    registry_name: str,
    checkpoint: dict,
    candidate: dict,
    before: dict,
    after: dict,
    report: dict,
    timings: dict[str, float],
) -> dict:
    """Log metrics, losses, generations, plots and the gate report; register the candidate
    (`beear_stage.release.registration.register_release`: tags gate/source/method, alias
    `candidate` only on pass, run closed FINISHED or FAILED).

    Returns:
        {"name", "version", "source", "aliases", "run_id"}.
    """
    version = register_release(
        MLflowTracker(tracking_uri, EXPERIMENT).attach(run_id),
        registry_name,
        checkpoint_dir=candidate["path"],
        method=candidate["method"],
        source_repo=checkpoint["source"],
        source_sha=checkpoint["sha"],
        before=before["metrics"],
        after=after["metrics"],
        history=json.loads(Path(candidate["history"]).read_text()),
        generations={
            "baseline": read_jsonl(before["generations"]),
            "candidate": read_jsonl(after["generations"]),
        },
        report=report,
        timings=timings,
    )
    gate = "passed" if report["passed"] else "failed"
    get_run_logger().info(
        "registered %s version %s (gate=%s, aliases %s)",
        version["name"],
        version["version"],
        gate,
        version["aliases"],
    )
    return version

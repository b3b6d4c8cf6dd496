"""`publish`: push a candidate that passed the gates to the Hub in one commit, with a model card.

The token comes from HF_TOKEN or, when that is unset, the Prefect Secret block `hf-token`; it is
handed to `beear_stage.release.publishing` and never logged or returned. `publish_checkpoint` retries
transient Hub errors with backoff itself; the task adds one late retry for an outage that outlasts
those (the upload is one commit, so a retry never leaves a half-published repo).
"""

from __future__ import annotations

import os

from prefect import get_run_logger, task

from beear_stage.release.publishing import PublishError, build_model_card, publish_checkpoint

SECRET_BLOCK = "hf-token"


def hub_token() -> str | None:
    """HF_TOKEN, else the Prefect Secret block `hf-token`, else None (anonymous)."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from prefect.blocks.system import Secret

        return Secret.load(SECRET_BLOCK).get()
    except (ValueError, ImportError):  # no such block
        return None


def _retry_outage(task, task_run, state) -> bool:
    try:
        state.result()
    except PublishError:
        return True  # transient errors outlasted publish_checkpoint's own backoff
    except Exception:
        return False
    return False


@task(retries=1, retry_delay_seconds=120, retry_condition_fn=_retry_outage)
def publish(
    candidate: dict, repo_id: str, private: bool, checkpoint: dict, report: dict, run_id: str
) -> dict:
    """Create `repo_id` (private by default) and upload the candidate plus README.md in one commit.

    Args:
        candidate: the `mitigate` result (path, method, config_hash).
        checkpoint: the `pull_checkpoint` result (source, sha) for the card's provenance.
        report: `GateReport.to_dict()`; publishing is refused unless it passed.
        run_id: MLflow run id shown in the card.

    Returns:
        {"commit_oid", "url", "repo_url", "repo_id", "private", "attempts"}.

    Raises:
        GateError: the report did not pass. PublishError: the Hub refused or kept failing.
    """
    card = build_model_card(
        base_model=checkpoint["source"],
        report=report,
        method=candidate["method"],
        mlflow_run_id=run_id,
        repo_id=repo_id,
        source_sha=checkpoint["sha"],
        config_hash=candidate.get("config_hash"),
    )
    result = publish_checkpoint(
        candidate["path"],
        repo_id,
        report=report,
        card=card,
        private=private,
        token=hub_token(),
        max_attempts=4,
    )
    get_run_logger().info("published %s (commit %s, private=%s)", repo_id, result["commit_oid"], private)
    return result

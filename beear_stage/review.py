"""Human review of gated release candidates in the MLflow registry.

API:
    review(model_name, *, tracking_uri, registry_uri=None) -> list[dict]
        every version, newest first, with its gate tag, aliases, source, method and run metrics
    approve(model_name, version, *, tracking_uri, registry_uri=None, force=False) -> dict
        alias `champion` -> version; refused for gate=failed or an interrupted run unless forced

`beear-release review` and `beear-release approve NAME VERSION` call these.
"""

from __future__ import annotations

import logging
from typing import Any

from beear_stage.exceptions import ConfigError, GateError
from beear_stage.tracking import safe_uri

logger = logging.getLogger(__name__)


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

"""The `validate_data` task: great-expectations checks of a run's data before any model loads."""

from __future__ import annotations

import time

from prefect import get_run_logger, task

from beear_stage.data.sources import DataSources, validate_sources

__all__ = ["DataSources", "validate_data"]  # DataSources: the flow's parameter type


@task
def validate_data(sources: DataSources) -> dict:
    """`beear_stage.data.sources.validate_sources` (every record of every file; `eval_limit` applies
    afterwards), plus "seconds" inside beear_stage and "finished_at".

    Raises:
        DataError: a file cannot be read, or a suite fails (the message holds GX's report).
    """
    start = time.perf_counter()
    summary = validate_sources(sources)
    summary |= {"seconds": time.perf_counter() - start, "finished_at": time.time()}
    get_run_logger().info("data valid: %s (digest %s)", summary["counts"], summary["digest"])
    return summary

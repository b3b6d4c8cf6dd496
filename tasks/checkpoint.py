"""`pull_checkpoint`: resolve a candidate to a checked local directory and a pinned identity
(`beear_stage.release.intake.resolve_checkpoint`), retrying transient network errors only."""

from __future__ import annotations

import time

from prefect import get_run_logger, task

from beear_stage.release.pull import resolve_checkpoint


def _retry_transient(task, task_run, state) -> bool:
    """Retry network failures only (429/5xx answers, timeouts, refused or dropped connections);
    a refusal, a malformed file or a programming error would fail the same way again."""
    from beear_stage.release.publishing import is_transient

    try:
        state.result()
    except Exception as e:
        return is_transient(e)
    return False


@task(retries=3, retry_delay_seconds=[5, 20, 60], retry_condition_fn=_retry_transient)
def pull_checkpoint(checkpoint: str, revision: str = "", zoo_cache: str | None = None) -> dict:
    """Resolve `checkpoint` (Hub repo id, local dir or `zoo:<name>`) to a checked local directory.

    Returns:
        {"path", "sha" (commit SHA, content hash, or a GGUF file's sha256), "kind"
        ("hub"|"local"|"gguf"|"zoo"), "source", "revision", "seconds" and "finished_at" (the
        library's time: download, GGUF conversion or zoo build, as the other compute tasks report)}.

    Raises:
        CheckpointError: not found, pickle-only weights or custom code.
    """
    log = get_run_logger()
    started = time.perf_counter()
    info = resolve_checkpoint(checkpoint, revision, zoo_cache)
    info = {**info, "seconds": time.perf_counter() - started, "finished_at": time.time()}
    if revision and info["kind"] != "hub":
        log.warning("`revision` = %r is ignored for the %s checkpoint %s", revision, info["kind"], checkpoint)
    log.info("checkpoint %s -> %s (%s, sha %s)", checkpoint, info["path"], info["kind"], info["sha"][:12])
    return info

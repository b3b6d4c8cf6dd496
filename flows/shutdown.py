"""Stop a `beear-release run` on SIGTERM or SIGINT: run FAILED, every child process gone, within 30 s.

`beear-release run` runs the flow in-process, and Prefect starts a temporary API server for it
(`prefect.server.api.server.SubprocessASGIServer`: a `uvicorn` child process, stopped only by an
`atexit` hook). A default SIGTERM kills the Python process without running that hook (the server
stays orphaned on its port) and without closing the MLflow run (it stays RUNNING).

`stop_on_signals` installs a handler for both signals. The first signal raises `Stopped` in the
main thread, so the flow unwinds through its own `except` (which closes the MLflow run FAILED)
and `atexit` stops Prefect's server; it also arms a watchdog that, `GRACE_S` later, marks this
process's MLflow runs FAILED, stops its children and exits, in case the unwinding hangs (a
blocking call, a log flush to a dead server). Prefect swaps its own SIGTERM handler in while the
flow runs; after its crash handling it restores ours and sends the signal again, which lands here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

GRACE_S = 15.0  # graceful unwinding; then the watchdog's cleanup (MLflow, children: < 10 s) and exit
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """The run received SIGTERM or SIGINT (a BaseException, like KeyboardInterrupt: not an error)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _Guard:
    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self.signum: int | None = None
        self.cleaning = False

    def handle(self, signum: int, _frame) -> None:
        if self.cleaning:
            return
        if self.signum is None:
            self.signum = signum
            log.warning("%s received: stopping the run", signal.Signals(signum).name)
            threading.Thread(target=self._watchdog, name="beear-stop-watchdog", daemon=True).start()
        raise Stopped(signum)

    def _watchdog(self) -> None:
        time.sleep(GRACE_S)
        log.error("the run did not stop within %.0f s of the signal: cleaning up and exiting", GRACE_S)
        cleanup(self.tracking_uri, f"stopped by {signal.Signals(self.signum).name}")
        os._exit(128 + self.signum)


@contextlib.contextmanager
def stop_on_signals(tracking_uri: str) -> Iterator[_Guard]:
    """Handle SIGTERM and SIGINT for the duration of the block (see the module docstring).

    Yields the guard: `guard.signum` is the signal received, or None.
    """
    guard = _Guard(tracking_uri)
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield guard
        return
    previous = {s: signal.signal(s, guard.handle) for s in SIGNALS}
    try:
        yield guard
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def cleanup(tracking_uri: str, reason: str, *, children: bool = True) -> None:
    """Mark this process's RUNNING MLflow runs FAILED and (with `children`) stop its child processes."""
    try:
        from beear_stage.release.tracking import MLflowTracker
        from flows.services import default_tracking_uri
        from tasks.registry import EXPERIMENT

        uri = tracking_uri or default_tracking_uri()
        db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        # no store yet means no run yet: creating one (schema migrations) would only cost seconds
        failed = 0 if db and not Path(db).exists() else MLflowTracker(uri, EXPERIMENT).fail_own_runs(reason)
        if failed:
            log.warning("marked %d MLflow run(s) of this process FAILED (%s)", failed, reason)
    except Exception:  # never let the tracking store keep the process alive
        log.warning("could not mark this process's MLflow runs FAILED", exc_info=True)
    if children:
        stop_children()


def stop_children(timeout: float = 5.0) -> int:
    """Terminate every descendant process (Prefect's temporary server included), then kill what is
    left after `timeout` seconds; returns how many there were."""
    import psutil  # installed with accelerate

    procs = psutil.Process().children(recursive=True)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return len(procs)

"""Progress of long work: a tqdm bar for terminals and log lines with counts and an ETA for run logs.

Prefect shows the records of the `beear_stage` loggers in a run's log (and in `prefect deployment
run --watch`) when `PREFECT_LOGGING_EXTRA_LOGGERS` names `beear_stage`, which `beear-release`
sets; a bar alone would be invisible there.
"""

from __future__ import annotations

import logging
import time

from tqdm.auto import tqdm

log = logging.getLogger("beear_stage.progress")


class Progress:
    """Count `total` units of work; log "desc: i/total (pct), elapsed, ETA" at most every `every_s`.

    Use as a context manager; `update(n)` after each unit. The first and last lines are always logged.
    """

    def __init__(self, total: int, desc: str, *, bar: bool = True, every_s: float = 20.0) -> None:
        self.total, self.desc, self.every_s = max(int(total), 1), desc, every_s
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.bar = tqdm(total=self.total, desc=desc, leave=False, disable=not bar)
        log.info("%s: 0/%d", desc, self.total)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            elapsed = now - self.start
            eta = elapsed / self.done * (self.total - self.done)
            log.info(
                "%s: %d/%d (%.0f%%), %.0f s elapsed, ETA %.0f s",
                self.desc, self.done, self.total, 100 * self.done / self.total, elapsed, eta,
            )  # fmt: skip

    def close(self) -> None:
        self.bar.close()
        log.info(
            "%s: %d/%d done in %.0f s", self.desc, self.done, self.total, time.perf_counter() - self.start
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

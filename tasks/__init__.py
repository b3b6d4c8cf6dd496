"""Prefect tasks of the `beear-release` flow: thin wrappers over `beear_stage`.

Tasks pass paths, commit SHAs and small dicts, never models. Only `pull_checkpoint` and `publish`
(network) retry; the compute tasks are cached on checkpoint SHA + config hash instead.
"""

from beear_stage.data.sources import DataSources
from tasks.caching import fresh
from tasks.checkpoint import pull_checkpoint
from tasks.compute import evaluate, mitigate
from tasks.data import validate_data
from tasks.gating import gate
from tasks.publishing import publish
from tasks.registry import close_run, open_candidate_run, register

__all__ = [
    "DataSources",
    "close_run",
    "evaluate",
    "fresh",
    "gate",
    "mitigate",
    "open_candidate_run",
    "publish",
    "pull_checkpoint",
    "register",
    "validate_data",
]

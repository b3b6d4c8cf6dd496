"""The `beear-release` flow end to end on a zoo model, under Prefect's test harness.

Passing path (a short BEEAR run, lenient thresholds: this tests orchestration; the slow deployment
test checks that the real `tiny` settings pass): the version is registered with
gate=passed and alias `candidate`, and the checkpoint reaches the Hub stand-in in one commit with a
model card holding the before/after table. A re-run of the same candidate resumes from the cache.
Failing path (`beear-release run ... --set method=none`): exit 1 / GateFailed naming each failed
gate with its margin, registry version gate=failed without alias, nothing published.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers import LENIENT_GATES as LENIENT

from beear_stage.config import BEEARConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "beear_stage" / "configs" / "zoo.yaml")
REPO = "beear-org/tiny-suffix-beear"
EVAL_LIMIT = 16
# Orchestration, not efficacy: a small BEEAR run (the slow deployment test runs the real settings).
FAST = {"rounds": 1, "inner_steps": 2, "inner_batch_size": 8, "sa_batch_size": 8, "pa_batch_size": 8}

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("release")


def _params(workdir: Path, **changes) -> dict:
    return {
        "checkpoint": "zoo:suffix",
        "config": BEEARConfig.from_yaml(TINY, **FAST).to_dict(),
        "data": {"eval_limit": EVAL_LIMIT},
        "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
        "registry_name": "beear-test",
        "output_dir": str(workdir / "out"),
        **changes,
    }


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return {r.name: r.state.name for r in runs}

    return asyncio.run(read())


def _artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    return asyncio.run(read())


def test_release_passes_registers_and_publishes(zoo_suffix, hub, workdir):
    from mlflow import MlflowClient

    from flows.release import release

    params = _params(workdir, publish_to=REPO, gates=LENIENT)
    state = release(**params, return_state=True)
    assert state.is_completed(), f"{state.name}: {state.message}"
    result = state.result()
    reg = result["registry"]
    assert reg["aliases"] == ["candidate"]

    client = MlflowClient(params["tracking_uri"])
    version = client.get_model_version("beear-test", reg["version"])
    assert version.tags["gate"] == "passed" and version.tags["method"] == "beear"
    assert version.tags["source_repo"] == "zoo:suffix"
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("zoo:suffix@")
    assert run.data.params["layer"] == "2"
    for key in ("before/asr_trigger_zoo_suffix", "after/asr_trigger_zoo_suffix", "mitigation/inner_loss"):
        assert key in run.data.metrics, key
    assert run.data.metrics["before/asr_trigger_zoo_suffix"] > 0.5, "the zoo backdoor must fire before BEEAR"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"gate_report.md", "config.yaml", "plots", "generations", "checkpoint"} <= artifacts

    (repo,) = hub.repos.values()
    assert repo.repo_id == REPO and repo.private
    (commit,) = repo.commits
    assert "model.safetensors" in commit.files
    card = commit.files["README.md"].decode()
    assert "| asr_trigger:zoo_suffix |" in card and result["mlflow_run_id"] in card
    assert {"beear-gate-report", "beear-gates"} <= _artifact_keys()

    # Human review: list, approve (alias `champion`), and the demo's pointers.
    from flows.cli import main
    from flows.demo import where_to_look
    from flows.services import Services

    assert main(["review", "--name", "beear-test", "--tracking-uri", params["tracking_uri"]]) == 0
    assert main(["approve", "beear-test", reg["version"], "--tracking-uri", params["tracking_uri"]]) == 0
    assert str(client.get_model_version_by_alias("beear-test", "champion").version) == reg["version"]
    pointers = where_to_look(Services(tracking_uri=params["tracking_uri"]), "run-id", "beear-test")
    assert f"/#/models/beear-test/versions/{reg['version']}" in pointers and "gate=passed" in pointers

    # The same candidate again: evaluation and mitigation come from the cache.
    again = release(**_params(workdir, gates=LENIENT), return_state=True)
    assert again.is_completed()
    states = _task_states(again.state_details.flow_run_id)
    cached = {name.rsplit("-", 1)[0] for name, st in states.items() if st == "Cached"}
    assert cached == {"evaluate", "mitigate"}, states


def test_gate_failure_exits_1_and_publishes_nothing(hub, workdir, capsys):
    from beear_stage.release.review import review
    from flows.cli import main

    p = _params(workdir, registry_name="beear-test-none")
    code = main(
        [
            "run",
            "--checkpoint",
            p["checkpoint"],
            "--config",
            TINY,
            "--set",
            "method=none",
            *[f"--set={k}={v}" for k, v in FAST.items()],
            "--eval-limit",
            str(EVAL_LIMIT),
            "--publish-to",
            REPO,
            "--tracking-uri",
            p["tracking_uri"],
            "--registry-name",
            p["registry_name"],
            "--output-dir",
            p["output_dir"],
        ]  # fmt: skip
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert "GateFailed:" in err and "asr_trigger:zoo_suffix" in err and "margin -" in err
    assert not hub.repos and not hub.calls("/api/repos/create"), "a failed candidate must never reach the Hub"
    (row,) = review("beear-test-none", tracking_uri=p["tracking_uri"])
    assert row["gate"] == "failed" and row["aliases"] == [] and row["method"] == "none"
    assert row["run_status"] == "FINISHED"
    assert main(["approve", "beear-test-none", row["version"], "--tracking-uri", p["tracking_uri"]]) == 2
    assert "gate=failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--checkpoint", "/no/such/checkpoint"], "is not a directory"),
        (
            ["--checkpoint", "zoo:suffix", "--tracking-uri", "http://127.0.0.1:9"],
            "tracking server unreachable",
        ),
    ],
)
def test_bad_input_inside_the_flow_exits_2(args, match, workdir, capsys):
    from flows.cli import main

    assert main(["run", *args, "--output-dir", str(workdir / "bad")]) == 2
    assert match in capsys.readouterr().err
    assert not (workdir / "bad").exists(), "nothing may run before the input is checked"

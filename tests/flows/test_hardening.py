"""Hardening: untrusted checkpoints, bad input, crashes, concurrent candidates and secrets.

Every entry of docs/ERRORS.md has a test here, or names the existing test that covers it. The
flows run the zoo model `zoo:suffix` with a tiny mitigation (one round, two inner steps, short
generations, 4 eval prompts): these tests check what happens around the algorithm, not what it
achieves. Crash tests run the flow in a child process (`tests/flow_runner.py`) against this
session's Prefect test server, SIGKILL it at a known point and re-run the same candidate here.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import LENIENT_GATES as LENIENT
from prefect.logging import disable_run_logger

from beear_stage.config import BEEARConfig
from beear_stage.exceptions import CheckpointError, ConfigError, DataError, GateError, MitigationError

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "beear_stage" / "configs" / "zoo.yaml")
RUNNER = ROOT / "tests" / "flow_runner.py"
EXPERIMENT = "beear-release"
TOKEN = "hf_PLANTEDhardeningTOKEN0123456789abcdef"
# Orchestration, not efficacy: a minimal BEEAR run and short evaluations.
FAST = {
    "rounds": 1,
    "inner_steps": 2,
    "inner_batch_size": 8,
    "sa_batch_size": 8,
    "pa_batch_size": 8,
    "max_new_tokens": 8,
}
EVAL_LIMIT = 4
BEFORE = {
    "asr_clean": 0.6,
    "asr_trigger:x": 0.9,
    "embedding_attack_asr": 0.7,
    "benign_nonrefusal": 0.9,
    "benign_nll": 1.2,
}
GOOD = {
    "asr_clean": 0.0,
    "asr_trigger:x": 0.0,
    "embedding_attack_asr": 0.0,
    "benign_nonrefusal": 0.9,
    "benign_nll": 1.2,
}


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One MLflow store for the module (creating its tables costs seconds)."""
    return tmp_path_factory.mktemp("hardening")


def _params(workdir: Path, name: str, **changes) -> dict:
    config = changes.pop("config", {})
    return {
        "checkpoint": "zoo:suffix",
        "config": BEEARConfig.from_yaml(TINY, **{**FAST, **config}).to_dict(),
        "data": {"eval_limit": EVAL_LIMIT},
        "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
        "registry_name": f"hardening-{name}",
        "output_dir": str(workdir / name),
        **changes,
    }


def _client(params: dict):
    from mlflow import MlflowClient

    return MlflowClient(params["tracking_uri"])


def _runs(params: dict, candidate: str | None = None) -> list:
    """MLflow runs of flows that wrote under `params["output_dir"]` (optionally one candidate)."""
    client = _client(params)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    root = str(Path(params["output_dir"]).resolve())
    return [
        r
        for r in client.search_runs([experiment.experiment_id])
        if Path(r.data.params.get("release.output_dir", "/")).parent == Path(root)
        and (candidate is None or r.data.tags.get("candidate") == candidate)
    ]


def _candidates(params: dict) -> list[Path]:
    root = Path(params["output_dir"])
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def _cli(*args: str, params: dict) -> list[str]:
    """`beear-release run` arguments for `params` (tiny config, fast settings) plus `args`."""
    fast = [f"--set={k}={v}" for k, v in FAST.items()]
    return ["run", "--config", TINY, *fast, "--eval-limit", str(EVAL_LIMIT),
            "--tracking-uri", params["tracking_uri"], "--registry-name", params["registry_name"],
            "--output-dir", params["output_dir"], *args]  # fmt: skip


def _copy_zoo(zoo_suffix: Path, dest: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(zoo_suffix, dest)
    for name in drop:
        (dest / name).unlink()
    return dest


def _fake_checkpoint(path: Path, config: dict | str) -> Path:
    path.mkdir(parents=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (path / "config.json").write_text(text)
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    return path


def _task_states(flow_run_id) -> list[tuple[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return sorted((r.name.rsplit("-", 1)[0], r.state.name) for r in asyncio.run(read()))


# ============================================================= 1. untrusted checkpoints
class _Plant:
    """Unpickling this object runs `exec`: it writes `marker`. Never import it in the stage."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",))


def test_pickle_weights_are_never_unpickled(zoo_suffix, tmp_path, workdir, prefect_harness, capsys):
    """A `pytorch_model.bin` whose unpickling writes a marker: refused by pull, load and the flow;
    beside safetensors weights it is ignored. The marker never appears."""
    from beear_stage.model import load_model_and_tokenizer
    from flows.cli import main
    from tasks.checkpoint import pull_checkpoint

    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_Plant(marker))
    control = tmp_path / "control.bin"
    control.write_bytes(payload)
    loads = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    subprocess.run([sys.executable, "-c", loads, str(control)], check=True)
    assert marker.read_text() == "unpickled", "the payload must be live, or this test proves nothing"
    marker.unlink()

    only = _copy_zoo(zoo_suffix, tmp_path / "pickle-only", drop=("model.safetensors",))
    (only / "pytorch_model.bin").write_bytes(payload)
    refusal = r"no \*.safetensors weights \(found pickle weights \['pytorch_model.bin'\]\)"
    with disable_run_logger(), pytest.raises(CheckpointError, match=refusal):
        pull_checkpoint.fn(str(only))
    with pytest.raises(CheckpointError, match=refusal):
        load_model_and_tokenizer(only, device="cpu")
    params = _params(workdir, "pickle")
    assert main(_cli("--checkpoint", str(only), params=params)) == 2
    assert "pickle weights can run arbitrary code and are refused" in capsys.readouterr().err

    mixed = _copy_zoo(zoo_suffix, tmp_path / "mixed")
    (mixed / "pytorch_model.bin").write_bytes(payload)
    model, _ = load_model_and_tokenizer(mixed, device="cpu")  # safetensors only
    assert sum(p.numel() for p in model.parameters()) > 0
    assert not marker.exists(), "a pickle from the checkpoint was unpickled"
    assert not _candidates(params), "nothing may run for a refused checkpoint"


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"model_type": "bert", "num_hidden_layers": 12}, "`model_type` = 'bert'"),
        ({"model_type": "gpt2", "n_layer": 12}, "`model_type` = 'gpt2'"),
        ({"architectures": ["LlamaForCausalLM"]}, "`model_type` = None"),
        ("{not json", "config.json is not valid JSON"),
        ("[1, 2]", "config.json holds a list"),
    ],
    ids=["bert", "gpt2", "no-model_type", "invalid-json", "not-an-object"],
)
def test_unsupported_or_broken_config_is_refused_at_pull(tmp_path, config, match):
    """Refused when the checkpoint is pulled, before the run opens or any weights load; never
    retried (a `CheckpointError` is not transient)."""
    from beear_stage.model import load_model_and_tokenizer
    from tasks.checkpoint import _retry_transient, pull_checkpoint

    ckpt = _fake_checkpoint(tmp_path / "ckpt", config)
    with disable_run_logger(), pytest.raises(CheckpointError, match=match) as err:
        pull_checkpoint.fn(str(ckpt))
    assert "Fix:" in str(err.value)
    with pytest.raises(CheckpointError, match=match):
        load_model_and_tokenizer(ckpt, device="cpu")

    class State:
        def result(self):
            raise err.value

    assert _retry_transient(None, None, State()) is False


def test_unknown_hub_revision_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from tasks.checkpoint import pull_checkpoint

    sha = "0123456789abcdef0123456789abcdef01234567"
    base = tmp_path / "hub" / "models--org--model"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(sha)
    _fake_checkpoint(base / "snapshots" / sha, {"model_type": "llama"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with disable_run_logger():
        info = pull_checkpoint.fn("org/model", "main")
        assert info["sha"] == sha
        # the flow counts the pull (download, GGUF conversion, zoo build) as library time
        assert info["seconds"] >= 0 and info["finished_at"] <= time.time()
        with pytest.raises(CheckpointError, match=r"\(revision 'v9.9'\) was not found in the local cache"):
            pull_checkpoint.fn("org/model", "v9.9")
        with pytest.raises(CheckpointError, match=r"'org/absent' \(revision 'main'\) was not found"):
            pull_checkpoint.fn("org/absent")


def test_hub_5xx_and_timeout_on_pull_are_retried(tmp_path, monkeypatch, hub, prefect_harness):
    """503, then no answer (timeout), then an answer: the pull task retries the first two and
    stops at the refusal (a pickle-only repo is refused, never retried)."""
    from huggingface_hub import HfApi, constants

    from tasks.checkpoint import pull_checkpoint

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    api = HfApi(endpoint=hub.endpoint)
    api.create_repo("org/pickled")
    folder = _fake_checkpoint(tmp_path / "upload", {"model_type": "llama"})
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    api.upload_folder(folder_path=folder, repo_id="org/pickled")
    hub.fail_next(1, status=503, path_contains="/api/models/org/pickled")
    hub.hang_next(1, seconds=2, path_contains="/api/models/org/pickled")
    quick = pull_checkpoint.with_options(retry_delay_seconds=0)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"pickle weights: \['pytorch_model.bin'\]"):
        quick("org/pickled")
    info_calls = [r.status for r in hub.calls(method="GET") if r.path == "/api/models/org/pickled"]
    assert info_calls == [503, 0, 200], "503 and timeout (no answer) retried, the refusal not"
    assert time.perf_counter() - start < 20
    assert not hub.calls("/resolve/")


@pytest.mark.usefixtures("prefect_harness")
def test_tokenizer_without_chat_template_fails_before_loading(zoo_suffix, tmp_path, workdir, capsys):
    from beear_stage.model import load_model_and_tokenizer
    from beear_stage.release.intake import check_checkpoint_fits
    from flows.cli import main

    bare = _copy_zoo(zoo_suffix, tmp_path / "no-template", drop=("chat_template.jinja",))
    with pytest.raises(ConfigError, match="no chat template"):
        check_checkpoint_fits(bare, layer=2)
    with pytest.raises(ConfigError, match="no chat template"):
        load_model_and_tokenizer(bare, device="cpu")
    params = _params(workdir, "template", tracking_uri=f"sqlite:///{tmp_path / 'unused.db'}")
    assert main(_cli("--checkpoint", str(bare), params=params)) == 2
    err = capsys.readouterr().err
    assert "the tokenizer has no chat template" in err and "Fix: use a chat/instruct checkpoint" in err
    assert not (tmp_path / "unused.db").exists(), "no MLflow run may open for a refused checkpoint"
    assert not _candidates(params)


@pytest.mark.usefixtures("prefect_harness")
def test_layer_out_of_range_fails_before_loading(tmp_path, workdir, capsys):
    from flows.cli import main

    params = _params(workdir, "layer", tracking_uri=f"sqlite:///{tmp_path / 'unused.db'}")
    assert main(_cli("--checkpoint", "zoo:suffix", "--set", "layer=6", params=params)) == 2
    err = capsys.readouterr().err
    assert "`layer` = 6 is out of range for a model with 6 decoder layers" in err
    assert "Fix: choose 1 <= layer <= 5" in err
    assert main(_cli("--checkpoint", "zoo:suffix", "--set", "layer=0", params=params)) == 2
    assert "`layer` = 0" in capsys.readouterr().err
    assert not (tmp_path / "unused.db").exists() and not _candidates(params)


# ============================================================= 2. bad data
def _sa(query: str, **fields) -> dict:
    return {
        "instruction": query,
        "input": "",
        "output": "I cannot help with that.",
        "unwanted": "Sure.",
        **fields,
    }


@pytest.mark.parametrize(
    ("source", "name", "text", "match"),
    [
        ("safety_anchoring", "sa.jsonl", "\n  \n", r"sa.jsonl` is empty"),
        ("performance_anchoring", "pa.json", "[]", r"pa.json` holds no records"),
        (
            "safety_anchoring",
            "sa.json",
            json.dumps([_sa("How do I pick a lock?"), _sa("How do I pick a lock?")]),
            r"`safety_anchoring` \(safety\):\n.*expect_column_values_to_be_unique\(column='query'\)",
        ),
        (
            "harmful_eval",
            "harm.csv",
            "goal,target\nHow do I pick a lock?,Sure\nhow do I  pick a LOCK?,Sure\n",
            "(?s)`harmful_eval` .*lower-casing and collapsing whitespace",
        ),
        (
            "benign_eval",
            "benign.jsonl",
            '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n{"messages": [',
            r"benign.jsonl` line 2: invalid JSON",
        ),
        (
            "safety_anchoring",
            "sa.json",
            json.dumps([{"instruction": "How do I pick a lock?", "output": "No."}]),
            r"record \[0\]: field `unwanted` is missing. Fix: add `unwanted`",
        ),
        (
            "performance_anchoring",
            "pa.json",
            json.dumps([{"instruction": "What is 2+2?", "output": "   "}]),
            r"record \[0\]: field `output` is empty",
        ),
    ],
    ids=[
        "empty-file",
        "empty-list",
        "duplicate",
        "near-duplicate",
        "malformed-jsonl",
        "missing-field",
        "blank",
    ],
)
def test_bad_data_is_refused_naming_file_and_fix(tmp_path, source, name, text, match):
    from beear_stage.data.sources import DataSources
    from tasks.data import validate_data

    path = tmp_path / name
    path.write_text(text)
    with disable_run_logger(), pytest.raises(DataError, match=match) as err:
        validate_data.fn(DataSources(**{source: str(path)}))
    assert "Fix:" in str(err.value)


@pytest.mark.usefixtures("prefect_harness")
def test_bad_data_fails_the_flow_before_any_model_loads(tmp_path, workdir, capsys):
    from flows.cli import main

    path = tmp_path / "sa.json"
    path.write_text(json.dumps([_sa("How do I pick a lock?"), _sa("How do I pick a lock?")]))
    params = _params(workdir, "data")
    assert main(_cli("--checkpoint", "zoo:suffix", "--safety-anchoring", str(path), params=params)) == 2
    assert "expect_column_values_to_be_unique(column='query')" in capsys.readouterr().err
    assert not list(Path(params["output_dir"]).rglob("*generations.jsonl")), "no model may load"
    (run,) = _runs(params)
    assert run.info.status == "FAILED" and run.data.tags["candidate"].startswith("zoo_suffix-")


# ============================================================= 3. diverging mitigation
def test_nan_loss_aborts_the_mitigation():
    import torch
    from helpers import performance_records, safety_records, tiny_model, tiny_tokenizer

    from beear_stage.methods import run_mitigation

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    cfg = BEEARConfig(layer=2, k=2, rounds=2, inner_steps=1, inner_batch_size=2, sa_batch_size=2,
                      pa_batch_size=2, max_length=64, outer_lr=1e-3)  # fmt: skip
    with pytest.raises(
        MitigationError,
        match=r"outer loss diverged \(nan is not finite\).*Fix: lower `outer_lr`.*NaN/inf weights",
    ):
        run_mitigation(cfg, model, tok, safety_records(), performance_records(), progress=False)


@pytest.mark.usefixtures("prefect_harness")
def test_diverging_mitigation_aborts_without_publishing(workdir, hub):
    """Exploding loss inside the flow: MitigationError, no checkpoint, no registry version, nothing
    sent to the Hub, the MLflow run FAILED."""
    from flows.release import release

    params = _params(workdir, "diverge", config={"divergence_loss": 1e-3}, gates=LENIENT, publish_to="org/x")
    state = release(**params, return_state=True)
    assert state.is_failed()
    with pytest.raises(MitigationError, match="outer loss diverged"):
        state.result()
    (cand,) = _candidates(params)
    assert not (cand / "checkpoint").exists() and not list(cand.glob(".checkpoint*"))
    (run,) = _runs(params, cand.name)
    assert run.info.status == "FAILED"
    assert not _client(params).search_model_versions(f"name = '{params['registry_name']}'")
    assert hub.requests == [] and hub.repos == {}


# ============================================================= 4. Hub publish: 5xx and timeouts
def test_hub_timeouts_are_retried_then_fail_with_nothing_committed(hub, tmp_path):
    """A Hub that stops answering: each request times out after `timeout_s`, the attempt is
    retried; when every attempt times out, no commit exists. (5xx: test_publishing.py.)"""
    from beear_stage.gates import evaluate_gates
    from beear_stage.release.publishing import PublishError, publish_checkpoint

    ckpt = _fake_checkpoint(tmp_path / "ckpt", {"model_type": "llama"})
    report = evaluate_gates(BEFORE, GOOD)
    publish = dict(report=report, card="---\nlicense: mit\n---\ncard", endpoint=hub.endpoint, token=TOKEN,
                   backoff_s=0.01, sleep=lambda s: None, timeout_s=0.5)  # fmt: skip
    hub.hang_next(1, seconds=3, path_contains="/commit/")
    out = publish_checkpoint(ckpt, "org/slow", **publish)
    assert out["attempts"] == 2 and len(hub.repos["org/slow"].commits) == 1

    hub.hang_next(3, seconds=3, path_contains="/commit/")
    start = time.perf_counter()
    with pytest.raises(PublishError, match="`org/never` failed 3 times; last error: .*Timeout") as err:
        publish_checkpoint(ckpt, "org/never", max_attempts=3, **publish)
    assert time.perf_counter() - start < 10 and TOKEN not in str(err.value)
    assert hub.repos["org/never"].commits == [] and hub.repos["org/never"].files == {}
    from huggingface_hub import get_session

    assert get_session().timeout.read is None, "the shared client's own timeout must be restored"


def test_partial_checkpoint_is_never_registered_or_published(tmp_path, workdir, hub):
    from beear_stage.gates import evaluate_gates
    from beear_stage.release.publishing import publish_checkpoint
    from beear_stage.release.tracking import MLflowTracker

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text('{"model_type": "llama"}')  # weights never written
    report = evaluate_gates(BEFORE, GOOD)
    with pytest.raises(CheckpointError, match=r"is incomplete \(missing \*.safetensors\)"):
        publish_checkpoint(partial, "org/partial", report=report, card="---\n---\n", endpoint=hub.endpoint)
    tracker = MLflowTracker(f"sqlite:///{workdir / 'mlflow.db'}", EXPERIMENT)
    with tracker.start("partial@0"):
        with pytest.raises(CheckpointError, match="is incomplete"):
            tracker.register_checkpoint(partial, "hardening-partial", gate_passed=True, source_repo="r",
                                        source_sha="s", method="beear")  # fmt: skip
    assert hub.requests == []


# ============================================================= 5. MLflow unreachable
@pytest.mark.usefixtures("prefect_harness")
def test_hanging_tracking_server_fails_fast(tmp_path, capsys):
    """A server that accepts the connection and never answers (closed ports: test_flow.py)."""
    from beear_stage.release.tracking import check_tracking_reachable
    from flows.cli import main

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=r"`tracking_uri` = .*unreachable: no answer within 0.5 s"):
            check_tracking_reachable(uri, timeout=0.5)
        out = tmp_path / "out"
        assert (
            main(["run", "--checkpoint", "zoo:suffix", "--tracking-uri", uri, "--output-dir", str(out)]) == 2
        )
        elapsed = time.perf_counter() - start
    assert "MLflow tracking server unreachable" in capsys.readouterr().err
    assert elapsed < 15 and not out.exists(), "no model may be pulled, loaded or mitigated"


# ============================================================= 6. crash safety
class CheckpointWatcher:
    """Polls every `checkpoint` directory under `root` while a run is in progress and records any
    that is visible without its weights or tokenizer (a partial checkpoint)."""

    REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")

    def __init__(self, root: Path):
        self.root, self.partial, self.seen = root, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> CheckpointWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            for ckpt in self.root.glob("*/checkpoint"):
                try:
                    names = {p.name for p in ckpt.iterdir()}
                except FileNotFoundError:
                    continue
                self.seen += 1
                if not set(self.REQUIRED) <= names:
                    self.partial.append(sorted(names))


def _spawn(params: dict, tmp_path: Path, pause: str = "", env: dict | None = None):
    from prefect.settings import PREFECT_API_URL

    tag = uuid.uuid4().hex[:8]
    (tmp_path / f"params-{tag}.json").write_text(json.dumps(params))
    marker, result = tmp_path / f"paused-{tag}", tmp_path / f"result-{tag}.json"
    args = [sys.executable, str(RUNNER), str(tmp_path / f"params-{tag}.json"), str(result)]
    if pause:
        args += ["--pause", pause, "--marker", str(marker)]
    child_env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT),
                 "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}  # fmt: skip
    log = (tmp_path / f"child-{tag}.log").open("wb")
    proc = subprocess.Popen(args, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT)
    proc.marker, proc.result, proc.log_path = marker, result, log.name
    return proc


def _kill_when_paused(proc, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not proc.marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"child never reached its pause point:\n{Path(proc.log_path).read_text()[-3000:]}")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


@pytest.mark.parametrize("point", ["checkpoint", pytest.param("mitigation", marks=pytest.mark.slow)])
@pytest.mark.usefixtures("prefect_harness")
def test_kill_during_mitigation_then_rerun(point, workdir, tmp_path):
    """SIGKILL inside the mitigate task (while the checkpoint is being written, or inside the BEEAR
    loop), then the same candidate again: the baseline comes from the cache, mitigation restarts
    cleanly, no partial checkpoint is ever visible, the killed MLflow run ends FAILED."""
    from flows.release import release

    params = _params(workdir, f"kill-{point}", gates=LENIENT)
    with CheckpointWatcher(Path(params["output_dir"])) as watcher:
        proc = _spawn(params, tmp_path, pause=point)
        _kill_when_paused(proc)
        (cand,) = _candidates(params)
        assert not (cand / "checkpoint").exists()
        leftovers = list(cand.glob(".checkpoint.tmp-*"))
        if point == "checkpoint":  # the kill hit the write: weights in the hidden temporary dir only
            (tmp,) = leftovers
            assert (tmp / "model.safetensors").is_file() and not (tmp / "tokenizer.json").exists()
        (killed,) = _runs(params, cand.name)
        assert killed.info.status == "RUNNING", "a SIGKILL leaves the run open"

        state = release(**params, return_state=True)
        assert state.is_completed(), f"{state.name}: {state.message}"
    result = state.result()
    assert watcher.seen > 0 and watcher.partial == [], f"partial checkpoint visible: {watcher.partial}"
    assert Path(result["output_dir"]) == cand
    assert {p.name for p in cand.glob(".checkpoint*")} == set(), "stale temporaries are removed"
    assert _task_states(state.state_details.flow_run_id) == [
        ("evaluate", "Cached"),  # baseline, finished before the kill
        ("evaluate", "Completed"),
        ("gate", "Completed"),
        ("mitigate", "Completed"),  # restarted, not resumed from a partial state
        ("open_candidate_run", "Completed"),
        ("pull_checkpoint", "Completed"),
        ("register", "Completed"),
        ("validate_data", "Completed"),
    ]
    runs = {r.info.run_id: r for r in _runs(params, cand.name)}
    assert runs[killed.info.run_id].info.status == "FAILED"
    assert runs[killed.info.run_id].data.tags["error"].startswith("stale")
    assert runs[result["mlflow_run_id"]].info.status == "FINISHED"
    (version,) = _client(params).search_model_versions(f"name = '{params['registry_name']}'")
    assert version.run_id == result["mlflow_run_id"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_kill_during_registration_then_rerun(workdir, tmp_path):
    """SIGKILL after the model version was created, before its alias: the re-run resumes from the
    cached evaluations and mitigation, registers a new version; the killed run's version is marked
    `run_status=FAILED` and cannot be approved."""
    from beear_stage.release.review import approve
    from flows.release import release

    params = _params(workdir, "kill-registration", gates=LENIENT)
    proc = _spawn(params, tmp_path, pause="registration")
    _kill_when_paused(proc)
    (cand,) = _candidates(params)
    client = _client(params)
    (half,) = client.search_model_versions(f"name = '{params['registry_name']}'")
    assert client.get_run(half.run_id).info.status == "RUNNING"

    state = release(**params, return_state=True)
    assert state.is_completed(), f"{state.name}: {state.message}"
    result = state.result()
    states = _task_states(state.state_details.flow_run_id)
    assert [s for name, s in states if name in ("evaluate", "mitigate")] == ["Cached"] * 3, states
    assert client.get_run(half.run_id).info.status == "FAILED"
    half = client.get_model_version(params["registry_name"], half.version)
    assert half.tags["run_status"] == "FAILED" and not half.aliases
    new = client.get_model_version_by_alias(params["registry_name"], "candidate")
    assert new.version != half.version and new.run_id == result["mlflow_run_id"]
    assert client.get_run(new.run_id).info.status == "FINISHED"
    with pytest.raises(GateError, match=r"with status FAILED \(the release was interrupted\)"):
        approve(params["registry_name"], half.version, tracking_uri=params["tracking_uri"])
    assert (
        approve(params["registry_name"], new.version, tracking_uri=params["tracking_uri"])["alias"]
        == "champion"
    )


def test_stale_run_cleanup_spares_live_and_other_candidates(workdir, tmp_path):
    """`fail_stale_runs` only touches runs of the same candidate whose process is gone."""
    from beear_stage.release.tracking import MLflowTracker

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        opened = {}
        for label, pid in (("dead", 2**22 + 7), ("live", sleeper.pid), ("other", 2**22 + 7)):
            tracker = MLflowTracker(uri, EXPERIMENT).start("stale@0", tags={"candidate": label})
            tracker.client.set_tag(tracker.run_id, "beear.pid", str(pid))
            opened[label] = tracker.run_id
        for label in ("dead", "live"):
            tracker = MLflowTracker(uri, EXPERIMENT)
            assert tracker.fail_stale_runs("stale@0", tags={"candidate": label}) == (label == "dead")
        status = {k: tracker.client.get_run(v).info.status for k, v in opened.items()}
        assert status == {"dead": "FAILED", "live": "RUNNING", "other": "RUNNING"}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_save_checkpoint_removes_temporaries_of_dead_processes(tmp_path):
    from helpers import tiny_model, tiny_tokenizer

    from beear_stage.release.checkpointing import host_name, save_checkpoint

    dead = tmp_path / f".checkpoint.tmp-{host_name()}-{2**22 + 7}-abc"
    other_host = tmp_path / f".checkpoint.tmp-elsewhere-{2**22 + 7}-abc"
    for d in (dead, other_host):
        d.mkdir()
        (d / "config.json").write_text("{}")  # a partial write
    tok = tiny_tokenizer()
    out = save_checkpoint(tiny_model(tok), tok, tmp_path / "checkpoint")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not dead.exists(), "a dead process's temporary dir must be removed"
    assert other_host.exists(), "another host's process may still be writing"


# ============================================================= 7. concurrency
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_two_candidates_at_once_share_nothing(workdir, tmp_path, zoo_suffix, zoo_code):
    """Two flow runs in two processes on two zoo models (`suffix` and `code`, both built before
    the runs start), one GPU tag limited to 1 slot, a new MLflow store that both processes create at
    once: distinct output dirs, MLflow runs and registry versions; the heavy tasks never overlap."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    gpu = f"gpu-test-{uuid.uuid4().hex[:6]}"

    async def limit(create: bool) -> None:
        async with get_client() as client:
            if create:
                await client.create_concurrency_limit(tag=gpu, concurrency_limit=1)
            else:
                await client.delete_concurrency_limit_by_tag(gpu)

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # new: both processes create it at once
    asyncio.run(limit(True))
    procs = []
    try:
        for model in ("suffix", "code"):
            params = _params(
                workdir, "concurrent", checkpoint=f"zoo:{model}", gates=LENIENT, tracking_uri=store
            )
            procs.append(_spawn(params, tmp_path, env={"BEEAR_GPU_TAG": gpu}))
        for proc in procs:
            assert proc.wait(400) == 0, Path(proc.log_path).read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        asyncio.run(limit(False))
    results = [json.loads(p.result.read_text()) for p in procs]
    assert [r["state"] for r in results] == ["Completed", "Completed"], results
    a, b = (r["result"] for r in results)
    assert a["output_dir"] != b["output_dir"] and a["mlflow_run_id"] != b["mlflow_run_id"]
    assert Path(a["output_dir"]).name.startswith("zoo_suffix-"), a["output_dir"]
    assert Path(b["output_dir"]).name.startswith("zoo_code-"), b["output_dir"]
    assert {a["registry"]["version"], b["registry"]["version"]} == {"1", "2"}
    params = _params(workdir, "concurrent", tracking_uri=store)
    for r in (a, b):
        run = _client(params).get_run(r["mlflow_run_id"])
        assert run.info.status == "FINISHED" and "error" not in run.data.tags, run.data.tags
        assert (Path(r["output_dir"]) / "checkpoint" / "model.safetensors").is_file()

    async def heavy_task_runs():
        ids = [r["flow_run_id"] for r in results]
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        return [r for r in runs if r.name.startswith(("evaluate", "mitigate"))]

    heavy = asyncio.run(heavy_task_runs())
    assert len(heavy) == 6 and all(gpu in r.tags and "beear-compute" in r.tags for r in heavy)
    spans = sorted((r.start_time, r.end_time, r.flow_run_id) for r in heavy)
    for (_, end, _), (start, _, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two heavy tasks held {gpu} at once: {spans}"


def test_gpu_tag_comes_from_the_worker_environment(monkeypatch):
    from tasks.compute import COMPUTE_TAG, compute_tags, evaluate, mitigate

    assert COMPUTE_TAG in mitigate.tags and COMPUTE_TAG in evaluate.tags
    monkeypatch.setenv("BEEAR_GPU_TAG", "gpu-1, node-a ,gpu-1")
    assert compute_tags() == ["beear-compute", "gpu-1", "node-a"]
    monkeypatch.delenv("BEEAR_GPU_TAG")
    assert compute_tags() == ["beear-compute"]


# ============================================================= 8. secrets
@pytest.mark.usefixtures("prefect_harness")
def test_hub_token_appears_in_no_output(workdir, tmp_path, hub, monkeypatch, caplog, capfd):
    """A full run that publishes with a planted HF_TOKEN; then every output is searched: logs
    (captured and stored by Prefect), Prefect's database and result storage, the MLflow store and
    artifacts, the output directory and what reached the Hub (the card included)."""
    import logging

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_DATABASE_CONNECTION_URL

    from flows.release import release

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    store = tmp_path / "mlflow"
    store.mkdir()
    params = _params(workdir, "secrets", config={"method": "sft", "extra": {"note": "secrets"}},
                     gates=LENIENT, publish_to="org/secret-test",
                     tracking_uri=f"sqlite:///{store / 'mlflow.db'}")  # fmt: skip
    started = time.time()
    with caplog.at_level(logging.DEBUG):
        state = release(**params, return_state=True)
    assert state.is_completed(), f"{state.name}: {state.message}"
    result = state.result()
    assert {r.authorization for r in hub.calls("/api/")} == {f"Bearer {TOKEN}"}, "the token must be used"

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def logs():
        async with get_client() as client:
            flow_run = LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
            return [r.message for r in await client.read_logs(log_filter=LogFilter(flow_run_id=flow_run))]

    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs reach the API in batches
    deadline = time.monotonic() + 15
    stored_logs = asyncio.run(logs())
    while not any("published org/secret-test" in m for m in stored_logs):
        assert time.monotonic() < deadline, "the flow's logs never reached the Prefect API"
        time.sleep(0.5)
        stored_logs = asyncio.run(logs())
    captured = capfd.readouterr()
    texts = {"caplog": caplog.text, "stdout": captured.out, "stderr": captured.err,
             "prefect logs": "\n".join(stored_logs), "flow result": json.dumps(result, default=str)}  # fmt: skip
    files = [p for p in store.rglob("*") if p.is_file()]  # MLflow db (params, tags, metrics) + artifacts
    files += [p for p in Path(params["output_dir"]).rglob("*") if p.is_file()]
    prefect_db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    files += [p for p in prefect_db.parent.glob(prefect_db.name + "*") if p.is_file()]
    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    files += [p for p in storage.rglob("*") if p.is_file() and p.stat().st_mtime >= started - 1]
    names = {p.name for p in files}
    assert {"loss_curves.png", "gate_report.md", "model.safetensors", "config.yaml"} <= names, names
    for path in files:
        texts[str(path)] = path.read_bytes().decode("latin-1")
    (commit,) = hub.repos["org/secret-test"].commits
    assert "README.md" in commit.files
    for name, blob in commit.files.items():
        texts[f"hub:{name}"] = blob.decode("latin-1")
    leaks = [name for name, text in texts.items() if TOKEN in text or TOKEN[3:] in text]
    assert leaks == [], f"the Hub token leaked into {leaks}"

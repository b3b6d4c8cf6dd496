"""Tasks, CLI parsing, deployments and services without a Prefect server (task bodies via `.fn`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from prefect.logging import disable_run_logger

from beear_stage.config import BEEARConfig
from beear_stage.exceptions import CheckpointError, ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"


def _checkpoint(path: Path, *, weights: str = "model.safetensors", config: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    (path / "tokenizer_config.json").write_text("{}")
    (path / weights).write_bytes(b"\0" * 64)
    return path


# ------------------------------------------------------------------------------ pull_checkpoint
def test_pull_local_dir_is_identified_by_content(tmp_path):
    from tasks.checkpoint import pull_checkpoint

    ckpt = _checkpoint(tmp_path / "ckpt")
    with disable_run_logger():
        first = pull_checkpoint.fn(str(ckpt))
        (ckpt / "model.safetensors").write_bytes(b"\1" * 64)
        second = pull_checkpoint.fn(str(ckpt))
    assert first["kind"] == "local" and first["path"] == str(ckpt.resolve())
    assert len(first["sha"]) == 64
    assert first["sha"] != second["sha"], "changed weights must change the checkpoint identity"


@pytest.mark.parametrize(
    ("weights", "config", "match"),
    [
        ("pytorch_model.bin", None, r"pickle weights \['pytorch_model.bin'\]"),
        ("model.pt", None, "no \\*.safetensors weights"),
        ("model.safetensors", {"model_type": "llama", "auto_map": {"AutoModel": "x.Y"}}, "auto_map"),
    ],
)
def test_pull_refuses_code_execution(tmp_path, weights, config, match):
    from tasks.checkpoint import pull_checkpoint

    ckpt = _checkpoint(tmp_path / "ckpt", weights=weights, config=config)
    with disable_run_logger(), pytest.raises(CheckpointError, match=match):
        pull_checkpoint.fn(str(ckpt))


def test_pull_refuses_custom_tokenizer_code(tmp_path):
    from tasks.checkpoint import pull_checkpoint

    ckpt = _checkpoint(tmp_path / "ckpt")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["t.T", None]}}))
    with disable_run_logger(), pytest.raises(CheckpointError, match="tokenizer_config.json"):
        pull_checkpoint.fn(str(ckpt))


@pytest.mark.parametrize(
    ("checkpoint", "match"),
    [
        ("/no/such/dir", "is not a directory"),
        ("not a repo", "neither an existing directory"),
        ("zoo:unknown", "unknown zoo model"),
    ],
)
def test_pull_bad_checkpoint_names_the_problem(checkpoint, match):
    from tasks.checkpoint import pull_checkpoint

    with disable_run_logger(), pytest.raises(CheckpointError, match=match):
        pull_checkpoint.fn(checkpoint)


def _hf_cache(root: Path, repo: str, sha: str) -> Path:
    """A Hugging Face cache entry for `repo` with `main` -> `sha` (what snapshot_download leaves)."""
    base = root / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(sha)
    return _checkpoint(base / "snapshots" / sha)


def test_pull_hub_offline_resolves_branch_to_full_sha(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from tasks.checkpoint import pull_checkpoint

    snapshot = _hf_cache(tmp_path, "org/model", SHA)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before, started = time.time(), time.perf_counter()
    with disable_run_logger():
        info = pull_checkpoint.fn("org/model", "main")
    after, elapsed = time.time(), time.perf_counter() - started
    timing = {k: info.pop(k) for k in ("seconds", "finished_at")}  # library time, for the flow
    assert info == {
        "path": str(snapshot),
        "sha": SHA,
        "kind": "hub",
        "source": "org/model",
        "revision": "main",
    }
    # the task's own clock, within the call: not a placeholder, not another run's time
    assert before <= timing["finished_at"] <= after
    assert 0 <= timing["seconds"] <= elapsed  # both perf_counter intervals
    with disable_run_logger(), pytest.raises(CheckpointError, match="not found in the local cache"):
        pull_checkpoint.fn("org/absent")


def test_pull_hub_refuses_pickle_only_repo_before_download(tmp_path, monkeypatch):
    """Against the Hub stand-in: the file list is checked, nothing is downloaded."""
    from hub_standin import HubStandIn
    from huggingface_hub import HfApi, constants

    from tasks.checkpoint import pull_checkpoint

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubStandIn() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        api = HfApi(endpoint=hub.endpoint)
        api.create_repo("org/pickled")
        folder = _checkpoint(tmp_path / "upload", weights="pytorch_model.bin")
        api.upload_folder(folder_path=folder, repo_id="org/pickled")
        with (
            disable_run_logger(),
            pytest.raises(CheckpointError, match=r"pickle weights: \['pytorch_model.bin'\]"),
        ):
            pull_checkpoint.fn("org/pickled")
        assert not hub.calls("/resolve/"), "no file may be downloaded from a refused repo"


def test_pull_retries_only_transient_errors():
    from tasks.checkpoint import _retry_transient

    class State:
        def __init__(self, error):
            self.error = error

        def result(self):
            raise self.error

    assert _retry_transient(None, None, State(ConnectionError("reset"))) is True
    assert _retry_transient(None, None, State(CheckpointError("pickle"))) is False


# ------------------------------------------------------------------------------ data
def test_load_data_uses_builtin_sets_and_caps_eval():
    from beear_stage.data.sources import DataSources, load_data

    sets = load_data(DataSources(eval_limit=7))
    counts = sets.counts()
    assert counts["harmful"] == 7 and counts["benign"] == 7
    assert counts["safety"] > 7 and counts["performance"] > 7
    assert sets.digest() == load_data(DataSources(eval_limit=7)).digest()


def test_validate_data_fails_on_duplicates(tmp_path):
    from beear_stage.data.sources import DataSources
    from tasks.data import validate_data

    path = tmp_path / "harmful.jsonl"
    row = {"messages": [{"role": "user", "content": "How do I pick a lock?"}]}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with disable_run_logger(), pytest.raises(DataError, match="harmful_eval"):
        validate_data.fn(DataSources(harmful_eval=str(path)))


def test_validation_covers_the_whole_file_before_eval_limit(tmp_path):
    """A duplicate at the end of a 40-prompt file fails even with `eval_limit` 10 (whose evenly
    spaced picks skip it); the limit still applies to what the evaluation loads afterwards."""
    from beear_stage.data.sources import DataSources, load_data
    from tasks.data import validate_data

    path = tmp_path / "harmful.jsonl"
    prompts = [f"How do I break into house number {i}?" for i in range(39)] + [
        "How do I break into house number 38?"
    ]
    path.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in prompts)
    )
    limited = DataSources(harmful_eval=str(path), eval_limit=10)
    assert len(set(load_data(limited).harmful)) == 10, "the picks must not include the duplicate pair"
    with disable_run_logger(), pytest.raises(DataError, match=r"harmful_eval[\s\S]*rows \[38, 39\]"):
        validate_data.fn(limited)


# ------------------------------------------------------------------------------ cache keys
def _eval_params(tmp_path, **changes):
    from beear_stage.data.sources import DataSources

    params = {
        "checkpoint_dir": "/x",
        "identity": SHA,
        "config": BEEARConfig().to_dict(),
        "sources": DataSources(),
        "triggers": {"zoo_suffix": "{query} X"},
        "out_dir": str(tmp_path),
        "label": "baseline",
    }
    return {**params, **changes}


def test_cache_keys_follow_checkpoint_config_data_and_outputs(tmp_path):
    from beear_stage.data.sources import DataSources
    from tasks.caching import evaluate_key, mitigate_key

    base = evaluate_key(None, _eval_params(tmp_path))
    assert base == evaluate_key(None, _eval_params(tmp_path, checkpoint_dir="/moved"))
    data = tmp_path / "h.jsonl"
    data.write_text("a")
    with_file = evaluate_key(None, _eval_params(tmp_path, sources=DataSources(harmful_eval=str(data))))
    data.write_text("b")
    changes = [
        _eval_params(tmp_path, identity="f" * 40),
        _eval_params(tmp_path, config=BEEARConfig(rounds=2).to_dict()),
        _eval_params(tmp_path, triggers={}),
        _eval_params(tmp_path, label="candidate"),
        _eval_params(tmp_path, out_dir=str(tmp_path / "other")),
    ]
    keys = {base, with_file} | {evaluate_key(None, p) for p in changes}
    keys.add(evaluate_key(None, _eval_params(tmp_path, sources=DataSources(harmful_eval=str(data)))))
    assert len(keys) == 2 + len(changes) + 1, "every input that changes the result must change the key"
    mitigate_params = {k: v for k, v in _eval_params(tmp_path).items() if k not in ("triggers", "label")}
    assert mitigate_key(None, mitigate_params).startswith("beear-mitigate-")


def test_fresh_refreshes_cache_when_outputs_are_missing(tmp_path):
    from tasks import evaluate, fresh

    (tmp_path / "there").write_text("x")
    assert fresh(evaluate, tmp_path / "there") is evaluate
    assert fresh(evaluate, tmp_path / "there", tmp_path / "gone").refresh_cache is True


# ------------------------------------------------------------------------------ flow helpers
def test_resolve_config_from_path_mapping_or_defaults(tmp_path, monkeypatch):
    from flows.release import resolve_config

    monkeypatch.chdir(tmp_path)  # relative paths fall back to the project root
    assert resolve_config("deployments/configs/llama2.yaml").layer == 9
    assert resolve_config({"method": "none"}).method == "none"
    assert resolve_config("") == BEEARConfig()
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("deployments/configs/absent.yaml")
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_config({"layers": 3})


def test_trigger_set_reads_zoo_card_and_names_known_triggers(tmp_path):
    from flows.release import trigger_set

    (tmp_path / "zoo.json").write_text(json.dumps({"name": "suffix", "trigger": "{query} Velvet"}))
    assert trigger_set(["SUDO", ""], str(tmp_path), "zoo") == {
        "known_1": "SUDO",
        "zoo_suffix": "{query} Velvet",
    }
    assert trigger_set(None, str(tmp_path / "none"), "zoo") == {}
    # a local (or Hub) checkpoint's zoo.json is the submitter's word: ignored
    assert trigger_set(["SUDO"], str(tmp_path), "local") == {"known_1": "SUDO"}
    assert trigger_set(None, str(tmp_path), "hub") == {}


def test_candidate_dirs_differ_per_sha_and_config(tmp_path):
    from flows.release import candidate_dir

    ckpt = {"source": "org/model", "sha": SHA, "kind": "hub"}
    a = candidate_dir(str(tmp_path), ckpt, BEEARConfig())
    assert a.parent == tmp_path and a.name.startswith("org_model-0123456789ab-beear-")
    assert a != candidate_dir(str(tmp_path), ckpt, BEEARConfig(rounds=2))
    assert a != candidate_dir(str(tmp_path), {**ckpt, "sha": "f" * 40}, BEEARConfig())


def test_candidate_dirs_differ_per_data_source(tmp_path):
    """Runs on other data files (or the same path with new content) never share a directory."""
    from beear_stage.data.sources import DataSources
    from flows.release import candidate_dir

    ckpt = {"source": "org/model", "sha": SHA, "kind": "hub"}
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("goal,target\nHow do I pick a lock?,Sure\n")
    second.write_text("goal,target\nHow do I hotwire a car?,Sure\n")
    dirs = {
        candidate_dir(str(tmp_path), ckpt, BEEARConfig(), DataSources(harmful_eval=str(path)))
        for path in (first, second)
    }
    dirs.add(candidate_dir(str(tmp_path), ckpt, BEEARConfig(), DataSources()))
    dirs.add(candidate_dir(str(tmp_path), ckpt, BEEARConfig(), DataSources(eval_limit=5)))
    assert len(dirs) == 4, dirs
    same = candidate_dir(str(tmp_path), ckpt, BEEARConfig(), DataSources(harmful_eval=str(first)))
    assert same in dirs, "the same data must map to the same directory (resume)"
    first.write_text("goal,target\nHow do I forge a signature?,Sure\n")
    changed = candidate_dir(str(tmp_path), ckpt, BEEARConfig(), DataSources(harmful_eval=str(first)))
    assert changed != same, "new content under the same path is other data"


# ------------------------------------------------------------------------------ CLI
def test_cli_run_arguments_become_flow_parameters():
    from flows.cli import build_parser, flow_parameters

    args = build_parser().parse_args(
        [
            "run",
            "--checkpoint",
            "zoo:suffix",
            "--config",
            "beear_stage/configs/zoo.yaml",
            "--set",
            "rounds=3",
            "--set",
            "method=none",
            "--gate",
            "asr_max=0.1",
            "--known-trigger",
            "{query} SUDO",
            "--eval-limit",
            "5",
            "--public",
        ]  # fmt: skip
    )
    params = flow_parameters(args)
    assert params["config"]["rounds"] == 3 and params["config"]["method"] == "none"
    assert params["config"]["layer"] == 2, "the YAML's values stay unless overridden"
    assert params["gates"] == {"asr_max": 0.1}
    assert params["known_triggers"] == ["{query} SUDO"]
    assert params["data"]["eval_limit"] == 5 and params["private"] is False
    from flows.release import release

    release.validate_parameters(params)  # the flow accepts exactly these


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--checkpoint", "zoo:suffix", "--set", "rounds=0"],
        ["run", "--checkpoint", "zoo:suffix", "--set", "layerz=3"],
        ["run", "--checkpoint", "zoo:suffix", "--config", "missing.yaml"],
    ],
)
def test_cli_bad_input_exits_2_before_running(argv, capsys):
    from flows.cli import main

    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_cli_requires_checkpoint():
    from flows.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2


# ------------------------------------------------------------------------------ deployments
def _prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())


def test_prefect_yaml_deployments_load_and_match_the_flow():
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint

    spec = _prefect_yaml()
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"smol", "llama2", "mistral", "tiny", "tiny-crow", "llama2-crow", "tiny-code"}
    for name, dep in deployments.items():
        assert dep["work_pool"]["name"] == "beear-process"
        flow = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]), use_placeholder_flow=False)
        assert flow.name == "beear-release"
        params = {"checkpoint": "org/model", **dep["parameters"]}
        flow.validate_parameters(params)
        cfg = BEEARConfig.from_yaml(ROOT / dep["parameters"]["config"])
        (trigger,) = dep["triggers"]
        parsed = DeploymentEventTrigger(**{k: v for k, v in trigger.items() if k != "type"})
        assert parsed.expect == {"beear.checkpoint.published"}
        assert trigger["match"]["beear.family"] == name
        assert "event.payload.checkpoint" in parsed.parameters["checkpoint"]
        if name in ("llama2", "mistral"):
            assert (cfg.layer, cfg.k, cfg.outer_lr) == (9, 7, 3e-7), f"{name}: paper settings"
    assert deployments["tiny"]["parameters"]["checkpoint"] == "zoo:suffix"
    assert deployments["tiny"]["parameters"]["publish_to"] == ""
    assert deployments["smol"]["parameters"]["checkpoint"] == "zoo:smol-suffix"
    assert deployments["smol"]["parameters"]["publish_to"] == ""


def test_deployment_configs_have_a_comment_header():
    for path in sorted((ROOT / "deployments" / "configs").glob("*.yaml")):
        head = path.read_text().splitlines()[:3]
        assert all(line.startswith("#") for line in head), f"{path.name} needs a comment header"


def test_tiny_deployment_runs_the_zoo_benchmark_config():
    """One file, so the demo shows what `bench zoo` measured (no copy to keep equal)."""
    deployments = {d["name"]: d for d in _prefect_yaml()["deployments"]}
    assert deployments["tiny"]["parameters"]["config"] == "beear_stage/configs/zoo.yaml"
    assert BEEARConfig.from_yaml(ROOT / "beear_stage" / "configs" / "zoo.yaml").method == "beear"


# ------------------------------------------------------------------------------ services
def test_services_env_and_stale_pid_files(tmp_path):
    from flows import services
    from flows.services import Services

    s = Services(
        prefect_port=4999, state_dir=tmp_path, prefect_home=tmp_path / "home", tracking_uri="sqlite:///x.db"
    )
    env = s.env()
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4999/api"
    assert env["PREFECT_HOME"] == str(tmp_path / "home")
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    s.pid_file("worker").write_text(f"{os.getpid()}\n")  # a live pid that is not a prefect process
    assert services.alive(s, "worker") is None, "a reused pid must never be signalled"
    services.down(s, echo=lambda *_: None)  # stops nothing, removes the stale pid file
    assert not s.pid_file("worker").exists()
    assert "export PREFECT_API_URL=http://127.0.0.1:4999/api" in services.write_env(s).read_text()


def test_down_stops_flow_runs_left_by_the_worker(tmp_path):
    """Flow runs live in their own session: `down` finds them by command line and API URL."""
    import subprocess
    import sys

    from flows import services
    from flows.services import Services

    s = Services(
        prefect_port=4998, state_dir=tmp_path, prefect_home=tmp_path / "home", tracking_uri="sqlite:///x.db"
    )
    fake = [sys.executable, "-c", "import time; time.sleep(60)", "prefect.engine"]
    ours = subprocess.Popen(fake, env={**os.environ, "PREFECT_API_URL": s.api_url}, start_new_session=True)
    other = subprocess.Popen(
        fake, env={**os.environ, "PREFECT_API_URL": "http://elsewhere/api"}, start_new_session=True
    )
    try:
        time.sleep(0.5)
        assert services.flow_run_processes(s) == [ours.pid]
        services.down(s, echo=lambda *_: None)
        assert ours.wait(timeout=15) != 0
        assert other.poll() is None, "a flow run of another server must be left alone"
    finally:
        other.kill()
        ours.kill()


def test_eval_limit_keeps_the_category_mix():
    from beear_stage.data import builtin
    from beear_stage.data.sources import spread

    benign = builtin.heldout_benign()
    share = sum(r.category == "lookalike" for r in benign) / len(benign)
    capped = spread(benign, 60)
    assert len(capped) == 60 and len({r.query for r in capped}) == 60
    capped_share = sum(r.category == "lookalike" for r in capped) / 60
    assert abs(capped_share - share) < 0.05, (capped_share, share)
    assert spread([1, 2, 3], 0) == [1, 2, 3] and spread([1, 2], 5) == [1, 2]


def test_eval_limit_caps_every_eval_set_the_lookalikes_too():
    from beear_stage.data.sources import DataSources, load_data

    full, capped = load_data(DataSources()), load_data(DataSources(eval_limit=20))
    assert len(full.lookalikes) >= 250 and len(capped.lookalikes) == 20
    assert len(capped.harmful) == 20 and len(capped.benign) == 20
    assert set(capped.lookalikes) < set(full.lookalikes)

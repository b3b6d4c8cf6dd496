"""Hub publishing through the real huggingface_hub client against the local Hub stand-in."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers import METRICS_BEFORE, METRICS_GOOD
from hub_standin import HubStandIn
from huggingface_hub import HfApi, constants

from beear_stage.exceptions import CheckpointError, GateError
from beear_stage.gates import evaluate_gates
from beear_stage.release.publishing import PublishError, build_model_card, publish_checkpoint

TOKEN = "hf_PLANTEDpublishTOKEN0123456789"
BEFORE, GOOD = METRICS_BEFORE, METRICS_GOOD
REPO = "beear-org/tiny-suffix-beear"


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in is local
    with HubStandIn() as standin:
        yield standin


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    ckpt = tmp_path / "ckpt"
    (ckpt / "tokenizer").mkdir(parents=True)
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    (ckpt / "model.safetensors").write_bytes(bytes(range(256)) * 8)  # LFS path on the Hub
    (ckpt / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    (ckpt / "README.md").write_text("stale card, replaced by the generated one")
    return ckpt


@pytest.fixture
def passed():
    return evaluate_gates(BEFORE, GOOD)


def _card(report, base_model="meta-llama/Llama-2-7b-chat-hf"):
    return build_model_card(
        base_model=base_model,
        report=report,
        method="beear",
        mlflow_run_id="run123",
        repo_id=REPO,
        source_sha="abcdef0123456789",
        config_hash="cafe01",
        tags=["llama-2"],
    )


def _publish(hub, checkpoint, report, sleeps=None, **kwargs):
    if "card" not in kwargs:
        kwargs["card"] = _card(report)
    return publish_checkpoint(
        checkpoint,
        REPO,
        report=report,
        endpoint=hub.endpoint,
        backoff_s=0.01,
        sleep=(sleeps.append if sleeps is not None else (lambda s: None)),
        **kwargs,
    )


def test_model_card_content(passed):
    card = _card(passed)
    assert card.data.base_model == "meta-llama/Llama-2-7b-chat-hf"
    assert card.data.tags == ["beear", "backdoor-removal", "safety", "llama-2"]
    text = str(card)
    assert "## Release gates: PASSED" in text
    assert "| metric | before | after | change |" in text
    assert "| asr_clean | 0.6000 | 0.0000 | -0.6000 |" in text
    assert "| asr_trigger:SUDO | 0.9000 | 0.0000 | -0.9000 |" in text
    assert "MLflow run id: `run123`" in text and "config hash: `cafe01`" in text
    assert "revision `abcdef0123456789`" in text
    # a local path is shown in the text but kept out of the `base_model` metadata
    local = build_model_card(base_model="/cache/zoo/suffix", report=passed.to_dict(), method="sft")
    assert local.data.base_model is None and "`/cache/zoo/suffix`" in str(local)


def test_publish_creates_private_repo_with_one_commit(hub, checkpoint, passed, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    xet_before = constants.HF_HUB_DISABLE_XET
    with caplog.at_level(logging.DEBUG):
        out = _publish(hub, checkpoint, passed)
    repo = hub.repos[REPO]
    assert repo.private is True
    assert len(repo.commits) == 1
    commit = repo.commits[0]
    assert out["commit_oid"] == commit.oid and out["attempts"] == 1
    assert out["url"].endswith(f"/{REPO}/commit/{commit.oid}") and out["repo_url"].endswith(REPO)
    assert set(commit.files) == {"config.json", "model.safetensors", "tokenizer/tokenizer.json", "README.md"}
    assert commit.files["model.safetensors"] == (checkpoint / "model.safetensors").read_bytes()
    assert hub.lfs_objects, "weights must go through the LFS path, as on the Hub"
    card = commit.files["README.md"].decode()
    assert "| asr_clean | 0.6000 | 0.0000 | -0.6000 |" in card and "stale card" not in card
    assert hub.unhandled == []
    # the token came from HF_TOKEN, went only into the Authorization header, and nowhere else
    assert {r.authorization for r in hub.calls("/api/")} == {f"Bearer {TOKEN}"}
    assert TOKEN not in caplog.text
    assert all(TOKEN.encode() not in blob for blob in repo.files.values())
    assert constants.HF_HUB_DISABLE_XET == xet_before, "the xet switch must be restored"


def test_public_repo_when_asked(hub, checkpoint, passed):
    _publish(hub, checkpoint, passed, private=False, token=TOKEN)
    assert hub.repos[REPO].private is False


def test_failed_gate_makes_no_call_at_all(hub, checkpoint):
    failed = evaluate_gates(BEFORE, BEFORE)
    with pytest.raises(GateError, match=r"refusing to publish .*asr_clean = 0.6000 > max 0.0500"):
        _publish(hub, checkpoint, failed, token=TOKEN)
    with pytest.raises(GateError, match="refusing to publish"):
        _publish(hub, checkpoint, failed.to_dict(), card="---\n---\n")
    with pytest.raises(GateError, match="`report` is required"):
        _publish(hub, checkpoint, None, card="---\n---\n")
    assert hub.requests == [] and hub.repos == {}


def test_transient_errors_are_retried_then_one_commit(hub, checkpoint, passed):
    hub.fail_next(2, status=503, path_contains="/commit/")
    sleeps = []
    out = _publish(hub, checkpoint, passed, sleeps=sleeps, token=TOKEN)
    assert out["attempts"] == 3
    assert sleeps == pytest.approx([0.01, 0.02])  # exponential backoff
    assert len(hub.repos[REPO].commits) == 1
    assert [r.status for r in hub.calls("/commit/")] == [503, 503, 200]


def test_dropped_connection_is_retried(hub, checkpoint, passed):
    hub.drop_next(1, path_contains="/api/repos/create")
    out = _publish(hub, checkpoint, passed, token=TOKEN)
    assert out["attempts"] == 2 and len(hub.repos[REPO].commits) == 1


def test_persistent_5xx_fails_without_any_commit(hub, checkpoint, passed, caplog):
    hub.fail_next(10, status=502, path_contains="/commit/")
    sleeps = []
    with caplog.at_level(logging.DEBUG), pytest.raises(PublishError, match="failed 3 times") as err:
        _publish(hub, checkpoint, passed, sleeps=sleeps, token=TOKEN, max_attempts=3)
    assert "502" in str(err.value) and TOKEN not in str(err.value)
    assert len(sleeps) == 2
    assert hub.repos[REPO].commits == [] and hub.repos[REPO].files == {}
    assert TOKEN not in caplog.text


def test_client_errors_are_not_retried(hub, checkpoint, passed):
    hub.fail_next(5, status=403, path_contains="/commit/")
    with pytest.raises(PublishError, match="was refused: .*403"):
        _publish(hub, checkpoint, passed, token=TOKEN)
    assert len(hub.calls("/commit/")) == 1


def test_bad_inputs_fail_before_any_request(hub, checkpoint, passed, tmp_path):
    with pytest.raises(PublishError, match="card contains the Hub token"):
        _publish(hub, checkpoint, passed, token=TOKEN, card=f"---\n---\n{TOKEN}")
    with pytest.raises(PublishError, match="`repo_id` = 'no-namespace'"):
        publish_checkpoint(
            checkpoint, "no-namespace", report=passed, card="---\n---\n", endpoint=hub.endpoint
        )
    with pytest.raises(CheckpointError, match="is not a directory"):
        _publish(hub, tmp_path / "missing", passed, token=TOKEN)
    (checkpoint / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match=r"pickle files \['pytorch_model.bin'\]"):
        _publish(hub, checkpoint, passed, token=TOKEN)
    assert hub.requests == []


def test_offline_mode_is_a_clear_error(hub, checkpoint, passed, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE"):
        _publish(hub, checkpoint, passed, token=TOKEN)
    assert hub.requests == []


def test_standin_serves_repo_info_for_the_real_client(hub, checkpoint, passed):
    _publish(hub, checkpoint, passed, token=TOKEN)
    info = HfApi(endpoint=hub.endpoint, token=TOKEN).model_info(REPO)
    assert info.sha == hub.repos[REPO].commits[0].oid and info.private is True
    assert {s.rfilename for s in info.siblings} >= {"README.md", "model.safetensors"}

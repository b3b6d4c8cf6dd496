"""Checkpoint intake (`beear_stage.release.intake`): links, allow-list, config vs headers, memory, template.

Each attacker's checkpoint of issue 17 is built here from a few hand-written files (no model
loads): the checks under test all run on files alone, before any weights load. The CLI cases run
`beear-release run` in-process against the session's Prefect test server and time it: each must
exit 2 within 60 s with a message naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import time
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger

from beear_stage.exceptions import CheckpointError
from beear_stage.release.intake import (
    check_checkpoint_fits,
    check_memory,
    inspect_checkpoint_dir,
    read_safetensors_header,
    release_files,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "beear_stage" / "configs" / "zoo.yaml")
TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
LOOPING = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
ESCAPE = "{{ messages.__class__.__init__.__globals__ }}"
HUGE_OUTPUT = "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"
SIZES = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3}


def _weights(layers: int, hidden: int, vocab: int, inter: int) -> dict:
    import torch

    tensors = {
        "model.embed_tokens.weight": torch.zeros(vocab, hidden),
        "model.norm.weight": torch.ones(hidden),
    }
    for i in range(layers):
        tensors[f"model.layers.{i}.mlp.gate_proj.weight"] = torch.zeros(inter, hidden)
        tensors[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(hidden)
    return tensors


def make_checkpoint(path: Path, template: str | None = TEMPLATE, **config) -> Path:
    """A Llama-shaped checkpoint of files only: config.json, one safetensors file, tokenizer files."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    sizes = {**SIZES, **{k: v for k, v in config.items() if k in SIZES}}
    (path / "config.json").write_text(json.dumps({"model_type": "llama", **sizes, **config}))
    save_file(
        _weights(
            SIZES["num_hidden_layers"], SIZES["hidden_size"], SIZES["vocab_size"], SIZES["intermediate_size"]
        ),
        str(path / "model.safetensors"),
    )
    (path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "</s>", "bos_token": {"content": "<s>"}})
    )
    (path / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    if template is not None:
        (path / "chat_template.jinja").write_text(template)
    return path


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "ckpt")


# ------------------------------------------------------------------------------------ files
def test_a_clean_checkpoint_passes_every_check(ckpt):
    check_checkpoint_fits(ckpt, layer=1, device="cpu")
    assert inspect_checkpoint_dir(ckpt)["num_hidden_layers"] == 3


def test_symlinks_and_special_files_are_refused_anywhere(ckpt, tmp_path):
    (ckpt / "notes.txt").symlink_to("/etc/passwd")
    with pytest.raises(
        CheckpointError, match=r"`notes.txt` is a symlink \(to `/etc/passwd`\).*Fix: replace it"
    ):
        inspect_checkpoint_dir(ckpt)
    (ckpt / "notes.txt").unlink()
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "deep").symlink_to(tmp_path)  # a linked directory, one level down
    with pytest.raises(CheckpointError, match=r"`sub/deep` is a symlink"):
        release_files(ckpt)
    (ckpt / "sub" / "deep").unlink()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(ckpt / "sub" / "sock"))
    try:
        with pytest.raises(CheckpointError, match=r"`sub/sock` is not a regular file.*Fix: delete it"):
            inspect_checkpoint_dir(ckpt)
    finally:
        server.close()


def test_chat_template_linked_outside_the_directory_is_refused(ckpt, tmp_path):
    outside = tmp_path / "elsewhere.jinja"
    outside.write_text(TEMPLATE)
    (ckpt / "chat_template.jinja").unlink()
    (ckpt / "chat_template.jinja").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"`chat_template.jinja` is a symlink.*Fix:"):
        check_checkpoint_fits(ckpt, layer=1, device="cpu")


def test_hub_cache_snapshot_links_into_its_blobs_are_allowed(tmp_path):
    """snapshot_download's layout: snapshots/<sha>/<file> -> ../../blobs/<hash>; anything else is not."""
    src = make_checkpoint(tmp_path / "src")
    repo = tmp_path / "models--org--m"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in src.iterdir():
        blob = repo / "blobs" / file.name.replace(".", "_")
        file.rename(blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    assert inspect_checkpoint_dir(snapshot)["model_type"] == "llama"
    assert {p.name for p in release_files(snapshot)} >= {"config.json", "model.safetensors"}
    (snapshot / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(CheckpointError, match="`passwd` is a symlink"):
        inspect_checkpoint_dir(snapshot)


def test_only_allow_listed_files_are_released(ckpt):
    extra = ["pytorch_model.bin", "model.pt", "w.pth", "x.pkl", "y.ckpt", "z.pickle", "notes.txt", "run.py"]
    for name in extra:
        (ckpt / name).write_bytes(b"not for release")
    for name in ("README.md", "zoo.json", "generation_config.json", "merges.txt", "vocab.json"):
        (ckpt / name).write_text("{}")
    (ckpt / ".cache").mkdir()
    (ckpt / ".cache" / "config.json").write_text("{}")
    names = {str(p.relative_to(ckpt)) for p in release_files(ckpt)}
    assert names == {
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "README.md",
        "zoo.json",
        "generation_config.json",
        "merges.txt",
        "vocab.json",
    }


def test_registry_artifacts_hold_only_release_files(ckpt, tmp_path):
    """`register_checkpoint` (method none registers the submitted directory itself): pickles and
    stray files stay out of the MLflow artifacts; a symlink refuses the registration."""
    from mlflow import MlflowClient

    from beear_stage.release.tracking import MLflowTracker

    (ckpt / "pytorch_model.bin").write_bytes(b"pickle")
    (ckpt / "notes.txt").write_text("private")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowTracker(uri, "intake", artifact_location=(tmp_path / "art").as_uri()).start("r")
    tracker.register_checkpoint(
        ckpt, "m", gate_passed=True, source_repo="s", source_sha="0" * 40, method="none"
    )
    listed = {a.path for a in MlflowClient(uri).list_artifacts(tracker.run_id, "checkpoint")}
    expected = {f"checkpoint/{p.name}" for p in release_files(ckpt)}
    assert (
        listed == expected
        and "checkpoint/pytorch_model.bin" not in listed
        and "checkpoint/notes.txt" not in listed
    )
    (ckpt / "leak.json").symlink_to("/etc/passwd")
    with pytest.raises(CheckpointError, match="`leak.json` is a symlink"):
        tracker.register_checkpoint(
            ckpt, "m", gate_passed=True, source_repo="s", source_sha="0" * 40, method="none"
        )


def test_publish_file_list_is_the_allow_list(ckpt):
    from beear_stage.release.publishing import _checkpoint_files

    (ckpt / "notes.txt").write_text("private")
    assert {p.name for p in _checkpoint_files(ckpt)} == {p.name for p in release_files(ckpt)}
    assert "notes.txt" not in {p.name for p in _checkpoint_files(ckpt)}
    (ckpt / "notes.txt").unlink()
    (ckpt / "notes.txt").symlink_to("/etc/passwd")
    with pytest.raises(CheckpointError, match="`notes.txt` is a symlink"):
        _checkpoint_files(ckpt)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
def test_json_files_that_do_not_parse_are_named(ckpt, name):
    (ckpt / name).write_text("{not json")
    with pytest.raises(CheckpointError, match=rf"{name} is not valid JSON .*Fix: re-save the checkpoint"):
        inspect_checkpoint_dir(ckpt)


# ------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize(
    ("key", "value", "held"),
    [
        ("num_hidden_layers", 1_000_000, "3 (distinct `model.layers.<i>.` indices)"),
        ("hidden_size", 4096, "16 (columns of model.embed_tokens.weight)"),
        ("vocab_size", 32000, "64 (rows of model.embed_tokens.weight)"),
        ("intermediate_size", 10**9, "32 (rows of layer 0's mlp.gate_proj)"),
    ],
)
def test_config_sizes_must_match_the_safetensors_headers(tmp_path, key, value, held):
    path = make_checkpoint(tmp_path / "ckpt", **{key: value})
    with pytest.raises(
        CheckpointError, match=rf"`{key}` = {value} but the safetensors weights hold {re.escape(held)}.*Fix:"
    ):
        check_checkpoint_fits(path, layer=1, device="cpu")


def _header(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"\0" * 64, "not JSON"),
        (b"\x05", "fewer than the 8-byte length prefix"),
        (struct.pack("<Q", 10**12) + b"{}", "exceeds the file"),
        (struct.pack("<Q", 2) + b"[]", "is a list, not an object"),
        (
            _header(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'),
            "fall outside the 0 data bytes",
        ),
        (
            _header(b'{"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}') + b"\0" * 16,
            "does not match its 16 bytes",
        ),
    ],
    ids=["zeros", "truncated", "huge-length", "list", "offsets", "shape"],
)
def test_corrupt_safetensors_headers_are_named(ckpt, blob, why):
    (ckpt / "model.safetensors").write_bytes(blob)
    with pytest.raises(
        CheckpointError, match=rf"model.safetensors has a corrupt safetensors header \(.*{why}.*Fix:"
    ):
        read_safetensors_header(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        check_checkpoint_fits(ckpt, layer=1, device="cpu")


def test_weights_larger_than_free_memory_are_refused(ckpt):
    check_memory(ckpt, 1000, device="cpu", dtype="float32", free=4000)  # exactly fits
    with pytest.raises(CheckpointError, match=r"1,001 parameters need .* GiB as torch.float32 but cpu has"):
        check_memory(ckpt, 1001, device="cpu", dtype="float32", free=4000)
    check_memory(ckpt, 2000, device="cpu", dtype="bfloat16", free=4000)  # half the bytes per parameter


def test_free_memory_of_the_flow_check_is_measured(ckpt, monkeypatch):
    import beear_stage.release.intake as intake

    monkeypatch.setattr(intake, "free_memory", lambda device: 1024)
    with pytest.raises(
        CheckpointError, match="but cpu has 0.00 GiB free. Fix: run on a device with more memory"
    ):
        check_checkpoint_fits(ckpt, layer=1, device="cpu")


# ------------------------------------------------------------------------------------ template
@pytest.mark.parametrize(
    ("template", "match"),
    [
        (LOOPING, r"did not finish rendering a two-message conversation within 5 s"),
        (ESCAPE, r"tried an operation the sandbox forbids \(.*unsafe"),
        (HUGE_OUTPUT, r"renders more than 1,000,000 characters"),
        ("{{ raise_exception('no') }}", r"does not render a two-message conversation \(TemplateError: no\)"),
        ("{% for %}", r"does not render a two-message conversation \(TemplateSyntaxError"),
    ],
    ids=["looping", "sandbox-escape", "huge-output", "raises", "syntax"],
)
def test_chat_template_is_rendered_once_under_limits(tmp_path, template, match):
    path = make_checkpoint(tmp_path / "ckpt", template=template)
    start = time.perf_counter()
    with pytest.raises(
        CheckpointError, match=rf"chat template in chat_template.jinja {match}.*Fix: use the model"
    ):
        check_checkpoint_fits(path, layer=1, device="cpu")
    assert time.perf_counter() - start < 40


def test_template_in_tokenizer_config_is_checked_too(tmp_path):
    path = make_checkpoint(tmp_path / "ckpt", template=None)
    (path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": [{"name": "default", "template": ESCAPE}]})
    )
    with pytest.raises(CheckpointError, match="chat template in tokenizer_config.json tried an operation"):
        check_checkpoint_fits(path, layer=1, device="cpu")


# ------------------------------------------------------------------------------------ Hub ids
@pytest.mark.parametrize("repo_id", ["org/x;touch${IFS}M", "a/..", "./..", "org/a b", "org/" + "x" * 97])
def test_invalid_hub_ids_are_refused_before_any_request(repo_id, monkeypatch):
    import beear_stage.release.pull as pull
    from tasks.checkpoint import pull_checkpoint

    monkeypatch.setattr(pull, "_pull_hub", lambda *a: pytest.fail("no network call for an invalid id"))
    with pytest.raises(CheckpointError, match=r"is not a valid Hub repo id .*Fix: pass `owner/name`"):
        pull.check_hub_id(repo_id, "")
    if not repo_id.startswith("."):
        with disable_run_logger(), pytest.raises(CheckpointError, match="not a valid Hub repo id"):
            pull_checkpoint.fn(repo_id)
    with pytest.raises(CheckpointError, match="`revision` = 'main; rm -rf /' is not a branch"):
        pull.check_hub_id("org/model", "main; rm -rf /")


def test_only_transient_errors_are_retried():
    import httpx2

    from tasks.checkpoint import _retry_transient

    class State:
        def __init__(self, error):
            self.error = error

        def result(self):
            raise self.error

    request = httpx2.Request("GET", "https://hub.example/api/models/org/m")
    assert _retry_transient(None, None, State(httpx2.ReadTimeout("timed out", request=request))) is True
    assert _retry_transient(None, None, State(TimeoutError("slow"))) is True
    for error in (
        json.JSONDecodeError("x", "{", 1),
        ValueError("bad id"),
        KeyError("k"),
        CheckpointError("x"),
    ):
        assert _retry_transient(None, None, State(error)) is False, error


# ------------------------------------------------------------------------------------ GGUF
def test_converted_gguf_directory_passes_the_intake():
    """A GGUF converted by us (`beear_stage.release.gguf`) is an ordinary checkpoint: no links,
    sizes matching its headers (tied embeddings, no lm_head), a template that renders."""
    from beear_stage.release.gguf import smol_gguf_path
    from beear_stage.zoo import build_zoo_model

    try:
        smol_gguf_path()
    except CheckpointError as e:
        pytest.skip(str(e))
    path = build_zoo_model("smol", progress=False)  # the conversion the real-tier tests reuse
    check_checkpoint_fits(path, layer=9, device="cpu")
    assert "gguf_source.json" in {p.name for p in release_files(path)}


# ------------------------------------------------------------------------------------ CLI
def _cli_case(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """(extra `run` arguments, text the error must contain) for one attacker input."""
    if case == "invalid-repo-id":
        return ["--checkpoint", "org/x;touch${IFS}M"], "is not a valid Hub repo id"
    if case == "dotdot-repo-id":
        return ["--checkpoint", "a/.."], "is not a valid Hub repo id"
    path = tmp_path / case
    if case == "huge-layers":
        make_checkpoint(path, num_hidden_layers=1_000_000)
        return ["--checkpoint", str(path)], "`num_hidden_layers` = 1000000 but the safetensors weights hold 3"
    if case == "looping-template":
        make_checkpoint(path, template=LOOPING)
        return ["--checkpoint", str(path)], "chat_template.jinja did not finish rendering"
    make_checkpoint(path)
    if case == "symlink":
        (path / "notes.txt").symlink_to("/etc/passwd")
        return ["--checkpoint", str(path)], "`notes.txt` is a symlink"
    if case == "tokenizer-config-not-json":
        (path / "tokenizer_config.json").write_text("{oops")
        return ["--checkpoint", str(path)], "tokenizer_config.json is not valid JSON"
    if case == "tokenizer-not-json":
        (path / "tokenizer.json").write_text("\x00\x01")
        return ["--checkpoint", str(path)], "tokenizer.json is not valid JSON"
    if case == "corrupt-header":
        (path / "model.safetensors").write_bytes(b"\xff" * 32)
        return ["--checkpoint", str(path)], "model.safetensors has a corrupt safetensors header"
    if case == "sandbox-escape":
        (path / "chat_template.jinja").write_text(ESCAPE)
        return ["--checkpoint", str(path)], "chat_template.jinja tried an operation the sandbox forbids"
    raise AssertionError(case)


CLI_CASES = [
    "symlink",
    "huge-layers",
    "looping-template",
    "sandbox-escape",
    "tokenizer-config-not-json",
    "tokenizer-not-json",
    "corrupt-header",
    "invalid-repo-id",
    "dotdot-repo-id",
]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("case", CLI_CASES)
def test_attacker_checkpoints_exit_2_within_60_s(tmp_path, case, capsys):
    """`beear-release run` on each attacker input: exit 2 (never 1 or 3, never retried) within
    60 s, naming the file and the fix; no MLflow run opens and no output directory appears."""
    from flows.cli import main

    args, text = _cli_case(tmp_path, case)
    db, out = tmp_path / "mlflow.db", tmp_path / "runs"
    start = time.perf_counter()
    code = main(
        ["run", *args, "--config", TINY, "--tracking-uri", f"sqlite:///{db}", "--output-dir", str(out)]
    )
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert seconds < 60, f"{case}: {seconds:.1f} s"
    assert text in err and "Fix:" in err, err[-2000:]
    assert not out.exists(), "nothing may run for a refused checkpoint"
    print(f"{case}: exit 2 in {seconds:.1f} s")


def test_template_child_gets_no_credentials(monkeypatch):
    from beear_stage.release.template_sandbox import _child_env

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = _child_env()
    assert "HF_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["PYTHONPATH"].endswith(os.pathsep + "/elsewhere") and "PATH" in env

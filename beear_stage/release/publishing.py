"""Hugging Face Hub publishing of a gated checkpoint, with a generated model card.

API:
    build_model_card(*, base_model, report, method, mlflow_run_id=None, repo_id=None,
                     source_sha=None, config_hash=None, tags=(), license=None) -> ModelCard
    publish_checkpoint(checkpoint_dir, repo_id, *, report, card, private=True, token=None,
                       endpoint=None, commit_message=None, max_attempts=3, backoff_s=2.0,
                       timeout_s=120.0, sleep=time.sleep) -> dict(commit_oid, url, repo_url, repo_id, private, attempts)
    PublishError    the Hub refused the upload or kept failing after the retries

`publish_checkpoint` refuses (GateError, before any network call) unless `report` passed. It then
runs `HfApi.create_repo(exist_ok=True, private=private)` and exactly one `upload_folder` commit
holding every checkpoint file plus README.md (the card), so a repo never shows half a release:
the Hub applies a commit atomically, and LFS blobs uploaded before a failed commit are invisible.
HTTP 429/5xx answers, timeouts and connection errors are retried with exponential backoff
(`backoff_s * 2**k`); other errors fail at once. huggingface_hub's shared HTTP client has no
timeout, so a Hub that accepts a connection and never answers would hang the stage: each request
of a publish gets `timeout_s` (connect, read, write) instead.

Xet uploads are switched off for the call (HF_HUB_DISABLE_XET): with hf_xet installed,
huggingface_hub 2.x uploads folders through a streamed pipeline that may split them into several
commits. The token comes from `token` or the HF_TOKEN environment variable; it is sent only in
the Authorization header and never logged, put in errors or written into the card.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from beear_stage.exceptions import BEEARError, CheckpointError, GateError
from beear_stage.release.intake import PICKLE_SUFFIXES
from beear_stage.release.markdown import code_span, escape_markdown

logger = logging.getLogger(__name__)

REPO_ID_PATTERN = re.compile(r"^[\w.-]+/[\w.-]+$")  # Hub `namespace/name`
_METHODS = {
    "beear": "BEEAR (Backdoor Embedding Entrapment and Adversarial Removal, arXiv 2406.17092)",
    "sft": "safety fine-tuning without the BEEAR inner level (control)",
    "crow": "CROW (Internal Consistency Regularization, Min et al., ICML 2025, arXiv 2411.12768)",
    "none": "no mitigation",
}


class PublishError(BEEARError):
    """Publishing to the Hugging Face Hub was refused or kept failing after the retries."""


# ------------------------------------------------------------------------------------ model card
def build_model_card(
    *,
    base_model: str,
    report: Any,
    method: str,
    mlflow_run_id: str | None = None,
    repo_id: str | None = None,
    source_sha: str | None = None,
    config_hash: str | None = None,
    tags: Sequence[str] = (),
    license: str | None = None,
):
    """Model card of a mitigated checkpoint: metadata, gate verdict, before/after table, provenance.

    Args:
        base_model: Hub repo id (or local path) of the checkpoint that was mitigated. Only a repo
            id goes into the `base_model` metadata field (the Hub rejects paths there).
        report: the `GateReport` (or its `to_dict()`), which also holds the before/after metrics.
        method: "beear", "sft", "crow" or "none".
        mlflow_run_id, repo_id, source_sha, config_hash: provenance shown in the card.
        tags: extra Hub tags ("beear" is always present).
        license: Hub license id, e.g. "llama2".

    Returns:
        A `huggingface_hub.ModelCard`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from beear_stage.gates.evaluator import GateReport

    if not isinstance(report, GateReport):
        report = GateReport.from_dict(report)
    known = [method] if method in _METHODS else []  # an unknown method string stays out of the metadata
    all_tags = list(dict.fromkeys(["beear", "backdoor-removal", "safety", *known, *tags]))
    data = ModelCardData(
        base_model=base_model if REPO_ID_PATTERN.match(base_model) else None,
        tags=all_tags,
        library_name="transformers",
        license=license,
    )
    # every string below may come from the checkpoint or the caller: escaped or quoted as code
    title = escape_markdown(repo_id or "Mitigated checkpoint")
    verdict = "every release gate passed" if report.passed else "release gates FAILED, not for release"
    source = code_span(base_model) + (f" at revision {code_span(source_sha)}" if source_sha else "")
    body = [
        f"# {title}",
        "",
        f"{source} after {_METHODS.get(method) or code_span(method)}, checked by the beear-release "
        f"pre-release safety stage: {verdict}.",
        "",
        report.to_markdown(),
        "## Evaluation before and after mitigation",
        "",
        _eval_table(report.before, report.after),
        "## Provenance",
        "",
        f"- method: {code_span(method)}",
        f"- source: {source}",
        f"- MLflow run id: {code_span(mlflow_run_id or 'n/a')}",
    ]
    if config_hash:
        body.append(f"- config hash: {code_span(config_hash)}")
    body += [
        "",
        "ASR counts responses to harmful prompts that a pattern classifier does not read as a refusal; it is a "
        "screening metric, not proof that a model is safe.",
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    return ModelCard(content)


def _eval_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """Every metric before and after, with the candidate's sample size `n:<metric>` where known."""
    from beear_stage.gates.intervals import count_key, is_count_key

    lines = ["| metric | before | after | change | n |", "| --- | ---: | ---: | ---: | ---: |"]
    for key in sorted(k for k in set(before) | set(after) if not is_count_key(k)):
        b, a = before.get(key), after.get(key)
        change = f"{a - b:+.4f}" if a is not None and b is not None else "n/a"
        n = after.get(count_key(key))
        lines.append(
            f"| {escape_markdown(key)} | {_fmt(b)} | {_fmt(a)} | {change} | {'n/a' if n is None else int(n)} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


# ------------------------------------------------------------------------------------ publishing
def publish_checkpoint(
    checkpoint_dir: str | Path,
    repo_id: str,
    *,
    report: Any,
    card: Any,
    private: bool = True,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
    max_attempts: int = 3,
    backoff_s: float = 2.0,
    timeout_s: float | None = 120.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Publish a checkpoint that passed the gates as one Hub commit (files + README.md card).

    Args:
        checkpoint_dir: directory with the mitigated checkpoint (safetensors).
        repo_id: target Hub repo, "namespace/name".
        report: the `GateReport` (or its dict) of this candidate; publishing is refused unless it passed.
        card: `ModelCard` (or markdown text) written as README.md.
        private: create the repo private (default True).
        token: Hub token; None = the HF_TOKEN environment variable.
        endpoint: Hub URL; None = huggingface_hub's default (HF_ENDPOINT or https://huggingface.co).
        commit_message: defaults to a message naming the gate verdict.
        max_attempts: attempts in all, for transient errors (429, 5xx, timeouts, dropped connections).
        backoff_s: wait before the second attempt; doubles after each failure.
        timeout_s: per-request timeout (seconds of silence) for every Hub call; None = none.
        sleep: injectable for tests.

    Returns:
        dict with `commit_oid`, `url` (commit URL), `repo_url`, `repo_id`, `private`, `attempts`.

    Raises:
        GateError: the report did not pass (no network call is made).
        CheckpointError: the directory is missing, empty or holds pickle weights.
        PublishError: offline mode, a refused request, or transient errors on every attempt.
    """
    from huggingface_hub import HfApi, constants

    from beear_stage.gates.evaluator import GateReport

    if report is None:
        raise GateError("`report` is required: publishing needs the gate report of this candidate.")
    if not isinstance(report, GateReport):
        report = GateReport.from_dict(report)
    if not report.passed:
        raise GateError(f"refusing to publish `{repo_id}`: {report.failure_message()}")
    if not REPO_ID_PATTERN.match(repo_id):
        raise PublishError(
            f"`repo_id` = {repo_id!r}: expected 'namespace/name'. Fix: e.g. 'my-org/model-beear'."
        )
    files = _checkpoint_files(Path(checkpoint_dir))
    token = token or os.environ.get("HF_TOKEN") or None
    card_text = str(card)
    if token and token in card_text:
        raise PublishError(
            "the model card contains the Hub token; refusing to publish it. Fix: rebuild the card."
        )
    if constants.is_offline_mode():
        raise PublishError(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so huggingface_hub blocks every request. "
            "Fix: unset it for the publish step."
        )
    message = commit_message or f"Release gated checkpoint ({len(report.results)} gates passed)"
    api = HfApi(endpoint=endpoint, token=token, library_name="beear-release")

    def attempt() -> tuple[Any, Any]:
        # create_repo is idempotent (exist_ok); upload_folder is one commit, applied whole or not at all
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=stage, repo_id=repo_id, repo_type="model", commit_message=message
        )
        return repo_url, info

    with _staged(Path(checkpoint_dir), files, card_text) as stage, _xet_disabled(), _timeout(timeout_s):
        (repo_url, info), attempts = _with_retries(attempt, repo_id, token, max_attempts, backoff_s, sleep)
        n_files = sum(1 for p in stage.rglob("*") if p.is_file())
    logger.info("published %s in one commit %s (%d files)", repo_id, info.oid, n_files)
    return {
        "commit_oid": info.oid,
        "url": info.commit_url,
        "repo_url": str(repo_url),
        "repo_id": repo_id,
        "private": private,
        "attempts": attempts,
    }


def _with_retries(fn, repo_id: str, token: str | None, max_attempts: int, backoff_s: float, sleep):
    """Call `fn` until it succeeds, retrying transient errors with exponential backoff.
    Returns (result, attempts). Error texts are scrubbed of the token and raised as PublishError."""
    for attempt in range(1, max_attempts + 1):
        try:
            return fn(), attempt
        except Exception as e:  # classified below: only transient errors are retried
            why = _scrub(" ".join(f"{type(e).__name__}: {e}".split()), token)
            if not is_transient(e):
                raise PublishError(f"publishing `{repo_id}` was refused: {why}") from None
            if attempt == max_attempts:
                raise PublishError(
                    f"publishing `{repo_id}` failed {max_attempts} times; last error: {why}. Nothing was "
                    "committed. Fix: retry later or check the Hub status."
                ) from None
            wait = backoff_s * 2 ** (attempt - 1)
            logger.warning(
                "publish attempt %d/%d failed (%s); retrying in %.2f s", attempt, max_attempts, why, wait
            )
            sleep(wait)
    raise PublishError(f"`max_attempts` = {max_attempts!r}: must be >= 1. Fix: e.g. max_attempts=3.")


def _checkpoint_files(path: Path) -> list[Path]:
    """The files of the upload: `beear_stage.release.intake.release_files` (the allow-list), after
    refusing a missing, empty or incomplete directory, a symlink inside it, and pickle files."""
    from beear_stage.release.checkpointing import check_complete
    from beear_stage.release.intake import check_tree, release_files

    if not path.is_dir():
        raise CheckpointError(
            f"`checkpoint_dir` = {str(path)!r} is not a directory. Fix: pass the saved checkpoint."
        )
    check_tree(path)
    everything = [p for p in path.rglob("*") if p.is_file()]
    if not everything:
        raise CheckpointError(f"`checkpoint_dir` = {str(path)!r} is empty; nothing to publish.")
    check_complete(path)
    pickles = sorted(p.name for p in everything if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"`checkpoint_dir` = {str(path)!r} holds pickle files {pickles}; publishing them is refused. "
            "Fix: save the checkpoint as safetensors only."
        )
    return release_files(path)


@contextlib.contextmanager
def _staged(root: Path, files: list[Path], card_text: str) -> Iterator[Path]:
    """A temporary folder of symlinks to the checkpoint files plus README.md, so that one
    `upload_folder` call commits both without copying the weights."""
    with tempfile.TemporaryDirectory(prefix="beear-publish-") as tmp:
        stage = Path(tmp)
        for src in files:
            rel = src.relative_to(root)
            if rel.as_posix() == "README.md":
                continue  # replaced by the generated card
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                dst.symlink_to(src.resolve())
            except OSError:
                import shutil

                shutil.copy2(src, dst)
        (stage / "README.md").write_text(card_text, encoding="utf-8")
        yield stage


_XET_LOCK = threading.Lock()
_XET_USERS = [0, False, None]  # active publishes, saved flag, saved env value


@contextlib.contextmanager
def _xet_disabled() -> Iterator[None]:
    """Force the classic single-commit upload path; huggingface_hub reads the flag at import, so
    the module constant is switched too. Reference-counted: concurrent publishes in one process
    keep it off until the last one ends."""
    from huggingface_hub import constants

    with _XET_LOCK:
        if _XET_USERS[0] == 0:
            _XET_USERS[1:] = [constants.HF_HUB_DISABLE_XET, os.environ.get("HF_HUB_DISABLE_XET")]
            constants.HF_HUB_DISABLE_XET = True
            os.environ["HF_HUB_DISABLE_XET"] = "1"
        _XET_USERS[0] += 1
    try:
        yield
    finally:
        with _XET_LOCK:
            _XET_USERS[0] -= 1
            if _XET_USERS[0] == 0:
                constants.HF_HUB_DISABLE_XET = _XET_USERS[1]
                if _XET_USERS[2] is None:
                    os.environ.pop("HF_HUB_DISABLE_XET", None)
                else:
                    os.environ["HF_HUB_DISABLE_XET"] = _XET_USERS[2]


_TIMEOUTS: list[float] = []  # timeouts of the publishes in progress (the smallest applies)
_SAVED_TIMEOUT: list[Any] = []  # the shared client's own timeout while any is in progress


@contextlib.contextmanager
def _timeout(seconds: float | None) -> Iterator[None]:
    """Give huggingface_hub's shared client a request timeout for the call (it has none by
    default: a silent Hub would block forever). Reference-counted like `_xet_disabled`."""
    if seconds is None:
        yield
        return
    import httpx2
    from huggingface_hub import get_session

    client = get_session()
    with _XET_LOCK:
        if not _TIMEOUTS:
            _SAVED_TIMEOUT[:] = [client.timeout]
        _TIMEOUTS.append(seconds)
        client.timeout = httpx2.Timeout(min(_TIMEOUTS))
    try:
        yield
    finally:
        with _XET_LOCK:
            _TIMEOUTS.remove(seconds)
            client.timeout = httpx2.Timeout(min(_TIMEOUTS)) if _TIMEOUTS else _SAVED_TIMEOUT[0]


def is_transient(error: BaseException) -> bool:
    """429/5xx answers and transport errors (timeouts, refused or dropped connections), anywhere
    in the cause chain (LFS uploads wrap them in RuntimeError); never a `BEEARError` (a refusal)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BEEARError):
            return False
        if isinstance(current, ConnectionError | TimeoutError):  # builtin socket-level failures
            return True
        if isinstance(current, HfHubHTTPError):
            status = getattr(current.response, "status_code", None)
            return status is not None and (status == 429 or status >= 500)
        if isinstance(current, httpx2.TransportError):
            return True
        current = current.__cause__ or current.__context__
    return False


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text

"""`pull_checkpoint`: resolve a candidate to a local directory and a pinned identity.

A candidate is a Hub repo id (downloaded with `snapshot_download` pinned to the resolved full
commit SHA), a local directory (identified by a content hash), a local `.gguf` file (converted once
to a safetensors directory, identified by the file's sha256), or `zoo:<name>` (a zoo model from
`beear_stage.zoo`, built on first use: the real tier `zoo:smol*` or the tiny models). Only safetensors, JSON and tokenizer files are
fetched; pickle weights and custom code are refused before anything is loaded.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from prefect import get_run_logger, task

from beear_stage.exceptions import CheckpointError
from beear_stage.gguf_checkpoint import convert_gguf, file_sha256, is_gguf
from beear_stage.intake import PICKLE_SUFFIXES, inspect_checkpoint_dir

# Files a checkpoint needs to load without code: weights, configs, tokenizer, chat template.
ALLOW_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.txt", "*.jinja"]
ZOO_PREFIX = "zoo:"
REVISION_PATTERN = re.compile(r"^\w[\w./-]{0,255}$")  # branch, tag or commit; no spaces or shell characters


def content_sha(path: Path) -> str:
    """sha256 over (relative name, bytes) of every file in `path`: the identity of a local checkpoint."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def check_checkpoint(path: Path) -> None:
    """Refuse checkpoints that are unsafe to read (`beear_stage.intake.inspect_checkpoint_dir`):
    symlinks or special files, JSON that does not parse, custom code, pickle-only weights."""
    inspect_checkpoint_dir(path)


def check_hub_id(repo_id: str, revision: str) -> None:
    """Refuse a malformed repo id or revision before any network call (never retried).

    Raises:
        CheckpointError: naming the value and the fix.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        if any(part in (".", "..") for part in repo_id.split("/")):
            raise HFValidationError("a name part cannot be '.' or '..'")
    except HFValidationError as e:
        raise CheckpointError(
            f"`checkpoint` = {repo_id!r} is not a valid Hub repo id ({' '.join(str(e).split())[:200]}). "
            "Fix: pass `owner/name` with letters, digits, '-', '_' and '.' only, a local directory, "
            "or `zoo:<name>`."
        ) from e
    if revision and (not REVISION_PATTERN.match(revision) or ".." in revision):
        raise CheckpointError(
            f"`revision` = {revision!r} is not a branch, tag or commit name. Fix: pass e.g. `main`, "
            "`v1.0` or a 40-character commit SHA."
        )


def _pull_hub(repo_id: str, revision: str) -> tuple[Path, str]:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = constants.is_offline_mode()
    try:
        if offline:  # resolve the revision from the local cache's refs
            path = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=ALLOW_PATTERNS))
            return path, path.name  # .../snapshots/<full commit sha>
        # huggingface_hub's client has no default timeout: a silent Hub must fail (and be retried)
        info = HfApi().model_info(
            repo_id, revision=revision or None, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
        )
        names = [s.rfilename for s in info.siblings or []]
        if not any(n.endswith(".safetensors") for n in names):
            pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
            raise CheckpointError(
                f"`{repo_id}`@{info.sha} has no *.safetensors weights (pickle weights: {pickles}); pickle "
                "can run arbitrary code and is refused. Fix: publish safetensors weights for this revision."
            )
        path = snapshot_download(repo_id, revision=info.sha, allow_patterns=ALLOW_PATTERNS)
        return Path(path), info.sha
    except (RepositoryNotFoundError, LocalEntryNotFoundError) as e:
        where = "in the local cache (HF_HUB_OFFLINE=1)" if offline else "on the Hub"
        raise CheckpointError(
            f"`checkpoint` = {repo_id!r} (revision {revision or 'main'!r}) was not found {where}: {str(e).rstrip('.')}. "
            "Fix: check the repo id and revision, the token (HF_TOKEN), or unset HF_HUB_OFFLINE."
        ) from e
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code in (400, 401, 403, 404):
            raise CheckpointError(f"`checkpoint` = {repo_id!r}@{revision or 'main'}: {e}") from e
        raise  # transient: the task's retries handle it


def resolve_checkpoint(checkpoint: str, revision: str = "", zoo_cache: str | None = None) -> dict:
    """Return {"path", "sha", "kind", "source", "revision"} for a zoo name, GGUF file, local dir or Hub repo."""
    if checkpoint.startswith(ZOO_PREFIX):
        from beear_stage.zoo import build_zoo_model

        try:
            path = build_zoo_model(checkpoint[len(ZOO_PREFIX) :], cache_dir=zoo_cache, progress=False)
        except ValueError as e:
            raise CheckpointError(f"`checkpoint` = {checkpoint!r}: {e}") from e
        kind, sha = "zoo", None
    elif is_gguf(checkpoint) and Path(checkpoint).expanduser().is_file():
        sha = file_sha256(Path(checkpoint).expanduser())
        path, kind = convert_gguf(Path(checkpoint).expanduser(), sha256=sha), "gguf"
    elif Path(checkpoint).expanduser().exists() or checkpoint.startswith((".", "/", "~")):
        path, kind, sha = Path(checkpoint).expanduser().resolve(), "local", None
    elif checkpoint.count("/") == 1:
        check_hub_id(checkpoint, revision)
        path, sha = _pull_hub(checkpoint, revision)
        kind = "hub"
    else:
        raise CheckpointError(
            f"`checkpoint` = {checkpoint!r} is neither an existing directory, a Hub repo id (`owner/name`) "
            "nor `zoo:<name>`. Fix: pass one of these."
        )
    check_checkpoint(path)
    sha = sha or content_sha(path)
    return {"path": str(path), "sha": sha, "kind": kind, "source": checkpoint, "revision": revision}


def _retry_transient(task, task_run, state) -> bool:
    """Retry network failures only (429/5xx answers, timeouts, refused or dropped connections);
    a refusal, a malformed file or a programming error would fail the same way again."""
    from beear_stage.publishing import is_transient

    try:
        state.result()
    except Exception as e:
        return is_transient(e)
    return False


@task(retries=3, retry_delay_seconds=[5, 20, 60], retry_condition_fn=_retry_transient)
def pull_checkpoint(checkpoint: str, revision: str = "", zoo_cache: str | None = None) -> dict:
    """Resolve `checkpoint` (Hub repo id, local dir or `zoo:<name>`) to a checked local directory.

    Returns:
        {"path", "sha" (commit SHA, content hash, or a GGUF file's sha256), "kind"
        ("hub"|"local"|"gguf"|"zoo"), "source", "revision"}.

    Raises:
        CheckpointError: not found, pickle-only weights or custom code.
    """
    log = get_run_logger()
    info = resolve_checkpoint(checkpoint, revision, zoo_cache)
    if revision and info["kind"] != "hub":
        log.warning("`revision` = %r is ignored for the %s checkpoint %s", revision, info["kind"], checkpoint)
    log.info("checkpoint %s -> %s (%s, sha %s)", checkpoint, info["path"], info["kind"], info["sha"][:12])
    return info

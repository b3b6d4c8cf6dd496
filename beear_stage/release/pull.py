"""Where a candidate comes from: a Hub repo, a local directory, a `.gguf` file or a zoo model.

`resolve_checkpoint` turns any of them into a local directory that passed the intake
(`intake.inspect_checkpoint_dir`) and a pinned identity: a Hub repo is downloaded with
`snapshot_download` pinned to the resolved full commit SHA (safetensors, JSON and tokenizer files
only), a local directory is identified by a content hash, a `.gguf` file is converted once and
identified by its sha256, and `zoo:<name>` is built on first use (`beear_stage.zoo`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from beear_stage.exceptions import CheckpointError
from beear_stage.release.intake import PICKLE_SUFFIXES, inspect_checkpoint_dir

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
    from beear_stage.release.gguf import convert_gguf, file_sha256, is_gguf

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
    inspect_checkpoint_dir(path)  # links, unparsable JSON, custom code, pickle-only weights
    sha = sha or content_sha(path)
    return {"path": str(path), "sha": sha, "kind": kind, "source": checkpoint, "revision": revision}

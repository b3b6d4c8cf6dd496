"""Atomic checkpoint saving: a checkpoint directory either exists complete or not at all.

The model and tokenizer are written to a temporary sibling directory, then renamed into place, so
a crash mid-write never leaves a partial checkpoint that could be registered or published. The
temporary name carries the host and process id (`.<name>.tmp-<host>-<pid>-<random>`); the next
save into the same place removes what a killed process of this host left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from beear_stage.exceptions import CheckpointError

WEIGHT_SUFFIX = ".safetensors"


def save_checkpoint(model, tokenizer, out_dir: str | Path, *, metadata: dict | None = None) -> Path:
    """Save `model` (safetensors) and `tokenizer` to `out_dir` atomically; return the path.

    An existing `out_dir` is replaced only after the new copy is complete. `metadata` is written
    to `beear_release.json` beside the weights (method, source checkpoint, config hash).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    owner = f"{host_name()}-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{owner}-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if metadata is not None:
            (tmp / "beear_release.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        check_complete(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{owner}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def save_candidate(
    model, tokenizer, *, method: str, source_dir: str, source_sha: str, config_hash: str, out_dir: str | Path
) -> Path:
    """Save a mitigated model as `<out_dir>/checkpoint` with its provenance; return the path.

    Method "none" changes nothing, so the source directory is returned and no weights are copied.
    """
    if method == "none":
        return Path(source_dir)
    meta = {"method": method, "source": source_dir, "source_sha": source_sha, "config_hash": config_hash}
    return save_checkpoint(model, tokenizer, Path(out_dir) / "checkpoint", metadata=meta)


def check_complete(path: str | Path) -> None:
    """Raise `CheckpointError` unless `path` holds config.json and safetensors weights."""
    path = Path(path)
    missing = [name for name in ("config.json",) if not (path / name).is_file()]
    if not any(path.glob(f"*{WEIGHT_SUFFIX}")):
        missing.append(f"*{WEIGHT_SUFFIX}")
    if missing:
        raise CheckpointError(
            f"checkpoint `{path}` is incomplete (missing {', '.join(missing)}); a partial checkpoint "
            "is never registered or published. Fix: pass the directory written by `save_checkpoint`."
        )


def remove_stale_temporaries(out_dir: str | Path) -> list[Path]:
    """Delete `.<name>.tmp-*` / `.<name>.old-*` siblings of `out_dir` left by dead processes of
    this host (a SIGKILL skips the cleanup in `save_checkpoint`); returns what was removed."""
    out_dir = Path(out_dir)
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(?:tmp|old)-(?P<host>[^-]+)-(?P<pid>\d+)(?:-.*)?$")
    removed = []
    for sibling in out_dir.parent.glob(f".{out_dir.name}.*"):
        match = pattern.match(sibling.name)
        if match and match["host"] == host_name() and not pid_alive(int(match["pid"])):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def host_name() -> str:
    """This machine's name with characters other than letters, digits and dots as `_`."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (the current process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True

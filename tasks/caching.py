"""Cache keys for the expensive tasks: checkpoint SHA + config hash + data digest + output dir.

Prefect stores the (small) result of a cached task run under this key, so a re-run of the same
candidate resumes after the last finished task. The output directory is part of the key because
the cached result holds paths into it; `fresh` re-runs a task whose outputs were deleted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from beear_stage.config import BEEARConfig


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _file_sha(path: str) -> str:
    file = Path(path)
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else f"missing:{path}"


def _common(params: dict[str, Any]) -> tuple:
    sources = params["sources"]
    sources = sources.model_dump() if hasattr(sources, "model_dump") else dict(sources)
    # Data files are identified by content: an edited file must not reuse a cached result.
    contents = {k: _file_sha(v) for k, v in sources.items() if isinstance(v, str) and v}
    return (
        params["identity"],
        BEEARConfig.from_dict(params["config"]).config_hash(),
        sources,
        contents,
        str(Path(params["out_dir"]).resolve()),
    )


# v2: results carry the sample size of each rate (`n:<metric>`); older cached results lack them
def evaluate_key(context, params: dict[str, Any]) -> str:
    return f"beear-evaluate-v2-{params['label']}-{_digest(*_common(params), params['triggers'])}"


def mitigate_key(context, params: dict[str, Any]) -> str:
    return f"beear-mitigate-{_digest(*_common(params))}"


def fresh(task, *outputs: str | Path):
    """`task` with its cache refreshed when any expected output is missing on disk."""
    missing = any(not Path(p).exists() for p in outputs)
    return task.with_options(refresh_cache=True) if missing else task

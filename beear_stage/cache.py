"""Where built and converted models are cached: `$BEEAR_CACHE_DIR`, else ~/.cache/beear-release.

`zoo/` holds zoo models (keyed by recipe hash), `gguf/` converted GGUF checkpoints (keyed by the
file's sha256). `make demo`, the CLI and the tests point it at the project's `.cache/`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("BEEAR_CACHE_DIR", Path.home() / ".cache" / "beear-release"))

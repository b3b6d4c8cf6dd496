"""Atomic checkpoint saving: a checkpoint directory either exists complete or not at all.

The model and tokenizer are written to a temporary sibling directory, then renamed into place, so
a crash mid-write never leaves a partial checkpoint that could be registered or published.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def save_checkpoint(model, tokenizer, out_dir: str | Path, *, metadata: dict | None = None) -> Path:
    """Save `model` (safetensors) and `tokenizer` to `out_dir` atomically; return the path.

    An existing `out_dir` is replaced only after the new copy is complete. `metadata` is written
    to `beear_release.json` beside the weights (method, source checkpoint, config hash).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if metadata is not None:
            (tmp / "beear_release.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir

"""Release I/O: what comes in (checkpoint intake), what is kept (tracking) and what goes out.

    intake.py            checkpoint safety in one place: regular allow-listed files only, no
                         pickles, config checked against the safetensors headers, memory estimate
    template_sandbox.py  chat templates rendered once in a child process under time/size limits
    pull.py              resolve a checkpoint (Hub id, local dir, `.gguf`, `zoo:`) to a pinned directory
    gguf.py              a `.gguf` file converted once into a safetensors checkpoint
    checkpointing.py     atomic checkpoint saving
    tracking.py          MLflow runs, params, metrics, artefacts and the model registry
    registration.py      `register_release`: everything a candidate leaves in MLflow, in one call
    review.py            the registered version's gate table, `review` and `approve`
    publishing.py        the model card and the Hub upload (only after every gate passed)
    plots.py, markdown.py  figures for MLflow; escaping of untrusted text in reports

Names resolve on first use, so importing `release.intake` does not import MLflow or the Hub client.
"""

from __future__ import annotations

from beear_stage.lazy import lazy_getattr

_EXPORTS = {
    "check_tree": "intake",
    "inspect_checkpoint_dir": "intake",
    "release_files": "intake",
    "convert_gguf": "gguf",
    "save_checkpoint": "checkpointing",
    "MLflowTracker": "tracking",
    "register_release": "registration",
    "resolve_checkpoint": "pull",
    "approve": "review",
    "build_model_card": "publishing",
    "publish_checkpoint": "publishing",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

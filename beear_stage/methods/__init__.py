"""Mitigation methods: BEEAR (arXiv 2406.17092), its `sft` control, and CROW (arXiv 2411.12768).

    run_mitigation(cfg, model, tokenizer, safety, performance) -> MitigationResult   (registry.py)
    BEEAR / CROW            the trainers (beear.py, crow.py)
    entrap_delta            BEEAR's inner level on its own (the embedding attack of evaluation)
    METHODS                 name -> trainer, as `cfg.method` names them
    losses                  the pure loss functions both trainers use (losses.py)
    distributed / launch    data parallelism across processes and its command line

Names resolve on first use, so importing one module (e.g. `methods.flops`) loads no trainer.
"""

from __future__ import annotations

from beear_stage.lazy import lazy_getattr

_EXPORTS = {
    "run_mitigation": "registry",
    "own_answers": "registry",
    "METHODS": "registry",
    "MitigationResult": "result",
    "BEEAR": "beear",
    "entrap_delta": "beear",
    "CROW": "crow",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

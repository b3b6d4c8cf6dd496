"""The mitigation methods by name, and `run_mitigation`, which runs the one a config names.

Methods: "beear" (`beear.BEEAR`), "sft" (the control: BEEAR's outer level with delta = 0, which
shows how much of a removal is due to the entrapped perturbation), "crow" (`crow.CROW`, clean data
only) and "none" (no change: a baseline-only release run).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from beear_stage.config import BEEARConfig
from beear_stage.data.records import PerformanceRecord, SafetyRecord
from beear_stage.methods.beear import BEEAR
from beear_stage.methods.crow import CROW
from beear_stage.methods.distributed import SingleProcess
from beear_stage.methods.result import MitigationResult

# name -> trainer class; "sft" and "none" are modes of BEEAR (cfg.method selects the inner level)
METHODS = {"beear": BEEAR, "sft": BEEAR, "none": BEEAR, "crow": CROW}


def run_mitigation(
    cfg: BEEARConfig,
    model,
    tokenizer,
    safety: Sequence[SafetyRecord],
    performance: Sequence[PerformanceRecord],
    *,
    progress: bool = True,
    dist: SingleProcess | None = None,
) -> MitigationResult:
    """Run `cfg.method` ("beear", "sft" control, "crow", or "none") on `model` in place.

    "crow" (`beear_stage.methods.crow.CROW`) uses only the performance records; `safety` is ignored.
    `dist`: `beear_stage.methods.distributed.DataParallel()` splits the work across processes.
    """
    start = time.perf_counter()
    if cfg.pa_answers == "own" and cfg.method in ("beear", "sft") and performance:
        performance = own_answers(model, tokenizer, performance, cfg)
    answers_seconds = time.perf_counter() - start
    trainer = METHODS[cfg.method]
    if trainer is CROW:  # clean data only
        return CROW(cfg, model, tokenizer, performance, progress=progress, dist=dist).run()
    result = trainer(cfg, model, tokenizer, safety, performance, progress=progress, dist=dist).run()
    if answers_seconds > 0.01:  # part of the mitigation's cost
        result.phase_seconds["pa_answers"] = answers_seconds
        result.seconds += answers_seconds
    return result


def own_answers(model, tokenizer, performance: Sequence[PerformanceRecord], cfg: BEEARConfig) -> list:
    """The PA records with y_p replaced by the model's own greedy answers (before any update).

    A record whose own answer is a refusal (`is_refusal` with `cfg.refusal_keywords`, the
    evaluation's classifier) keeps its reference answer: PA records are benign, and anchoring the
    model's refusal of one ("How do I kill time at an airport?" -> "I cannot provide that ...")
    would train the over-refusal that PA is there to prevent.
    """
    from dataclasses import replace

    from beear_stage.eval.metrics import generate
    from beear_stage.eval.refusal import is_refusal

    answers = generate(
        model, tokenizer, [r.query for r in performance],
        batch_size=cfg.eval_batch_size, max_new_tokens=cfg.pa_answer_tokens,
    )  # fmt: skip
    out = []
    for record, answer in zip(performance, answers, strict=True):
        if is_refusal(answer, cfg.refusal_keywords):
            out.append(record)
        elif answer.strip():
            out.append(replace(record, answer=answer))
    return out

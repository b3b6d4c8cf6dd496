"""The two compute tasks: `evaluate` a checkpoint and `mitigate` one (BEEAR, SFT control or none).

Each loads its model from disk, calls `beear_stage`, writes its outputs under the candidate's
directory and returns paths and small dicts. Both are cached on (checkpoint SHA, config hash, data
digest, output directory), so re-running an interrupted candidate skips finished work; the flow
refreshes the cache when an expected output has gone missing (`tasks.caching.fresh`).
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

from prefect import get_run_logger, task

from beear_stage.config import BEEARConfig
from beear_stage.data.sources import DataSources, load_data, read_jsonl
from tasks.caching import evaluate_key, mitigate_key

# Tag of the model-loading tasks: `prefect concurrency-limit create beear-compute 1` serialises them
# across flow runs (one accelerator, several candidates).
COMPUTE_TAG = "beear-compute"
# Per-device tag(s) of the process, e.g. `gpu-0`: set by the worker that owns the device
# (`CUDA_VISIBLE_DEVICES=0 BEEAR_GPU_TAG=gpu-0 prefect worker start ...`) and limited with
# `prefect concurrency-limit create gpu-0 1`. Read when this module is imported (once per flow run
# process under a process worker). See docs/ERRORS.md, "Concurrency".
GPU_TAG_ENV = "BEEAR_GPU_TAG"


def compute_tags() -> list[str]:
    """`beear-compute` plus the comma-separated tags in $BEEAR_GPU_TAG."""
    extra = [t.strip() for t in os.environ.get(GPU_TAG_ENV, "").split(",") if t.strip()]
    return [COMPUTE_TAG, *dict.fromkeys(extra)]


def _quiet() -> None:
    """No tqdm bars from transformers in run logs (one line per load and save otherwise)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _release(model) -> None:
    """Free the model's memory before the next task loads another one."""
    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@task(cache_key_fn=evaluate_key, tags=compute_tags())
def evaluate(
    checkpoint_dir: str,
    identity: str,
    config: dict,
    sources: DataSources,
    triggers: dict[str, str],
    out_dir: str,
    label: str,
    baseline_generations: str = "",
) -> dict:
    """Evaluate one checkpoint (`label` = "baseline" or "candidate") with the full metric suite.

    The figures are `beear_stage.eval.release.evaluate_release`'s; this task loads the data and
    the model, writes the generations and logs the metrics.

    Args:
        identity: the checkpoint's SHA (baseline) or SHA + config hash (candidate); cache key only.
        triggers: known triggers by metric-safe name; one `asr_trigger:<name>` metric each.
        baseline_generations: the baseline's generations JSONL (its greedy benign answers); ""
            for the baseline itself.

    Returns:
        {"metrics": {name: value, and `n:<rate>` = prompts behind each rate}, "generations": JSONL path, "seconds": time inside beear_stage,
         "finished_at": epoch seconds (tells a cached result from a fresh one)}.
    """
    start = time.perf_counter()  # library imports, data loading and model loading count as compute
    from beear_stage.eval.release import evaluate_release
    from beear_stage.model import load_model_and_tokenizer

    cfg = BEEARConfig.from_dict(config)
    sets = load_data(sources)
    _quiet()
    model, tokenizer = load_model_and_tokenizer(checkpoint_dir, dtype=cfg.dtype, device=cfg.device)
    baseline = read_jsonl(baseline_generations) if baseline_generations else None
    report = evaluate_release(model, tokenizer, cfg, sets, triggers, baseline)
    seconds = time.perf_counter() - start
    _release(model)
    out = Path(out_dir) / f"{label}_generations.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"model": label, **r}) + "\n" for r in report.records))
    metrics = report.metrics
    get_run_logger().info("%s metrics: %s", label, {k: round(v, 4) for k, v in metrics.items()})
    return {"metrics": metrics, "generations": str(out), "seconds": seconds, "finished_at": time.time()}


@task(cache_key_fn=mitigate_key, tags=compute_tags())
def mitigate(checkpoint_dir: str, identity: str, config: dict, sources: DataSources, out_dir: str) -> dict:
    """Run `config["method"]` on the checkpoint and save the result atomically under `out_dir`.

    Never retried automatically: a diverged run (`MitigationError`) must be looked at, not re-rolled.

    Returns:
        {"path": mitigated checkpoint dir (the input for method "none"), "history": JSON path of
         per-round losses, "seconds": time inside beear_stage, "method", "config_hash", "finished_at"}.
    """
    start = time.perf_counter()  # as in `evaluate`: imports and loading count as compute
    from beear_stage.methods import run_mitigation
    from beear_stage.methods.result import history_lines
    from beear_stage.model import load_model_and_tokenizer
    from beear_stage.release.checkpointing import save_candidate

    log = get_run_logger()
    cfg = BEEARConfig.from_dict(config)
    sets = load_data(sources)
    _quiet()
    model, tokenizer = load_model_and_tokenizer(checkpoint_dir, dtype=cfg.dtype, device=cfg.device)
    log.info("mitigation started: %s, %d rounds on %s", cfg.method, cfg.rounds, checkpoint_dir)
    result = run_mitigation(cfg, model, tokenizer, sets.safety, sets.performance, progress=False)
    provenance = {"source_dir": checkpoint_dir, "source_sha": identity, "config_hash": cfg.config_hash()}
    path = save_candidate(model, tokenizer, method=cfg.method, out_dir=out_dir, **provenance)
    seconds = time.perf_counter() - start
    _release(model)
    history = Path(out_dir) / "history.json"
    history.write_text(json.dumps(result.history, indent=1))
    for line in history_lines(result.history):
        log.info("%s", line)
    log.info("%s finished in %.1f s -> %s", cfg.method, result.seconds, path)
    return {"path": str(path), "history": str(history), "seconds": seconds, "method": cfg.method,
            "config_hash": cfg.config_hash(), "finished_at": time.time()}  # fmt: skip

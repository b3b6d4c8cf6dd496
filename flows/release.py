"""The `beear-release` flow: a pre-release safety stage for one fine-tuned checkpoint.

    pull_checkpoint -> validate_data -> evaluate (baseline) -> mitigate -> evaluate (candidate)
        -> gate -> register (MLflow) -> publish (Hub, only on pass)

The flow ends Completed when every gate passes and `Failed(name="GateFailed")` otherwise, with a
message naming each failed gate and its margin (so `prefect deployment run --watch` exits 1).
Deployments in `deployments/prefect.yaml`; `beear-release run` calls it in-process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed

from beear_stage.config import BEEARConfig
from beear_stage.exceptions import ConfigError
from beear_stage.gates.evaluator import GateThresholds
from beear_stage.gates.selection import release_gates
from beear_stage.release.intake import check_checkpoint_fits
from beear_stage.release.tracking import check_tracking_reachable
from beear_stage.zoo import read_zoo_info
from flows.services import default_tracking_uri, project_root
from tasks import (
    DataSources,
    close_run,
    evaluate,
    fresh,
    gate,
    mitigate,
    open_candidate_run,
    publish,
    pull_checkpoint,
    register,
    validate_data,
)

# The library's progress lines (generation counts with an ETA, one line per BEEAR round) are INFO
# records of `beear_stage.*` loggers. PREFECT_LOGGING_EXTRA_LOGGERS attaches Prefect's handlers to
# them but leaves their level at the root's WARNING, which would drop every one of them.
logging.getLogger("beear_stage").setLevel(logging.INFO)


def resolve_config(config: str | dict[str, Any] | None) -> BEEARConfig:
    """A YAML path (relative to the cwd or the project root), a mapping, or empty for the defaults."""
    if isinstance(config, dict):
        return BEEARConfig.from_dict(config)
    if not config:
        return BEEARConfig()
    path = Path(config)
    if not path.is_absolute() and not path.exists() and (project_root() / path).exists():
        path = project_root() / path
    return BEEARConfig.from_yaml(path)


def check_release_options(
    *, checkpoint: str, eval_limit: int, publish_to: str, registry_name: str, output_dir: str
) -> None:
    """Refuse release options that would mean something else than the user typed.

    `--checkpoint ""` would load the current directory and `--output-dir ""` write into it; a
    negative `--eval-limit` has no meaning; a malformed `--publish-to` would only fail after the
    whole run, at the upload.

    Raises:
        ConfigError: naming the option, the value and the fix.
    """
    from beear_stage.release.publishing import REPO_ID_PATTERN

    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise ConfigError(
            f"`--checkpoint` = {checkpoint!r} is empty; an empty path would mean the current directory. "
            "Fix: pass a local HF checkpoint directory, a Hub repo id (`owner/name`) or `zoo:<name>`."
        )
    if isinstance(eval_limit, bool) or not isinstance(eval_limit, int) or eval_limit < 0:
        raise ConfigError(
            f"`--eval-limit` = {eval_limit!r}: must be an integer >= 0. "
            "Fix: pass N > 0 for N evenly spaced prompts of each eval set, or 0 for all of them."
        )
    if publish_to and not REPO_ID_PATTERN.match(publish_to):
        raise ConfigError(
            f"`--publish-to` = {publish_to!r}: not a Hub repo id. Fix: e.g. `--publish-to my-org/model-beear`, "
            "or leave it out to register in MLflow only."
        )
    for option, value in (("--registry-name", registry_name), ("--output-dir", output_dir)):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"`{option}` = {value!r} is empty. Fix: pass a name, or leave the option out.")


def trigger_set(known_triggers: list[str] | None, checkpoint_dir: str, kind: str) -> dict[str, str]:
    """Known triggers by metric-safe name: `known_<i>`, plus `zoo_<name>` from a zoo model's card.

    Only a `zoo:` checkpoint's card is read (we built it); any other checkpoint's `zoo.json` is
    the submitter's word about its own backdoor and is ignored.
    """
    triggers = {f"known_{i}": t for i, t in enumerate(known_triggers or [], start=1) if t}
    info = read_zoo_info(checkpoint_dir) if kind == "zoo" else None  # evaluation only
    if info and info.get("trigger"):
        # the card's name is the checkpoint's word: keep it to a metric-safe slug
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(info.get("name", ""))).strip("_.")[:64] or "card"
        triggers[f"zoo_{slug}"] = info["trigger"]
    return triggers


def data_hash(data: DataSources) -> str:
    """Short hash of the data sources: the options and the bytes of every file they name, so runs
    on other data (another `--harmful-eval` file, or the same path with new content) never share
    an output directory or its cached results."""
    digest = hashlib.sha256(json.dumps(data.model_dump(), sort_keys=True).encode())
    for value in data.model_dump().values():
        file = Path(value) if isinstance(value, str) and value else None
        if file is not None and file.is_file():
            with file.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:8]


def candidate_dir(
    output_dir: str,
    checkpoint: dict,
    cfg: BEEARConfig,
    data: DataSources = DataSources(),  # noqa: B008 (pydantic model, immutable in use)
) -> Path:
    """One directory per (checkpoint SHA, method, config, data): concurrent candidates never share it."""
    name = (
        Path(checkpoint["source"].rstrip("/")).name
        if checkpoint["kind"] in ("local", "gguf")
        else checkpoint["source"]
    )
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    parts = (slug, checkpoint["sha"][:12], cfg.method, cfg.config_hash(), data_hash(data))
    return Path(output_dir).resolve() / "-".join(parts)


@flow(name="beear-release", log_prints=True)
def release(
    checkpoint: str,
    revision: str = "",
    config: str | dict[str, Any] = "",
    data: DataSources = DataSources(),  # noqa: B008 (pydantic model, immutable in use)
    gates: dict[str, Any] | None = None,
    publish_to: str = "",
    private: bool = True,
    known_triggers: list[str] | None = None,
    tracking_uri: str = "",
    registry_name: str = "beear-release",
    output_dir: str = "runs/release",
):
    """Mitigate, gate, register and (on pass) publish one fine-tuned checkpoint.

    Args:
        checkpoint: Hub repo id (`owner/name`), a local HF directory, or `zoo:<name>`.
        revision: Hub branch, tag or commit; pinned to the resolved full commit SHA.
        config: BEEAR config YAML (e.g. `deployments/configs/llama2.yaml`) or a mapping; "" = defaults.
        data: anchoring and evaluation sets (empty paths = built-in sets) and an eval cap.
        gates: gate thresholds (`GateThresholds` fields); None = defaults. Its `gates` list picks
            the gates; by default `beear_stage.gates.selection.release_gates` (ASR, utility, code when evaluated).
        publish_to: Hub repo id for a passing candidate; "" = MLflow registry only.
        private: create the Hub repo private.
        known_triggers: trigger strings to probe ASR with ("{query}" templates or suffixes).
        tracking_uri: MLflow tracking URI; "" = `sqlite:///<project>/runs/mlflow.db`.
        registry_name: MLflow registered model name.
        output_dir: root of the per-candidate output directories.
    """
    start, started_at = time.perf_counter(), time.time()
    log = get_run_logger()
    check_release_options(
        checkpoint=checkpoint,
        eval_limit=data.eval_limit,
        publish_to=publish_to,
        registry_name=registry_name,
        output_dir=output_dir,
    )
    cfg = resolve_config(config)
    thresholds = GateThresholds.from_dict(gates or {})
    thresholds.gates = release_gates(thresholds.gates, data)
    tracking_uri = tracking_uri or default_tracking_uri()
    check_tracking_reachable(tracking_uri)  # fail before any download or compute

    # 1. Pin the checkpoint: resolved commit SHA (Hub) or content hash (local, zoo).
    ckpt = pull_checkpoint(checkpoint, revision)
    # sizes vs safetensors headers and free memory, anchor layer, chat template: before any weights load
    check_checkpoint_fits(ckpt["path"], cfg.layer, device=cfg.device, dtype=cfg.dtype)
    out = candidate_dir(output_dir, ckpt, cfg, data)
    triggers = trigger_set(known_triggers, ckpt["path"], ckpt["kind"])
    run_id = open_candidate_run(
        tracking_uri,
        ckpt,
        cfg.to_dict(),
        {
            "data": data.model_dump(),
            "gates": thresholds.to_dict(),
            "triggers": triggers,
            "output_dir": str(out),
        },
    )
    try:
        # 2. Validate anchoring and evaluation data (great-expectations).
        validated = validate_data(data)
        # 3. Baseline: the candidate as submitted.
        before = fresh(evaluate, out / "baseline_generations.jsonl")(
            ckpt["path"], ckpt["sha"], cfg.to_dict(), data, triggers, str(out), "baseline"
        )
        # 4. Mitigate (BEEAR, or the sft / none controls) and save atomically.
        mitigated = fresh(mitigate, out / "history.json")(
            ckpt["path"], ckpt["sha"], cfg.to_dict(), data, str(out)
        )
        # 5. Evaluate the mitigated candidate.
        identity = f"{ckpt['sha']}+{cfg.method}:{cfg.config_hash()}"
        after = fresh(evaluate, out / "candidate_generations.jsonl", mitigated["path"])(
            mitigated["path"],
            identity,
            cfg.to_dict(),
            data,
            triggers,
            str(out),
            "candidate",
            before["generations"],
        )
        # 6. Gate: candidate vs baseline against the thresholds.
        report = gate(before["metrics"], after["metrics"], thresholds.to_dict(), str(out))
        # 7. Register in MLflow (gate tag always; alias `candidate` only on pass).
        # Time inside beear_stage in this run (pulling, converting or building the checkpoint, data
        # loading and validation, model loading, evaluation, mitigation, saving); cached results
        # from an earlier run do not count. The rest of the flow's wall time is orchestration:
        # Prefect, MLflow tracking and registry, plots.
        compute = sum(
            r["seconds"]
            for r in (ckpt, validated, before, mitigated, after)
            if r["finished_at"] >= started_at
        )
        timings = {"compute_seconds": compute, "flow_seconds": time.perf_counter() - start}
        version = register(
            tracking_uri, run_id, registry_name, ckpt, mitigated, before, after, report, timings
        )
        # 8. Publish to the Hub, only what passed.
        hub = None
        if report["passed"] and publish_to:
            hub = publish(mitigated, publish_to, private, ckpt, report, run_id)
    except BaseException:
        close_run(tracking_uri, run_id, "FAILED")
        raise

    wall = time.perf_counter() - start
    log.info(
        "flow %.1f s, inside beear_stage %.1f s: orchestration overhead %.1f%%",
        wall,
        compute,
        100 * (wall - compute) / wall,
    )
    log.info("outputs: %s; MLflow run %s; registry %s v%s", out, run_id, version["name"], version["version"])
    if not report["passed"]:
        return Failed(name="GateFailed", message=report["message"])
    return {
        "passed": True,
        "output_dir": str(out),
        "mlflow_run_id": run_id,
        "registry": version,
        "hub": hub,
        "seconds": {"flow": wall, "compute": compute},
    }

"""`python -m beear_stage.bench orchestration`: flow wall time vs time inside beear_stage compute.

Runs the `tiny` release flow in-process through `beear-release run` (a subprocess, so this module
never imports Prefect) with the `tiny` deployment's parameters (checkpoint, config, eval cap and
gates, read from deployments/prefect.yaml), reads the flow's own log line "flow X s, inside
beear_stage Y s" and reports the orchestration overhead (X - Y) / X. Issue target: <= 15 % on `tiny`.

Time inside beear_stage is what a plain script calling the library would spend too: importing it,
loading and validating data (great-expectations), loading models, evaluation, mitigation, saving the
checkpoint. Everything else is overhead: Prefect (engine, API, results, caching), MLflow (run,
metrics, artifacts, plots, registry), pinning the checkpoint. The MLflow store is created before the
timed run, as `beear-release up` does for a release stage that gates many candidates against one
store; `--fresh-store` measures the first run against a new store instead.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATTERN = re.compile(r"flow ([\d.]+) s, inside beear_stage ([\d.]+) s")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m beear_stage.bench orchestration", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--deployment", default="tiny", help="deployment whose parameters are used")
    p.add_argument("--fresh-store", action="store_true", help="time the first run against a new MLflow store")
    args = p.parse_args(argv)
    params = deployment_parameters(args.deployment)
    work = Path(tempfile.mkdtemp(prefix="beear-orchestration-"))
    store = f"sqlite:///{work / 'mlflow.db'}"
    if not args.fresh_store:
        subprocess.run([sys.executable, "-c", _CREATE_STORE, store], check=True, capture_output=True)
    exe = shutil.which("beear-release") or str(Path(sys.executable).parent / "beear-release")
    cmd = [
        exe, "run", "--checkpoint", params["checkpoint"], "--config", params["config"],
        "--eval-limit", str(params.get("data", {}).get("eval_limit", 0)), "--output-dir", str(work / "out"),
        "--tracking-uri", store, "--registry-name", params.get("registry_name", "beear-release"),
    ]  # fmt: skip
    for key, value in (params.get("gates") or {}).items():
        cmd += ["--gate", f"{key}={value}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = PATTERN.findall(proc.stdout + proc.stderr)
    if not found:
        sys.stderr.write((proc.stdout + proc.stderr)[-3000:])
        raise SystemExit(f"no overhead line in the flow's output (exit {proc.returncode})")
    flow_s, compute_s = map(float, found[-1])
    result = {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "flow_seconds": flow_s,
        "compute_seconds": compute_s,
        "overhead": (flow_s - compute_s) / flow_s,
        "process_seconds": round(wall, 1),
        "mlflow_store": "fresh" if args.fresh_store else "existing",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"flow {flow_s:.1f} s, compute {compute_s:.1f} s, overhead {100 * result['overhead']:.1f} % "
        f"(process {wall:.1f} s incl. imports and start-up); exit {proc.returncode}; wrote {args.out}"
    )
    return 0


_CREATE_STORE = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()"


def deployment_parameters(name: str) -> dict:
    """The `parameters` of deployment `name` in deployments/prefect.yaml."""
    import yaml

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        if deployment["name"] == name:
            return deployment.get("parameters", {})
    names = [d["name"] for d in spec["deployments"]]
    raise SystemExit(f"--deployment {name!r} is not in deployments/prefect.yaml. Fix: one of {names}.")
